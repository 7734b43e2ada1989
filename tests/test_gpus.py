"""GPUs without GPUs: injected counts, least-used assignment, gpus_to_use, CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from localbackend import BackendConfigurationError, LocalBackend, Status
from localbackend.core._gpus import GpuAllocator
from localbackend.launchers.local._gpus import detect_gpus
from tests.helpers import collect, script, until_status, wait_for_trial_file, wait_not_busy

GRACE = 0.5


@pytest.fixture(autouse=True)
def no_inherited_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def gpu_backend(experiment_dir: Path, **options: Any) -> LocalBackend:
    return LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE, **options
    )


def visible_devices(backend: LocalBackend, trial_id: int, run: int = 0) -> str | None:
    seen = json.loads(wait_for_trial_file(backend, trial_id, f"argv-{run}.json").read_text())
    value = seen["env"].get("CUDA_VISIBLE_DEVICES")
    return None if value is None else str(value)


def start_holding(backend: LocalBackend) -> int:
    return backend.start_trial({"hold": 1}).trial_id


def test_each_trial_gets_the_least_used_gpu(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, num_gpus=3) as backend:
        ids = [start_holding(backend) for _ in range(4)]
        assert [visible_devices(backend, t) for t in ids] == ["0", "1", "2", "0"]
        # GPU 0 now has two trials, 1 and 2 one each; free GPU 2.
        backend.stop_trial(2)
        wait_not_busy(backend, [2])
        # GPU 2 is the least used: it wins over the lower indices.
        assert visible_devices(backend, start_holding(backend)) == "2"
        # Now 0 has two trials and 1 and 2 one each: the tie goes to the lower index.
        assert visible_devices(backend, start_holding(backend)) == "1"
        backend.stop_all()


def test_a_finished_trial_gives_its_gpu_back(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, num_gpus=2) as backend:
        backend.start_trial({})  # exits at once
        collect(backend, [0], until_status(Status.completed))
        wait_not_busy(backend, [0])
        start_holding(backend)
        start_holding(backend)
        # Both GPUs are free again; as in Syne Tune, the one assigned less often wins.
        assert [visible_devices(backend, t) for t in (0, 1, 2)] == ["0", "1", "0"]
        backend.stop_all()


def test_a_paused_trial_gives_its_gpu_back_and_gets_one_on_resume(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, num_gpus=2) as backend:
        start_holding(backend)
        start_holding(backend)
        assert [visible_devices(backend, t) for t in (0, 1)] == ["0", "1"]
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        start_holding(backend)
        assert visible_devices(backend, 2) == "0"
        backend.stop_trial(1)
        wait_not_busy(backend, [1])
        backend.resume_trial(0)
        assert visible_devices(backend, 0, run=1) == "1"
        backend.stop_all()


def test_several_gpus_per_trial(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, num_gpus=4, num_gpus_per_trial=2) as backend:
        ids = [start_holding(backend) for _ in range(3)]
        assert [visible_devices(backend, t) for t in ids] == ["0,1", "2,3", "0,1"]
        backend.stop_all()


def test_gpus_to_use_restricts_the_gpus(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, num_gpus=4, gpus_to_use=[3, 1]) as backend:
        ids = [start_holding(backend) for _ in range(3)]
        seen = [visible_devices(backend, t) for t in ids]
        assert sorted(seen[:2]) == ["1", "3"]
        assert seen[2] in ("1", "3")
        assert "0" not in seen and "2" not in seen
        backend.stop_all()


def test_no_gpus_sets_no_cuda_variable(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, num_gpus=0) as backend:
        backend.start_trial({})
        collect(backend, [0], until_status(Status.completed))
        assert visible_devices(backend, 0) is None
        command = json.loads((backend.trial_dir(0) / "command.json").read_text())
        assert "CUDA_VISIBLE_DEVICES" not in command["env"]


def test_injected_count_overrides_detection(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with gpu_backend(experiment_dir, num_gpus=2) as backend:
        start_holding(backend)
        start_holding(backend)
        assert [visible_devices(backend, t) for t in (0, 1)] == ["0", "1"]
        backend.stop_all()


def test_detection_honours_cuda_visible_devices_from_env(experiment_dir: Path) -> None:
    with gpu_backend(experiment_dir, env={"CUDA_VISIBLE_DEVICES": "5,7"}) as backend:
        ids = [start_holding(backend) for _ in range(3)]
        assert [visible_devices(backend, t) for t in ids] == ["5", "7", "5"]
        backend.stop_all()


def test_gpu_assignment_writes_no_stray_files(experiment_dir: Path, tmp_path: Path) -> None:
    environ = dict(os.environ)
    with gpu_backend(experiment_dir, num_gpus=2) as backend:
        start_holding(backend)
        visible_devices(backend, 0)
        backend.stop_all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment"]
    assert dict(os.environ) == environ


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"num_gpus": 2, "gpus_to_use": [2]}, "[2]"),
        ({"num_gpus": 2, "gpus_to_use": [-1]}, "[-1]"),
        ({"num_gpus": 2, "gpus_to_use": [0, 0]}, "[0, 0]"),
        ({"num_gpus": 2, "gpus_to_use": []}, "[]"),
        ({"num_gpus": 2, "gpus_to_use": ["0"]}, "['0']"),
        ({"num_gpus": 0, "gpus_to_use": [0]}, "[0]"),
        ({"num_gpus": 2, "num_gpus_per_trial": 3}, "num_gpus_per_trial=3"),
        ({"num_gpus": 4, "gpus_to_use": [0, 1], "num_gpus_per_trial": 3}, "num_gpus_per_trial=3"),
        ({"num_gpus": 1.5}, "num_gpus=1.5"),
        ({"num_gpus": True}, "num_gpus=True"),
    ],
)
def test_impossible_gpu_settings_raise_naming_the_value(
    options: dict[str, Any], named: str, experiment_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(BackendConfigurationError) as caught:
        gpu_backend(experiment_dir, **options)
    assert named in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_gpus_to_use_with_detected_gpus_raises_and_leaves_no_trial(
    experiment_dir: Path,
) -> None:
    with gpu_backend(
        experiment_dir, env={"CUDA_VISIBLE_DEVICES": "0"}, gpus_to_use=[3]
    ) as backend:
        with pytest.raises(BackendConfigurationError, match=r"gpus_to_use=\[3\]"):
            backend.start_trial({})
        assert backend.new_trial_id() == 0
        assert not (experiment_dir / "0").exists()
        assert backend.busy_trial_ids() == []


# -- the allocator on its own ---------------------------------------------------


def test_allocator_prefers_least_used_then_lowest_index() -> None:
    allocator = GpuAllocator(["0", "1", "2"], None, 1)
    assert [allocator.allocate(t) for t in range(4)] == [["0"], ["1"], ["2"], ["0"]]
    allocator.release(1)
    assert allocator.allocate(4) == ["1"]
    assert allocator.in_use() == {"0": 2, "1": 1, "2": 1}


def test_detect_gpus_reads_cuda_visible_devices() -> None:
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_a_restored_backend_goes_on_rotating_where_the_old_one_stopped(
    experiment_dir: Path,
) -> None:
    # The journal says how often each GPU was handed out: a restore counts them
    # again, so the next trial gets the GPU used least, not GPU 0 once more.
    with gpu_backend(experiment_dir, num_gpus=2) as backend:
        for _ in range(3):
            trial_id = backend.start_trial({}).trial_id  # each exits at once
            collect(backend, [trial_id], until_status(Status.completed))
            wait_not_busy(backend, [trial_id])
        assert [visible_devices(backend, t) for t in (0, 1, 2)] == ["0", "1", "0"]
    with LocalBackend.restore(experiment_dir) as backend:
        trial_id = backend.start_trial({}).trial_id
        assert visible_devices(backend, trial_id) == "1"
        collect(backend, [trial_id], until_status(Status.completed))


def test_a_restore_on_a_host_without_the_gpus_it_used_still_restores(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The GPU counts are taken up only where the GPUs are there: the restored
    # backend still reads its trials, and only a new launch says what is wrong.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with gpu_backend(experiment_dir, gpus_to_use=[1]) as backend:
        backend.start_trial({})
        collect(backend, [0], until_status(Status.completed))
        assert visible_devices(backend, 0) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with LocalBackend.restore(experiment_dir) as backend:
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.completed
        with pytest.raises(BackendConfigurationError, match="gpus_to_use"):
            backend.start_trial({})

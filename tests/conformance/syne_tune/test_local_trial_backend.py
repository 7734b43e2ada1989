"""Syne Tune's own LocalBackend tests, run against ``SyneTuneBackend``.

Sources (Apache License 2.0), from https://github.com/syne-tune/syne-tune:

* ``test_local_backend_checkpoint``, ``test_resume_config_local_backend`` and
  ``test_start_config_previous_checkpoint``: tag v0.14.2,
  ``tst/trial_backend/test_local_trial_backend.py`` (removed later, in #990).
  The last two were skipped there ("takes >7s"); they run here.
* ``test_gpu_allocation`` and ``test_multi_gpu_allocation``: tag v0.15.0
  (unchanged since v0.14.2 and up to d9970f2b, the release of 0.16).

Adapted to the public API where they call private parts:

* ``temporary_local_backend`` builds a ``SyneTuneBackend`` in ``tmp_path``;
* ``wait_until_all_trials_completed`` polled ``backend._all_trial_results``;
  it waits for ``busy_trial_ids()`` to be empty, with a deadline, and does
  not consume results;
* ``_prepare_for_schedule(num_gpus)`` is the ``num_gpus`` argument;
  ``_allocate_gpu`` starts a trial that reports its ``CUDA_VISIBLE_DEVICES``
  and holds its GPUs until its gate file exists; ``_deallocate_gpu`` opens
  that gate and waits for the trial to end; ``trial_gpu`` is what the trial
  reported (mapped back to indices into ``gpus_to_use``) and
  ``gpu_times_assigned`` is counted from those reports.

The assertions are Syne Tune's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

pytest.importorskip("syne_tune")

from syne_tune.backend.trial_status import Status

from localbackend.integrations.syne_tune import SyneTuneBackend

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[SyneTuneBackend]]:
    made: list[SyneTuneBackend] = []
    yield made
    for backend in made:
        backend.close()


@pytest.fixture
def temporary_local_backend(tmp_path: Path, backends: list[SyneTuneBackend]) -> Any:
    def make(entry_point: str, **kwargs: Any) -> SyneTuneBackend:
        backend = SyneTuneBackend(entry_point=entry_point, grace_period=5.0, **kwargs)
        backend.set_path(results_root=str(tmp_path / f"backend-{len(backends)}"))
        backends.append(backend)
        return backend

    return make


def script_checkpoint_example_path() -> Path:
    return SCRIPTS / "checkpoint_example.py"


def wait_until_all_trials_completed(backend: SyneTuneBackend, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while backend.busy_trial_ids():
        if time.monotonic() > deadline:
            logs = {t: backend.stdout(t) + backend.stderr(t) for t in backend.trial_ids}
            raise AssertionError(f"backend trials did not finish after {timeout}s: {logs}")
        backend.local.wait(timeout=0.5)


def check_metrics(metrics_observed: Any, metrics_expected: Any) -> None:
    assert len(metrics_observed) == len(metrics_expected)
    for (trial_id1, result1), (trial_id2, result2) in zip(metrics_observed, metrics_expected):
        assert trial_id1 == trial_id2
        for key in ["epoch", "train_acc"]:
            assert result1[key] == result2[key]


def get_status_metrics(backend: SyneTuneBackend, trial_id: int) -> Any:
    trial_status_dict, new_metrics = backend.fetch_status_results([trial_id])
    trial_statuses = {trial_id: status for (trial_id, (_, status)) in trial_status_dict.items()}
    return trial_statuses, new_metrics


def test_local_backend_checkpoint(caplog: Any, temporary_local_backend: Any) -> None:
    caplog.set_level(logging.INFO)
    path_script = script_checkpoint_example_path()
    backend = temporary_local_backend(entry_point=str(path_script))
    trial_id = backend.start_trial(config={"num-epochs": 2}).trial_id
    wait_until_all_trials_completed(backend)

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert trial_statuses == {trial_id: Status.completed}
    check_metrics(
        new_metrics,
        [
            (trial_id, {"epoch": 1, "train_acc": 1}),
            (trial_id, {"epoch": 2, "train_acc": 2}),
        ],
    )
    busy_trial_ids = backend.busy_trial_ids()
    assert len(busy_trial_ids) == 0, busy_trial_ids

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    check_metrics(new_metrics, [])

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert new_metrics == []

    backend.pause_trial(trial_id=trial_id)
    backend.resume_trial(trial_id=trial_id)

    busy_trial_ids = backend.busy_trial_ids()
    assert len(busy_trial_ids) == 1 and busy_trial_ids[0] == (
        trial_id,
        Status.in_progress,
    ), busy_trial_ids

    wait_until_all_trials_completed(backend)
    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert trial_statuses == {trial_id: Status.completed}
    check_metrics(new_metrics, [])
    busy_trial_ids = backend.busy_trial_ids()
    assert len(busy_trial_ids) == 0, busy_trial_ids

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert new_metrics == []

    trial_id = backend.start_trial(config={"num-epochs": 200}).trial_id
    backend.stop_trial(trial_id=trial_id)

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert trial_statuses == {trial_id: Status.stopped}
    busy_trial_ids = backend.busy_trial_ids()
    # Syne Tune's backend kills the process with SIGKILL and forgets it at
    # once; ours allows the grace period, during which the trial is Stopping.
    wait_until_all_trials_completed(backend)
    busy_trial_ids = backend.busy_trial_ids()
    assert len(busy_trial_ids) == 0, busy_trial_ids

    trial_id = backend.start_trial(config={"num-epochs": 200}).trial_id
    backend.pause_trial(trial_id=trial_id)
    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert trial_statuses == {trial_id: Status.paused}
    wait_until_all_trials_completed(backend)  # as above: the grace period
    busy_trial_ids = backend.busy_trial_ids()
    assert len(busy_trial_ids) == 0, busy_trial_ids


def test_resume_config_local_backend(caplog: Any, temporary_local_backend: Any) -> None:
    caplog.set_level(logging.INFO)
    path_script = script_checkpoint_example_path()
    backend = temporary_local_backend(entry_point=str(path_script))
    trial_id = backend.start_trial(config={"num-epochs": 2}).trial_id

    wait_until_all_trials_completed(backend)

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert trial_statuses == {trial_id: Status.completed}
    check_metrics(
        new_metrics,
        [
            (trial_id, {"epoch": 1, "train_acc": 1}),
            (trial_id, {"epoch": 2, "train_acc": 2}),
        ],
    )

    backend.pause_trial(trial_id=trial_id)
    backend.resume_trial(trial_id, new_config={"num-epochs": 4})

    wait_until_all_trials_completed(backend)

    trial_statuses, new_metrics = get_status_metrics(backend, trial_id)
    assert trial_statuses == {trial_id: Status.completed}
    check_metrics(
        new_metrics,
        [
            (trial_id, {"epoch": 3, "train_acc": 3}),
            (trial_id, {"epoch": 4, "train_acc": 4}),
        ],
    )


def test_start_config_previous_checkpoint(caplog: Any, temporary_local_backend: Any) -> None:
    caplog.set_level(logging.INFO)
    path_script = SCRIPTS / "main_checkpoint.py"
    backend = temporary_local_backend(entry_point=str(path_script))

    # we start two trials, the checkpoint content should be resp. state-0, state-1 and then
    # reported.
    backend.start_trial(config={"name": "state-0"})
    backend.start_trial(config={"name": "state-1"})

    wait_until_all_trials_completed(backend)
    # we check whether a trial can be started from a previous checkpoint
    backend.start_trial(checkpoint_trial_id=0, config={"name": "state-2"})
    backend.start_trial(checkpoint_trial_id=1, config={"name": "state-3"})

    wait_until_all_trials_completed(backend)

    # the two trials that were started should have reported the content of their checkpoint,
    # e.g. state-0 and state-1.
    _, new_metrics = backend.fetch_status_results([0, 1, 2, 3])
    results = list(sorted(new_metrics, key=lambda x: x[0]))
    results = [res["checkpoint_content"] for _, res in results]
    assert results == ["nothing", "nothing", "state-0", "state-1"]


# -- GPU allocation, through the public API -------------------------------------


class GpuProbe:
    """Syne Tune's ``trial_gpu`` and ``gpu_times_assigned``, observed from the trials."""

    def __init__(self, backend: SyneTuneBackend, gpus_to_use: Optional[list[int]],
                 gates: Path) -> None:
        self.backend = backend
        self.gpus_to_use = gpus_to_use
        self.gates = gates
        self.trial_gpu: dict[int, list[int]] = {}
        self.visible: dict[int, str] = {}
        self.gpu_times_assigned: Counter[int] = Counter()

    def allocate(self, trial_id: int, env: dict[str, Any]) -> None:
        started = self.backend.start_trial({"gate": str(self.gates / f"gate-{trial_id}")})
        assert started.trial_id == trial_id
        deadline = time.monotonic() + 30
        while trial_id not in self.visible:
            assert time.monotonic() < deadline, self.backend.stderr(trial_id)
            _, results = self.backend.fetch_status_results([trial_id])
            for _, result in results:
                self.visible[trial_id] = result["cuda_visible_devices"]
            if trial_id not in self.visible:
                self.backend.local.wait(timeout=0.5)
        env["CUDA_VISIBLE_DEVICES"] = self.visible[trial_id]
        real = [int(gpu) for gpu in self.visible[trial_id].split(",")]
        gpus = real if self.gpus_to_use is None else [self.gpus_to_use.index(g) for g in real]
        self.trial_gpu[trial_id] = gpus
        self.gpu_times_assigned.update(gpus)

    def deallocate(self, trial_id: int) -> None:
        (self.gates / f"gate-{trial_id}").touch()
        deadline = time.monotonic() + 30
        while any(tid == trial_id for tid, _ in self.backend.busy_trial_ids()):
            assert time.monotonic() < deadline, self.backend.stderr(trial_id)
            self.backend.local.wait(timeout=0.5)

    def release_all(self) -> None:
        for trial_id in self.trial_gpu:
            (self.gates / f"gate-{trial_id}").touch()


def _map_gpu(gpu: int, gpus_to_use: Optional[list[int]]) -> int:
    return gpu if gpus_to_use is None else gpus_to_use[gpu]


def _assert_cuda_visible_devices(
    env: dict[str, Any],
    gpus_to_use: Optional[list[int]],
    visible_devices: list[int],
) -> None:
    cuda_visible_devices = ",".join(str(_map_gpu(gpu, gpus_to_use)) for gpu in visible_devices)
    assert "CUDA_VISIBLE_DEVICES" in env
    assert cuda_visible_devices == env["CUDA_VISIBLE_DEVICES"]


def gpu_backend(temporary_local_backend: Any, tmp_path: Path, num_gpus: int,
                gpus_to_use: Optional[list[int]], **kwargs: Any) -> GpuProbe:
    backend = temporary_local_backend(
        entry_point=str(SCRIPTS / "gpu_holder.py"), gpus_to_use=gpus_to_use,
        num_gpus=num_gpus, **kwargs,
    )
    gates = tmp_path / f"gates-{id(backend)}"
    gates.mkdir()
    return GpuProbe(backend, gpus_to_use, gates)


def test_gpu_allocation(caplog: Any, temporary_local_backend: Any, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO)

    for gpus_to_use, num_gpus in [
        (None, 4),
        ([5, 0, 7, 2], 8),
    ]:
        backend = gpu_backend(temporary_local_backend, tmp_path, num_gpus, gpus_to_use)
        try:
            env: dict[str, Any] = {}
            for trial_id in range(4):
                backend.allocate(trial_id=trial_id, env=env)
                _assert_cuda_visible_devices(env, gpus_to_use, [trial_id])
            for trial_id in range(4):
                gpu = trial_id
                assert backend.trial_gpu[trial_id] == [gpu]
                assert backend.gpu_times_assigned[gpu] == 1
            backend.deallocate(trial_id=2)
            backend.allocate(trial_id=4, env=env)
            # GPU 2 is the only free one, so must be used:
            assert backend.trial_gpu[4] == [2]
            _assert_cuda_visible_devices(env, gpus_to_use, backend.trial_gpu[4])
            assert backend.gpu_times_assigned[2] == 2
            backend.deallocate(trial_id=0)
            backend.deallocate(trial_id=2)
            backend.allocate(trial_id=5, env=env)
            # Both GPUs 0, 2 are free, but 0 has less prior assignments:
            assert backend.trial_gpu[5] == [0]
            _assert_cuda_visible_devices(env, gpus_to_use, backend.trial_gpu[5])
            assert backend.gpu_times_assigned[0] == 2
            backend.allocate(trial_id=6, env=env)
            # All GPUs are allocated. 1, 3 have less prior assignments:
            gpus = backend.trial_gpu[6]
            assert len(gpus) == 1
            gpu = gpus[0]
            assert gpu in {1, 3}
            _assert_cuda_visible_devices(env, gpus_to_use, [gpu])
            assert backend.gpu_times_assigned[gpu] == 2
        finally:
            backend.release_all()
            wait_until_all_trials_completed(backend.backend)


def test_multi_gpu_allocation(caplog: Any, temporary_local_backend: Any, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO)

    for gpus_to_use, num_gpus in [
        (None, 8),
        ([10, 0, 15, 12, 1, 2, 13, 9], 16),
    ]:
        backend = gpu_backend(temporary_local_backend, tmp_path, num_gpus, gpus_to_use,
                              num_gpus_per_trial=2)
        try:
            env: dict[str, Any] = {}
            for trial_id in range(4):
                backend.allocate(trial_id=trial_id, env=env)
                _assert_cuda_visible_devices(env, gpus_to_use, [2 * trial_id, 2 * trial_id + 1])
            for trial_id in range(4):
                gpus = [2 * trial_id, 2 * trial_id + 1]
                assert backend.trial_gpu[trial_id] == gpus
                assert all(backend.gpu_times_assigned[gpu] == 1 for gpu in gpus)
            backend.deallocate(trial_id=2)
            backend.allocate(trial_id=4, env=env)
            # GPU 2 only free one, must have been used
            assert backend.trial_gpu[4] == [4, 5]
            _assert_cuda_visible_devices(env, gpus_to_use, backend.trial_gpu[4])
            assert backend.gpu_times_assigned[4] == 2
            assert backend.gpu_times_assigned[5] == 2
            backend.deallocate(trial_id=0)
            backend.deallocate(trial_id=2)
            backend.allocate(trial_id=5, env=env)
            # Both GPUs 0, 2 are free, but 0 has less prior assignments:
            assert backend.trial_gpu[5] == [0, 1]
            _assert_cuda_visible_devices(env, gpus_to_use, backend.trial_gpu[5])
            assert backend.gpu_times_assigned[0] == 2
            assert backend.gpu_times_assigned[1] == 2
            backend.allocate(trial_id=6, env=env)
            # All GPUs are allocated. 1, 3 have less prior assignments:
            gpus = backend.trial_gpu[6]
            assert gpus == [2, 3] or gpus == [6, 7]
            _assert_cuda_visible_devices(env, gpus_to_use, gpus)
            assert all(backend.gpu_times_assigned[gpu] == 2 for gpu in gpus)
        finally:
            backend.release_all()
            wait_until_all_trials_completed(backend.backend)


def test_rotate_gpus_false_shows_every_trial_every_gpu(
    temporary_local_backend: Any, tmp_path: Path
) -> None:
    """Not one of Syne Tune's tests: its documented ``rotate_gpus=False``."""
    probe = gpu_backend(temporary_local_backend, tmp_path, 4, None, rotate_gpus=False)
    try:
        started = probe.backend.start_trial({"gate": str(probe.gates / "gate-0")})
        (probe.gates / "gate-0").touch()
        wait_until_all_trials_completed(probe.backend)
        _, results = probe.backend.fetch_status_results([started.trial_id])
        assert [r["cuda_visible_devices"] for _, r in results] == [""]
    finally:
        probe.release_all()

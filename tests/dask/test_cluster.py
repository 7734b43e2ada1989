"""DaskLauncher on a cluster of real processes: a scheduler and two one-thread workers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localbackend import BackendConfigurationError, LocalBackend, TrialLaunchError
from localbackend.launchers.dask import DaskLauncher
from tests.crash_helpers import alive, wait_gone
from tests.dask.conftest import Cluster
from tests.helpers import collect, format_logs, script, until_status, wait_for, wait_not_busy

pytestmark = pytest.mark.dask
pytest.importorskip("distributed")

HERE = Path(__file__).resolve().parent
LEASE = 2.0
DEADLINE = 60.0


def backend_on(cluster: Cluster, experiment: Path, entry: str, **options: Any) -> LocalBackend:
    return LocalBackend(
        script(entry), experiment_dir=experiment, grace_period=options.pop("grace", 1.0),
        detach=options.pop("detach", False),
        launcher=DaskLauncher(cluster.address, lease_timeout=LEASE, **options),
    )


def run_record(backend: LocalBackend, trial_id: int, run: int) -> dict[str, Any]:
    """The keeper's run.json of ``run``, once it is there."""
    path = backend.trial_dir(trial_id) / "run.json"

    def written() -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if record.get("run") == run else None

    found: dict[str, Any] = wait_for(written, timeout=DEADLINE, what=f"{path} of run {run}",
                                     on_fail=lambda: format_logs(backend))
    return found


def epochs(results: list[tuple[int, dict[str, Any]]], trial_id: int) -> list[int]:
    return [r["epoch"] for t, r in results if t == trial_id]


def blocked(trial_ids: list[int]) -> Any:
    return lambda _s, results: all(2 in epochs(results, t) for t in trial_ids)


def test_pauses_and_resumes_carry_on_from_the_checkpoint_on_the_other_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        config = {"epochs": 6, "block_at": 2}
        first, second = (backend.start_trial(config).trial_id for _ in range(2))
        _, results = collect(backend, [first, second], blocked([first, second]),
                             timeout=DEADLINE)
        where = {t: cluster.worker_running(run_record(backend, t, 0)["keeper"])
                 for t in (first, second)}
        assert set(where.values()) == {"a", "b"}, cluster.logs()

        backend.pause_trial(first)
        wait_not_busy(backend, [first])
        # A blocker takes the worker the first trial left, so that the
        # first trial's resume can only land on the other one.
        blocker = backend.start_trial({"epochs": 1000, "block_at": 0}).trial_id
        wait_for(lambda: (backend.trial_dir(blocker) / "blocked").exists(), timeout=DEADLINE,
                 what="the blocker to run", on_fail=lambda: format_logs(backend))
        backend.pause_trial(second)
        wait_not_busy(backend, [second])
        backend.resume_trial(first)
        moved = cluster.worker_running(run_record(backend, first, 1)["keeper"])
        assert moved == where[second] != where[first]
        _, more = collect(backend, [first], until_status("Completed"), timeout=DEADLINE)
        results += more
        backend.resume_trial(second)
        _, more = collect(backend, [second], until_status("Completed"), timeout=DEADLINE)
        results += more
        backend.stop_trial(blocker)
        wait_not_busy(backend, [blocker])
        _, more = backend.fetch_status_results([first, second, blocker])
        results += more

        # Each result exactly once, in order, across the move.
        for trial_id in (first, second):
            assert epochs(results, trial_id) == [0, 1, 2, 3, 4, 5], format_logs(backend)
            assert "starting at epoch 3" in "".join(backend.stdout(trial_id))
        assert [r["st_worker_iter"] for t, r in results if t == first] == list(range(6))


def test_stop_ends_the_whole_tree_on_the_worker(cluster: Cluster, tmp_path: Path) -> None:
    with backend_on(cluster, tmp_path / "exp", "spawn_tree.py", grace=0.5) as backend:
        trial_id = backend.start_trial({"after": "stay", "descendants_ignore_term": "1"}).trial_id
        pids_file = backend.trial_dir(trial_id) / "pids.json"
        wait_for(pids_file.exists, timeout=DEADLINE, what="pids.json",
                 on_fail=lambda: format_logs(backend))
        recorded = json.loads(pids_file.read_text())
        pids = [int(recorded[name])
                for name in ("leader", "setsid_child", "group_child", "grandchild")]
        started = time.monotonic()
        backend.stop_trial(trial_id)
        assert backend.fetch_status_results([trial_id])[0][trial_id][1] == "Stopped"
        assert time.monotonic() - started < 1.0, "stop_trial waited for the tree"
        wait_not_busy(backend, [trial_id])
        assert alive(pids) == [], "the stopped trial's busy state ended before its tree"


def test_a_run_stopped_while_it_waits_for_a_worker_never_starts(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Both one-thread workers are busy, so the third trial's task waits in
    # Dask. Stopped there, it must not start once a worker frees up.
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        blockers = [backend.start_trial({"epochs": 1000, "block_at": 0}).trial_id
                    for _ in range(2)]
        for blocker in blockers:
            wait_for((backend.trial_dir(blocker) / "blocked").exists, timeout=DEADLINE,
                     what=f"trial {blocker} to block", on_fail=lambda: format_logs(backend))
        waiting = backend.start_trial({"epochs": 2}).trial_id
        backend.stop_trial(waiting)
        for blocker in blockers:
            backend.stop_trial(blocker)
        wait_not_busy(backend, [*blockers, waiting])
        statuses, _ = backend.fetch_status_results([waiting])
        assert statuses[waiting][1] == "Stopped"
        folder = backend.trial_dir(waiting)
        assert not (folder / "run.json").exists(), format_logs(backend)
        assert "".join(backend.stdout(waiting)) == "", format_logs(backend)


def kill_a_driver(cluster: Cluster, tmp_path: Path, *options: str) -> tuple[Path, list[int]]:
    """Run tests/dask/driver.py until both its trials have reported, then SIGKILL it.

    Returns the experiment folder and the PIDs of the trials and their keepers.
    """
    experiment = tmp_path / "exp"
    ready = tmp_path / "ready"
    driver = subprocess.Popen(
        [sys.executable, str(HERE / "driver.py"), "--scheduler", cluster.address,
         "--experiment-dir", str(experiment), "--entry", str(script("checkpointing.py")),
         "--ready", str(ready), "--lease-timeout", str(LEASE), *options],
        stderr=subprocess.PIPE, cwd=tmp_path,
    )
    try:
        wait_for(lambda: ready.exists() or driver.poll() is not None, timeout=DEADLINE,
                 what="the driver to get ready")
        assert ready.exists(), driver.communicate()[1].decode(errors="replace")
        runs = [json.loads((experiment / str(t) / "run.json").read_text()) for t in (0, 1)]
        return experiment, [pid for run in runs for pid in (run["pid"], run["keeper"])]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()


def test_a_sigkilled_driver_ends_its_trials_and_restore_resumes_them(
    cluster: Cluster, tmp_path: Path
) -> None:
    experiment, pids = kill_a_driver(cluster, tmp_path)
    # Within the lease and the keepers' fast end, with a margin for a busy machine.
    wait_gone(pids, timeout=LEASE + 15.0)
    assert alive(pids) == [], "the dead driver's trials outlived its lease"

    with LocalBackend.restore(experiment, launcher=DaskLauncher(cluster.address)) as restored:
        statuses, owed = restored.fetch_status_results([0, 1])
        assert [statuses[t][1] for t in (0, 1)] == ["Paused", "Paused"], format_logs(restored)
        restored.resume_trial(0, {"epochs": 5, "block_at": -1})
        _, results = collect(restored, [0], until_status("Completed"), timeout=DEADLINE)
        assert epochs(owed + results, 0)[-2:] == [3, 4], format_logs(restored)
        assert len(epochs(owed + results, 0)) == len(set(epochs(owed + results, 0)))
        assert "starting at epoch 3" in "".join(restored.stdout(0))


def test_an_unreachable_scheduler_is_a_clear_error_at_construction() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(BackendConfigurationError) as raised:
        DaskLauncher(address, connect_timeout=1.0)
    assert address in str(raised.value) and "cannot be reached" in str(raised.value)


def test_a_port_that_accepts_and_never_answers_is_a_clear_error_not_a_hang() -> None:
    # A wedged scheduler, or another service: the handshake after the connection
    # would wait for good without a deadline of its own.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(BackendConfigurationError) as raised:
            DaskLauncher(address, connect_timeout=1.0)
    assert address in str(raised.value) and "cannot be reached" in str(raised.value)


def test_a_folder_the_workers_do_not_see_fails_the_first_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    """/proc/self/cwd is the driver's folder here and the worker's own folder there."""
    unshared = Path("/proc/self/cwd") / "exp"
    launcher = DaskLauncher(cluster.address)
    with LocalBackend(script("checkpointing.py"), experiment_dir=unshared,
                      launcher=launcher) as backend:
        with pytest.raises(TrialLaunchError) as raised:
            backend.start_trial({"epochs": 1})
        message = str(raised.value)
        assert str(unshared) in message and "is not shared with Dask worker tcp://" in message
        assert backend.new_trial_id() == 0


def test_detached_trials_outlive_their_driver_and_restore_reattaches(
    cluster: Cluster, tmp_path: Path
) -> None:
    from distributed import Client

    experiment, pids = kill_a_driver(cluster, tmp_path, "--detach")
    journal = [json.loads(line) for line in (experiment / "journal.jsonl").read_text()
               .splitlines() if line.strip()]
    token = next(entry["token"] for entry in journal if entry.get("op") == "supervisor")

    def sessions_ending() -> list[bool]:
        """On a worker (sent by value): whether the dead driver's session saw its lease go."""
        from localbackend.launchers.dask import _lease, _session

        session = _session.existing(token)
        return [] if session is None else [session.lease.verdict() != _lease.FRESH]

    with Client(cluster.address, set_as_default=False) as client:
        wait_for(
            lambda: all(all(v) for v in client.run(sessions_ending).values()),
            timeout=DEADLINE, what="the workers to see the dead driver's lease go stale",
        )
    assert sorted(alive(pids)) == sorted(pids), "a detached trial ended with its driver"

    with LocalBackend.restore(experiment, launcher=DaskLauncher(cluster.address)) as restored:
        statuses, _ = restored.fetch_status_results([0, 1])
        assert [statuses[t][1] for t in (0, 1)] == ["InProgress", "InProgress"]
        restored.stop_trial(0)
        restored.pause_trial(1)
        wait_not_busy(restored, [0, 1])
        statuses, _ = restored.fetch_status_results([0, 1])
        assert [statuses[t][1] for t in (0, 1)] == ["Stopped", "Paused"]
        assert alive(pids) == []


def test_an_experiment_run_on_the_cluster_restores_on_this_machine(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A restore with the local launcher waits for the dead driver's lease, then resumes here."""
    experiment, pids = kill_a_driver(cluster, tmp_path)
    with LocalBackend.restore(experiment) as restored:
        assert alive(pids) == [], "restore went on before the dead driver's trials ended"
        statuses, _ = restored.fetch_status_results([0, 1])
        assert [statuses[t][1] for t in (0, 1)] == ["Paused", "Paused"], format_logs(restored)
        restored.resume_trial(1, {"epochs": 4, "block_at": -1})
        collect(restored, [1], until_status("Completed"), timeout=DEADLINE)
        assert "starting at epoch 3" in "".join(restored.stdout(1))


def test_an_experiment_run_on_this_machine_restores_on_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    from tests.crash_helpers import kill_driver, start_driver, trial_pids

    driver = start_driver(tmp_path, steps=400, step_seconds=0.05)
    kill_driver(driver)
    with LocalBackend.restore(driver.experiment_dir,
                              launcher=DaskLauncher(cluster.address)) as restored:
        assert alive(trial_pids(driver.experiment_dir)) == []
        statuses, _ = restored.fetch_status_results([0, 1])
        assert [statuses[t][1] for t in (0, 1)] == ["Paused", "Paused"], format_logs(restored)
        restored.resume_trial(0, {"steps": 3, "step_seconds": 0.0})
        collect(restored, [0], until_status("Completed"), timeout=DEADLINE)
        assert restored.fetch_status_results([0])[0][0][1] == "Completed"
    snapshot = json.loads((driver.experiment_dir / "experiment.json").read_text())
    resumed = snapshot["trials"]["0"]["runs"][-1]
    assert resumed.get("host") in cluster.worker_addresses().values(), resumed

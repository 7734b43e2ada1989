"""Restore after the driver dies: nothing lost, nothing delivered twice."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localbackend import ExperimentError, LocalBackend, Status
from tests.crash_helpers import (
    STEPS,
    alive,
    kill_driver,
    kill_pids,
    start_driver,
    trial_pids,
    wait_gone,
    written_results,
)
from tests.helpers import drain, format_logs


def _key(result: dict) -> tuple:
    return (result["trial_id"], result["pid"], result["step"])


def test_restore_after_sigkill_delivers_each_result_exactly_once(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, steps=60, step_seconds=0.02, deliver_at_least=6)
    kill_driver(driver)
    wait_gone(trial_pids(driver.experiment_dir), timeout=5)
    old = driver.delivered()
    assert old, "the first driver delivered nothing"

    with LocalBackend.restore(driver.experiment_dir) as backend:
        statuses, new = backend.fetch_status_results([0, 1])
        assert {status for _, status in statuses.values()} <= {Status.paused, Status.completed}
        restored = [{"trial_id": t, **r} for t, r in new]
        seen = [_key(r) for r in old + restored]
        assert len(seen) == len(set(seen)), "a result was delivered twice"
        for trial_id in (0, 1):
            written = {(trial_id, r["pid"], r["step"]) for r in written_results(
                driver.experiment_dir, trial_id)}
            assert written == {k for k in seen if k[0] == trial_id}, format_logs(backend)
        # A second fetch delivers nothing old again.
        assert backend.fetch_status_results([0, 1])[1] == []

        # Paused trials resume from their checkpoint and finish.
        for trial_id, (_, status) in statuses.items():
            if status == Status.paused:
                backend.resume_trial(trial_id)
        statuses, after = drain(backend, [0, 1])
        assert all(status == Status.completed for _, status in statuses.values()), format_logs(
            backend)
        for trial_id in (0, 1):
            steps = [r["step"] for t, r in after if t == trial_id]
            before = [r["step"] for r in old + restored if r["trial_id"] == trial_id]
            if steps:
                assert steps[0] > 1, "the resumed trial started from scratch"
                assert steps == list(range(steps[0], 61))
            assert max(before + steps) == 60


def test_pickled_backend_restores_in_a_new_process(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, steps=200, step_seconds=0.02, deliver_at_least=4)
    kill_driver(driver)
    wait_gone(trial_pids(driver.experiment_dir), timeout=5)
    backend = pickle.loads(driver.pickle_path.read_bytes())
    try:
        statuses, _ = backend.fetch_status_results([0, 1])
        assert [s for _, s in statuses.values()] == [Status.paused, Status.paused]
        assert backend.experiment_dir == driver.experiment_dir
    finally:
        backend.close()


def test_driver_exception_and_exit_leave_no_trial_process(tmp_path: Path) -> None:
    for how in ("raise", "exit"):
        folder = tmp_path / how
        folder.mkdir()
        driver = start_driver(folder, "--then", how, "--spawn-descendants", steps=500,
                              step_seconds=0.05, deliver_at_least=2)
        driver.process.wait(timeout=30)
        if driver.process.stderr is not None:
            driver.process.stderr.close()
        pids = trial_pids(driver.experiment_dir)
        try:
            wait_gone(pids, timeout=5)
        finally:
            kill_pids(pids)


def test_second_driver_gets_a_clear_error(tmp_path: Path) -> None:
    # A restore in this same process takes the experiment over
    # (tests/test_hardening_backend.py); one from another process is refused.
    script = STEPS
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=0.5) as backend:
        backend.start_trial({"steps": 1000, "step_seconds": 0.05})
        other = subprocess.run(
            [sys.executable, "-c", textwrap.dedent("""
                import sys
                from localbackend import ExperimentLockedError, LocalBackend
                try:
                    LocalBackend.restore(sys.argv[1])
                except ExperimentLockedError as err:
                    print(err.pid, err.host)
                    print(err)
                    sys.exit(3)
            """), str(tmp_path / "exp")],
            capture_output=True, text=True, timeout=60,
        )
        assert other.returncode == 3, other.stderr
        pid, host = other.stdout.splitlines()[0].split()
        assert pid == str(os.getpid())
        assert pid in other.stdout.splitlines()[1] and host in other.stdout.splitlines()[1]
        with pytest.raises(ExperimentError):
            LocalBackend(script, experiment_dir=tmp_path / "exp").start_trial({"steps": 1})
        assert backend.busy_trial_ids() == [(0, "InProgress")]


def test_lock_of_a_killed_driver_is_taken_over(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, steps=500, step_seconds=0.05, deliver_at_least=2)
    holder = (driver.experiment_dir / "driver.json").read_text()
    assert str(driver.process.pid) in holder
    kill_driver(driver)
    wait_gone(trial_pids(driver.experiment_dir), timeout=5)
    with LocalBackend.restore(driver.experiment_dir) as backend:
        assert len(backend.fetch_status_results([0, 1])[0]) == 2


def test_restore_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="not a localbackend experiment"):
        LocalBackend.restore(tmp_path)
    with pytest.raises(ExperimentError, match="does not exist"):
        LocalBackend.restore(tmp_path / "missing")
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "experiment.json").write_text('{"format_version": 99, "trials": {}}')
    with pytest.raises(ExperimentError, match="format version 99"):
        LocalBackend.restore(newer)


def test_detached_trials_survive_the_driver_and_are_reattached(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, "--detach", steps=100, step_seconds=0.03,
                          deliver_at_least=3)
    kill_driver(driver)
    pids_before = trial_pids(driver.experiment_dir)
    try:
        assert alive(pids_before), "detached trials died with the driver"
        with LocalBackend.restore(driver.experiment_dir) as backend:
            statuses, results = backend.fetch_status_results([0, 1])
            assert [s for _, s in statuses.values()] == [Status.in_progress] * 2
            old = driver.delivered()
            keys = [_key(r) for r in old] + [
                (t, r["pid"], r["step"]) for t, r in results]
            assert len(keys) == len(set(keys))
            # Results keep streaming from the re-attached trial.
            backend.wait(timeout=10)
            more = backend.fetch_status_results([0, 1])[1]
            assert more, format_logs(backend)
            backend.pause_trial(0)
            assert backend.fetch_status_results([0])[0][0][1] == Status.paused
            drain(backend, [0], timeout=30)
            assert 0 not in {t for t, _ in backend.busy_trial_ids()}
            backend.stop_trial(1)
            drain(backend, [1], timeout=30)
        wait_gone(pids_before, timeout=5)
    finally:
        kill_pids(pids_before)


def test_sigint_to_driver_ends_every_trial(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, "--spawn-descendants", steps=500, step_seconds=0.05,
                          deliver_at_least=2)
    pids = trial_pids(driver.experiment_dir)
    kill_driver(driver, signal.SIGINT)
    try:
        wait_gone(pids, timeout=5)
    finally:
        kill_pids(pids)

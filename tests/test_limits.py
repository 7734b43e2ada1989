"""Limits the keeper enforces on every run: time, memory, cores and silence.

Each test runs real trial processes (``tests/scripts/limits_trial.py``) and
checks the trial's status, its failure reason, and the processes left.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from localbackend import LocalBackend, Status, TrialLaunchError
from tests.helpers import (
    collect,
    format_logs,
    script,
    status_history,
    until_status,
    wait_for,
    wait_for_trial_file,
)

TRIAL = script("limits_trial.py")


def _backend(experiment_dir: Path, **options: Any) -> LocalBackend:
    options.setdefault("grace_period", 1.0)
    return LocalBackend(TRIAL, experiment_dir=experiment_dir, binary=[sys.executable], **options)


def _trial(backend: LocalBackend, trial_id: int) -> Any:
    statuses, _ = backend.fetch_status_results([trial_id])
    return statuses[trial_id]


def test_a_trial_that_sleeps_past_its_time_limit_fails_with_the_reason(
    experiment_dir: Path,
) -> None:
    with _backend(experiment_dir, time_limit=1.0) as backend:
        backend.start_trial({"mode": "sleep", "seconds": 60})
        statuses, results = collect(backend, [0], until_status(Status.failed), timeout=30)
        trial, _ = statuses[0]
        assert trial.failure_reason == "time limit (1 s)", format_logs(backend)
        assert trial.failure_kind == "time_limit"
        assert [r["step"] for _, r in results] == [0]
        history = status_history(backend, 0)
        assert history[-1]["failure"] == "time limit (1 s)"


def test_paused_time_does_not_count_against_the_time_limit(experiment_dir: Path) -> None:
    # 3 s of limit: a first run of about 1 s, a pause longer than the rest of
    # the limit, then a resumed run that is ended once the sum reaches 3 s.
    with _backend(experiment_dir, time_limit=3.0) as backend:
        backend.start_trial({"mode": "steps", "seconds": 0.2, "steps": 1000})
        collect(backend, [0], lambda _s, results: len(results) >= 5, timeout=30)
        backend.pause_trial(0)
        collect(backend, [0], until_status(Status.paused), timeout=30)
        wait_for(lambda: (backend.trial_dir(0) / "exit.json").exists(), what="the paused run's end")
        used = json.loads((backend.trial_dir(0) / "exit.json").read_text())["running_time"]
        assert 0.5 < used < 3.0
        # Paused for longer than what is left of the limit: it must not count.
        paused_at = time.monotonic()
        while time.monotonic() - paused_at < 3.0 - used + 0.5:
            backend.wait(timeout=0.5)  # a pause is time passing, by design of the test
        backend.resume_trial(0)
        statuses, _results = collect(backend, [0], until_status(Status.failed), timeout=30)
        trial, _ = statuses[0]
        assert trial.failure_reason == "time limit (3 s)", format_logs(backend)
        second = json.loads((backend.trial_dir(0) / "exit.json").read_text())
        assert second["run"] == 1
        assert used + second["running_time"] == pytest.approx(3.0, abs=0.6)


def test_a_grandchild_in_its_own_session_that_allocates_past_the_memory_limit_is_caught(
    experiment_dir: Path,
) -> None:
    with _backend(experiment_dir, memory_limit="96MiB") as backend:
        backend.start_trial({"mode": "grandchild_alloc", "megabytes": 400})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=60)
        trial, _ = statuses[0]
        assert trial.failure_kind == "memory_limit", format_logs(backend)
        assert trial.failure_reason.startswith("memory limit (96 MiB, peak ")
        assert not (backend.trial_dir(0) / "allocated").exists()
        command = json.loads((backend.trial_dir(0) / "command.json").read_text())
        assert command["memory_limit"]["bytes"] == 96 << 20
        assert command["memory_limit"]["mechanism"] in ("cgroup", "rss-sampling")


def test_a_tree_over_its_memory_limit_is_killed_without_a_sigterm_first(
    experiment_dir: Path,
) -> None:
    # "Killed at once, with no grace period": a SIGTERM handler (one that
    # saves a checkpoint, say) would run while the tree is over its limit.
    with _backend(experiment_dir, memory_limit="96MiB", grace_period=5.0) as backend:
        backend.start_trial({"mode": "alloc_on_term", "megabytes": 400})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=60)
        trial, _ = statuses[0]
        assert trial.failure_kind == "memory_limit", format_logs(backend)
        assert trial.exit_signal == "SIGKILL"
        assert not (backend.trial_dir(0) / "term-handler-ran").exists()


@pytest.mark.skipif(len(psutil.Process().cpu_affinity() or []) < 2, reason="needs 2 cores")
def test_two_trials_are_pinned_to_disjoint_cores(experiment_dir: Path) -> None:
    with _backend(experiment_dir, cpus_per_trial=1) as backend:
        backend.start_trial({"mode": "affinity"})
        backend.start_trial({"mode": "affinity"})
        _, results = collect(backend, [0, 1], lambda _s, r: len(r) >= 2, timeout=30)
        seen = {trial_id: result for trial_id, result in results}
        assert seen[0]["omp"] == seen[1]["omp"] == "1"
        assert len(seen[0]["cores"]) == len(seen[1]["cores"]) == 1
        assert set(seen[0]["cores"]).isdisjoint(seen[1]["cores"])
        # Read back from the kernel, as the issue asks.
        for trial_id in (0, 1):
            pid = json.loads((backend.trial_dir(trial_id) / "run.json").read_text())["pid"]
            status = Path(f"/proc/{pid}/status").read_text()
            allowed = next(line for line in status.splitlines()
                           if line.startswith("Cpus_allowed_list:"))
            assert allowed.split()[1] == str(seen[trial_id]["cores"][0])
        backend.stop_all()


def _cores_of(backend: LocalBackend, trial_id: int) -> str:
    pid = json.loads((backend.trial_dir(trial_id) / "run.json").read_text())["pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list:"))


@pytest.mark.skipif(len(psutil.Process().cpu_affinity() or []) < 2, reason="needs 2 cores")
def test_a_failed_resume_leaves_the_cores_of_the_run_still_ending_taken(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trial 0 ignores SIGTERM: after its pause its run holds its core for the
    # grace period. A resume whose launch fails must not give that core away.
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, binary=[sys.executable],
        cpus_per_trial=1, grace_period=5.0,
    ) as backend:
        backend.start_trial({})
        wait_for_trial_file(backend, 0, "ready-0")
        first = _cores_of(backend, 0)
        backend.pause_trial(0)

        def no_more_processes(spec: Any) -> None:
            raise OSError(24, "Too many open files")

        with monkeypatch.context() as patch:
            patch.setattr(backend._launcher, "start", no_more_processes)
            with pytest.raises(TrialLaunchError):
                backend.resume_trial(0)
        assert backend.busy_trial_ids() == [(0, Status.stopping)]
        backend.start_trial({})
        wait_for_trial_file(backend, 1, "ready-0")
        assert _cores_of(backend, 1) != first, format_logs(backend)
        backend.stop_all()


def test_threads_per_trial_sets_the_thread_variables_over_the_drivers_environment(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the driver's environment
    with _backend(experiment_dir, threads_per_trial=2, env={"MKL_NUM_THREADS": "5"}) as backend:
        backend.start_trial({"mode": "threads"})
        _, results = collect(backend, [0], lambda _s, r: len(r) >= 1, timeout=30)
        seen = results[0][1]
        # The backend's own env has the last word; the driver's environment does not.
        assert seen["OMP_NUM_THREADS"] == seen["OPENBLAS_NUM_THREADS"] == "2", seen
        assert seen["NUMEXPR_NUM_THREADS"] == "2"
        assert seen["MKL_NUM_THREADS"] == "5"
        backend.stop_all()
    restored = LocalBackend.restore(experiment_dir)
    with restored:
        restored.start_trial({"mode": "threads"})
        _, results = collect(restored, [1], lambda _s, r: len(r) >= 1, timeout=30)
        assert results[0][1]["OMP_NUM_THREADS"] == "2", format_logs(restored)
        restored.stop_all()


def test_threads_per_trial_counts_for_pinned_trials_too(experiment_dir: Path) -> None:
    with _backend(experiment_dir, cpus_per_trial=1, threads_per_trial=3) as backend:
        backend.start_trial({"mode": "affinity"})
        _, results = collect(backend, [0], lambda _s, r: len(r) >= 1, timeout=30)
        assert results[0][1]["omp"] == "3", format_logs(backend)
        assert len(results[0][1]["cores"]) == 1
        backend.stop_all()


def test_a_hung_trial_leaves_its_stacks_in_stderr_and_fails(experiment_dir: Path) -> None:
    with _backend(experiment_dir, heartbeat_timeout=1.5) as backend:
        backend.start_trial({"mode": "hang"})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=30)
        trial, _ = statuses[0]
        assert trial.failure_reason == "no output for 1.5 s", format_logs(backend)
        assert trial.failure_kind == "hang"
        stderr = "".join(backend.stderr(0))
        assert "stuck_in_here" in stderr, stderr
        assert "Thread" in stderr or "Current thread" in stderr


def test_a_trial_that_keeps_writing_is_not_hung(experiment_dir: Path) -> None:
    with _backend(experiment_dir, heartbeat_timeout=1.0) as backend:
        backend.start_trial({"mode": "steps", "seconds": 0.3, "steps": 8})
        _statuses, results = collect(backend, [0], until_status(Status.completed), timeout=30)
        assert [r["step"] for _, r in results] == list(range(8)), format_logs(backend)


@pytest.mark.parametrize(
    "option, value",
    [
        ("time_limit", -1), ("time_limit", 0), ("time_limit", "10"), ("time_limit", True),
        ("memory_limit", 0), ("memory_limit", -5), ("memory_limit", "lots"),
        ("memory_limit", 1.5), ("cpus_per_trial", 0), ("cpus_per_trial", 10_000),
        ("cpus_per_trial", "2"), ("heartbeat_timeout", 0), ("heartbeat_timeout", float("inf")),
        ("max_failures", -1), ("max_failures", 1.0), ("keep_checkpoints", 0),
        ("keep_best", 0), ("checkpoint_budget", -1), ("mode", "best"),
        # More than the journal's JSON (and the kernel) can hold: refused, not
        # accepted and then failing every start.
        ("memory_limit", 2**64), ("memory_limit", "1" + "0" * 30), ("max_failures", 10**30),
        ("keep_checkpoints", 2**63), ("keep_best", 2**64), ("checkpoint_budget", 10**30),
        ("threads_per_trial", 2**64), ("num_gpus", 10**30), ("num_gpus_per_trial", 10**30),
        # Longer than a timer can be set for: refused, not a keeper that dies.
        ("time_limit", 1e300), ("heartbeat_timeout", 1e300), ("grace_period", 1e300),
    ],
)
def test_bad_values_raise_our_error_naming_the_value(
    experiment_dir: Path, option: str, value: object
) -> None:
    from localbackend import BackendConfigurationError

    extra: dict[str, Any] = {"metric": "loss"} if option in ("keep_best", "mode") else {}
    with pytest.raises(BackendConfigurationError) as caught:
        _backend(experiment_dir, **{option: value}, **extra)
    assert caught.value.name == option
    assert repr(value) in str(caught.value)


def test_keep_best_without_a_metric_is_refused(experiment_dir: Path) -> None:
    from localbackend import BackendConfigurationError

    with pytest.raises(BackendConfigurationError, match="metric"):
        _backend(experiment_dir, keep_best=2)


def test_a_per_trial_limit_overrides_the_backends(experiment_dir: Path) -> None:
    from localbackend import BackendConfigurationError

    with _backend(experiment_dir, time_limit=60.0) as backend:
        with pytest.raises(BackendConfigurationError):
            backend.start_trial({"mode": "sleep"}, limits={"time_limit": -1})
        with pytest.raises(BackendConfigurationError):
            backend.start_trial({"mode": "sleep"}, limits={"cpus": 3})
        assert backend.new_trial_id() == 0
        backend.start_trial({"mode": "sleep", "seconds": 60}, limits={"time_limit": 0.5})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=30)
        assert statuses[0][0].failure_reason == "time limit (0.5 s)"


def test_restore_keeps_the_failure_reason_and_the_running_time_used(
    experiment_dir: Path,
) -> None:
    with _backend(experiment_dir, time_limit=2.0) as backend:
        backend.start_trial({"mode": "crash"})
        backend.start_trial({"mode": "steps", "seconds": 0.2, "steps": 1000})
        collect(backend, [1], lambda _s, results: len(results) >= 3, timeout=30)
        backend.pause_trial(1)
        collect(backend, [0, 1], until_status(Status.failed, Status.paused), timeout=30)
        wait_for(lambda: (backend.trial_dir(1) / "exit.json").exists(), what="the pause's end")
        used = json.loads((backend.trial_dir(1) / "exit.json").read_text())["running_time"]
    restored = LocalBackend.restore(experiment_dir)
    try:
        statuses, _ = restored.fetch_status_results([0, 1])
        assert statuses[0][0].failure_reason == "exit code 1"
        assert statuses[0][0].failure_kind == "exit"
        restored.resume_trial(1)
        statuses, _ = collect(restored, [1], until_status(Status.failed), timeout=30)
        assert statuses[1][0].failure_reason == "time limit (2 s)"
        second = json.loads((restored.trial_dir(1) / "exit.json").read_text())
        assert used + second["running_time"] == pytest.approx(2.0, abs=0.6)
    finally:
        restored.close()


def test_status_shows_the_failure_reason(experiment_dir: Path) -> None:
    import subprocess

    with _backend(experiment_dir, time_limit=0.5) as backend:
        backend.start_trial({"mode": "sleep", "seconds": 60})
        collect(backend, [0], until_status(Status.failed), timeout=30)
    shown = subprocess.run(
        [sys.executable, "-m", "localbackend.cli", "status", str(experiment_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "trial 0: time limit (0.5 s)" in shown.stdout, shown.stdout + shown.stderr


def test_a_resume_right_after_a_pause_counts_the_ending_runs_time(experiment_dir: Path) -> None:
    # The paused run takes 1.5 s to obey SIGTERM; the resume is asked for at
    # once, before the driver knows how long that run ran. Its keeper counts it.
    with _backend(experiment_dir, time_limit=3.0, grace_period=5.0) as backend:
        backend.start_trial({"mode": "slow_term", "seconds": 0.1, "term_seconds": 1.5})
        collect(backend, [0], lambda _s, results: len(results) >= 5, timeout=30)
        backend.pause_trial(0)
        backend.resume_trial(0)
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=60)
        assert statuses[0][0].failure_reason == "time limit (3 s)", format_logs(backend)
        runs = [json.loads(line) for line in (experiment_dir / "journal.jsonl").read_text()
                .splitlines() if '"exited"' in line]
        used = sum(entry["running_time"] for entry in runs if entry.get("op") == "exited")
        # The limit, plus the 1.5 s the second run takes to obey its own SIGTERM
        # at the limit; without counting the first run's end, about 6.5 s.
        assert used == pytest.approx(4.5, abs=0.8), runs


def test_a_forked_pool_sharing_its_pages_is_not_taken_for_a_memory_hog(
    experiment_dir: Path,
) -> None:
    # 4 processes share 60 MiB: their resident sizes sum to 240 MiB, their
    # proportional sizes to about 60 MiB, under the 150 MiB limit.
    with _backend(experiment_dir, memory_limit="150MiB") as backend:
        backend.start_trial({"mode": "fork_pool", "megabytes": 60, "seconds": 2})
        statuses, _ = collect(backend, [0], until_status(Status.completed, Status.failed),
                              timeout=60)
        assert statuses[0][1] == Status.completed, format_logs(backend)


def test_numpy_numbers_are_limits_and_other_things_are_not(experiment_dir: Path) -> None:
    import numpy as np

    from localbackend import BackendConfigurationError

    with _backend(experiment_dir, time_limit=np.float64(60), memory_limit=np.int64(1 << 30),
                  max_failures=np.int64(1)) as backend:
        for bad in (5, ["time_limit"], {"time_limit": 10**400}, {"max_failures": 10**30},
                    {"memory_limit": 2**64}, {"time_limit": 1e300}):
            with pytest.raises(BackendConfigurationError):
                backend.start_trial({"mode": "sleep"}, limits=bad)  # type: ignore[arg-type]
        assert backend.new_trial_id() == 0  # a refused start leaves no trial behind
        backend.start_trial({"mode": "sleep", "seconds": 60},
                            limits={"time_limit": np.float64(0.5)})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=30)
        assert statuses[0][0].failure_reason == "time limit (0.5 s)"
    with pytest.raises(BackendConfigurationError, match=r"'0\.1B'"):
        _backend(experiment_dir, memory_limit="0.1B")


@pytest.mark.parametrize("seconds, text", [
    (60.0, "60"), (0.5, "0.5"), (86400.0, "86400"), (1.25, "1.25"), (0.0004, "0.0004"),
    (1e-07, "0.0000001"), (2.0004, "2"),
])
def test_seconds_are_written_for_people_however_small(seconds: float, text: str) -> None:
    from localbackend.core._limits import seconds_text

    assert seconds_text(seconds) == text

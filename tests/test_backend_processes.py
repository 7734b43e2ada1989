"""Process trees: sessions, SIGTERM then SIGKILL, setsid and double-forked descendants, reaping."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from localbackend import LocalBackend, Status
from tests.helpers import (
    collect,
    format_logs,
    script,
    status_history,
    until_status,
    wait_for,
    wait_for_trial_file,
    wait_not_busy,
)

GRACE = 0.5
# Tests that see a trial still "Stopping" right after a pause need the grace period
# to outlast the few statements in between, even on a loaded machine.
STOPPING_GRACE = 1.0
DESCENDANTS = ("leader", "setsid_child", "group_child", "grandchild")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def tree_of(backend: LocalBackend, trial_id: int) -> dict[str, psutil.Process]:
    """The trial's processes, captured while alive (so a reused PID is never mistaken)."""
    pids = read_json(wait_for_trial_file(backend, trial_id, "pids.json"))
    procs = {name: psutil.Process(pids[name]) for name in DESCENDANTS}
    for name, proc in procs.items():
        assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, name
    return procs


def gone(proc: psutil.Process) -> bool:
    """True once the process has exited and been reaped (a zombie is not gone)."""
    try:
        return not proc.is_running()
    except psutil.Error:
        return True


def wait_all_gone(backend: LocalBackend, procs: dict[str, psutil.Process]) -> None:
    wait_for(
        lambda: all(gone(p) for p in procs.values()),
        timeout=20,
        what="every process of the trial to be gone",
        on_fail=lambda: describe(procs) + "\n" + format_logs(backend),
    )


def describe(procs: dict[str, psutil.Process]) -> str:
    lines = []
    for name, proc in procs.items():
        try:
            lines.append(f"{name} {proc.pid} {proc.status()}")
        except psutil.Error:
            lines.append(f"{name} {proc.pid} gone")
    return "\n".join(lines)


def wait_no_zombies() -> None:
    """Every exited descendant gets reaped (one may be a zombie for an instant)."""
    wait_for(lambda: zombies_below_us() == [], timeout=10, what="no zombies",
             on_fail=lambda: "\n".join(zombies_below_us()))


def zombies_below_us() -> list[str]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {proc.name()}")
        except psutil.Error:
            pass
    return found


# -- sessions -----------------------------------------------------------------------


def test_each_trial_runs_in_its_own_session(experiment_dir: Path) -> None:
    with LocalBackend(
        script("spawn_tree.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({})
        backend.start_trial({})
        first = read_json(wait_for_trial_file(backend, 0, "pids.json"))
        second = read_json(wait_for_trial_file(backend, 1, "pids.json"))
        for pids in (first, second):
            assert pids["leader_sid"] == pids["leader"]
            assert pids["leader_pgid"] == pids["leader"]
        assert first["leader_sid"] != second["leader_sid"]
        assert os.getsid(0) not in (first["leader_sid"], second["leader_sid"])
        backend.stop_all()


# -- pause and stop reach every descendant ------------------------------------------------


@pytest.mark.parametrize("action", ["stop_trial", "pause_trial"])
def test_stop_and_pause_end_setsid_and_double_forked_descendants(
    action: str, experiment_dir: Path
) -> None:
    with LocalBackend(
        script("spawn_tree.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"descendants_ignore_term": 1})
        procs = tree_of(backend, 0)
        # The double-forked grandchild's parent has exited already.
        assert procs["grandchild"].ppid() != procs["leader"].pid
        getattr(backend, action)(0)
        wait_all_gone(backend, procs)
        wait_not_busy(backend, [0])
        # SIGTERM went to the trial's process group first: this child caught it.
        assert (backend.trial_dir(0) / "group-child-got-term").exists()
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == (Status.stopped if action == "stop_trial" else Status.paused)
        wait_no_zombies()


def test_descendants_that_honour_sigterm_end_without_waiting_for_sigkill(
    experiment_dir: Path,
) -> None:
    with LocalBackend(
        script("spawn_tree.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"descendants_ignore_term": 0})
        procs = tree_of(backend, 0)
        backend.stop_trial(0)
        wait_all_gone(backend, procs)
        wait_not_busy(backend, [0])
        exit_status = read_json(backend.trial_dir(0) / "exit.json")
        assert exit_status["signal"] == "SIGTERM"


@pytest.mark.parametrize("ignore_term", [0, 1])
def test_descendants_are_ended_when_the_trials_main_process_exits(
    ignore_term: int, experiment_dir: Path
) -> None:
    with LocalBackend(
        script("spawn_tree.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"after": "exit", "descendants_ignore_term": ignore_term})
        pids = read_json(wait_for_trial_file(backend, 0, "pids.json"))
        procs: dict[str, psutil.Process] = {}
        for name in DESCENDANTS:
            try:
                procs[name] = psutil.Process(pids[name])
            except psutil.NoSuchProcess:
                pass  # already gone, which is what we want
        statuses, _ = collect(backend, [0], until_status(Status.completed, Status.failed))
        # The trial's status is its main process's: it exited 0.
        assert statuses[0][1] == Status.completed, format_logs(backend)
        wait_all_gone(backend, procs)
        wait_not_busy(backend, [0])
        wait_no_zombies()


# -- SIGTERM, grace period, SIGKILL ---------------------------------------------------------


def test_trial_ignoring_sigterm_is_killed_after_the_grace_period(experiment_dir: Path) -> None:
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=STOPPING_GRACE
    ) as backend:
        backend.start_trial({})
        # The script touches ready-0 only after its line in runs.jsonl is written;
        # runs.jsonl itself exists, empty, from its open() on.
        wait_for_trial_file(backend, 0, "ready-0")
        run = read_json(backend.trial_dir(0) / "runs.jsonl")
        leader = psutil.Process(run["pid"])
        backend.pause_trial(0)
        # pause_trial returns at once, with the status already Paused.
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused
        assert backend.busy_trial_ids() == [(0, Status.stopping)]
        wait_all_gone(backend, {"leader": leader})
        wait_not_busy(backend, [0])
        exit_status = read_json(backend.trial_dir(0) / "exit.json")
        assert exit_status["signal"] == "SIGKILL"
        statuses, _ = backend.fetch_status_results([0])
        trial, status = statuses[0]
        assert status == Status.paused
        assert trial.exit_signal == "SIGKILL"


def test_stop_all_kills_trials_that_ignore_sigterm(experiment_dir: Path) -> None:
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        for _ in range(3):
            backend.start_trial({})
        leaders = {}
        for trial_id in range(3):
            wait_for_trial_file(backend, trial_id, "ready-0")
            run = read_json(backend.trial_dir(trial_id) / "runs.jsonl")
            leaders[str(trial_id)] = psutil.Process(run["pid"])
        backend.stop_all()
        assert backend.busy_trial_ids() == []
        wait_all_gone(backend, leaders)
        statuses, _ = backend.fetch_status_results([0, 1, 2])
        assert all(s == Status.stopped for _, s in statuses.values())


def test_resume_waits_until_the_previous_run_is_gone(experiment_dir: Path) -> None:
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=STOPPING_GRACE
    ) as backend:
        backend.start_trial({})
        wait_for_trial_file(backend, 0, "ready-0")
        backend.pause_trial(0)
        # The old run ignores SIGTERM and is still alive: resume at once anyway.
        assert backend.busy_trial_ids() == [(0, Status.stopping)]
        resumed = backend.resume_trial(0)
        assert resumed.status == Status.in_progress
        wait_for_trial_file(backend, 0, "ready-1", timeout=30)
        runs = [
            json.loads(line)
            for line in (backend.trial_dir(0) / "runs.jsonl").read_text().splitlines()
        ]
        assert len(runs) == 2
        assert runs[1]["earlier_alive"] == [], "the new run started while the old one lived"
        assert [h["status"] for h in status_history(backend, 0)] == [
            Status.in_progress, Status.paused, Status.in_progress,
        ]
        backend.stop_trial(0)


def test_pause_while_a_previous_run_is_still_ending(experiment_dir: Path) -> None:
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({})
        wait_for_trial_file(backend, 0, "ready-0")
        backend.pause_trial(0)
        backend.resume_trial(0)
        backend.pause_trial(0)
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused
        wait_not_busy(backend, [0])
        backend.resume_trial(0)
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.in_progress
        # Exactly one run of the trial is alive now; the cancelled one never ran or was ended.
        wait_for(
            lambda: len(busy_pids(backend, 0)) == 1, timeout=20, what="one live run",
            on_fail=lambda: format_logs(backend),
        )
        backend.stop_trial(0)
        wait_not_busy(backend, [0])
        assert busy_pids(backend, 0) == []


def busy_pids(backend: LocalBackend, trial_id: int) -> list[int]:
    """PIDs of the trial's runs that are alive and not zombies."""
    path = backend.trial_dir(trial_id) / "runs.jsonl"
    if not path.exists():
        return []
    alive = []
    for line in path.read_text().splitlines():
        pid = json.loads(line)["pid"]
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


# -- a stop that follows a start at once -------------------------------------------

def test_stop_or_pause_right_after_start_ends_the_trial(experiment_dir: Path) -> None:
    # A stop sent the moment the trial's keeper is forked must not be lost; the race
    # is timing-dependent, so several trials are tried.
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        for trial_id in range(4):
            # If the stop were lost, the trial would exit 0 by itself after 3 s.
            backend.start_trial({"hold": 1, "lifetime": 3})
            if trial_id % 2:
                backend.stop_trial(trial_id)
            else:
                backend.pause_trial(trial_id)
        wait_not_busy(backend, [0, 1, 2, 3])
        for trial_id in range(4):
            exit_status = read_json(backend.trial_dir(trial_id) / "exit.json")
            assert exit_status["returncode"] is None, (trial_id, exit_status)
            assert exit_status["signal"] in ("SIGTERM", "SIGKILL"), (trial_id, exit_status)


def test_stop_right_after_resume_ends_the_trial(experiment_dir: Path) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        for trial_id in range(3):
            backend.start_trial({"hold": 1, "lifetime": 3})
            wait_for_trial_file(backend, trial_id, "argv-0.json")
            backend.pause_trial(trial_id)
        wait_not_busy(backend, [0, 1, 2])
        for trial_id in range(3):
            backend.resume_trial(trial_id)
            backend.stop_trial(trial_id)
        wait_not_busy(backend, [0, 1, 2])
        for trial_id in range(3):
            exit_status = read_json(backend.trial_dir(trial_id) / "exit.json")
            assert exit_status["run"] == 1
            assert exit_status["returncode"] is None, (trial_id, exit_status)


# -- reaping ----------------------------------------------------------------------


def test_no_zombies_after_many_short_trials(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        for _ in range(6):
            backend.start_trial({"n": 1})
        statuses, _ = collect(
            backend, list(range(6)), until_status(Status.completed, Status.failed)
        )
        assert all(s == Status.completed for _, s in statuses.values())
        wait_not_busy(backend, list(range(6)))
        # The backend is still open: its helper processes must have reaped every child.
        wait_no_zombies()


def test_no_process_remains_after_close(experiment_dir: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    backend = LocalBackend(
        script("spawn_tree.py"), experiment_dir=experiment_dir, grace_period=GRACE
    )
    try:
        backend.start_trial({"descendants_ignore_term": 1})
        backend.start_trial({})
        procs = tree_of(backend, 0)
        procs.update({f"{k}-1": v for k, v in tree_of(backend, 1).items()})
    finally:
        backend.close()
    assert all(gone(p) for p in procs.values()), describe(procs)
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before

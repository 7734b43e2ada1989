"""A driver killed at an exact point of its journal, then the experiment restored.

Each driver here is a real process that drives a real trial and SIGKILLs
itself right after it appends a given journal entry (the fault injected: the
kill, at that moment). The test then restores the experiment, once or twice,
and checks that every result the trial reported before its pause is
delivered exactly once over all the drivers, and nothing it wrote after.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend, Status
from tests.helpers import drain, format_logs, script
from tests.test_cli_tune import cli_env

TRIAL = script("crash_point_trial.py")

# argv: experiment, the journal op to die after, its run (or -), which such
# entry (1 for the first), the scenario, the trial script.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    from localbackend import LocalBackend
    from localbackend.core import _journal

    experiment, op, run, nth, scenario, entry = sys.argv[1:7]
    appended = _journal.Journal.append
    seen = []

    def append(self, name, **fields):
        done = appended(self, name, **fields)
        if name == op and (run == "-" or str(fields.get("run")) == run):
            seen.append(name)
            if len(seen) == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
        return done

    _journal.Journal.append = append
    got = open(Path(experiment).parent / "delivered-by-driver.jsonl", "a")

    def fetch(backend):
        for _, result in backend.fetch_status_results([0])[1]:
            got.write(json.dumps(result) + "\\n")
            got.flush()

    def lines():
        try:
            return len((Path(experiment) / "0" / "results.jsonl").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def until(condition):
        deadline = time.monotonic() + 30
        while not condition():
            if time.monotonic() > deadline:
                sys.exit("the trial did not get there")
            time.sleep(0.01)

    backend = LocalBackend(entry, experiment_dir=experiment, grace_period=5.0)
    if scenario == "pause-resume-unfetched":
        backend.start_trial({"steps": 3, "hold": 1})
        until(lambda: lines() >= 1)
        backend.pause_trial(0)
        backend.resume_trial(0)
    elif scenario == "ends-alone":
        backend.start_trial({"steps": 2})
    elif scenario == "pause-resume-while-ending":
        backend.start_trial({"steps": 200, "step_seconds": 0.05, "after_term": 1})
        until(lambda: lines() >= 2)
        fetch(backend)
        backend.pause_trial(0)
        backend.resume_trial(0)
    elif scenario == "pause-unfetched-resume-pause":
        backend.start_trial({"steps": 200, "step_seconds": 0.05, "after_term": 1})
        until(lambda: lines() >= 2)
        backend.pause_trial(0)
        backend.resume_trial(0)
        deadline = time.monotonic() + 30
        while lines() < 5 and time.monotonic() < deadline:
            backend.wait(timeout=0.05)  # the paused run ends, the resumed one reports
        backend.pause_trial(0)
    while True:  # until the kill
        backend.wait(timeout=0.05)
""")


def _killed_driver(
    tmp_path: Path, op: str, run: str, scenario: str, nth: int = 1
) -> Path:
    experiment = tmp_path / "experiment"
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(experiment), op, run, str(nth), scenario, str(TRIAL)],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stdout, done.stderr)
    return experiment


def _delivered_by_driver(tmp_path: Path) -> list[dict[str, Any]]:
    try:
        text = (tmp_path / "delivered-by-driver.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def _restored(experiment: Path) -> tuple[str, list[dict[str, Any]]]:
    """Restore, deliver what is owed, close: the trial's status and the results."""
    with LocalBackend.restore(experiment) as backend:
        statuses, results = drain(backend, [0])
        if not results:
            statuses, results = backend.fetch_status_results([0])
        assert not backend.busy_trial_ids(), format_logs(backend, [0])
        return statuses[0][1], [result for _, result in results]


def _written(experiment: Path) -> list[dict[str, Any]]:
    text = (experiment / "0" / "results.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(("op", "run", "scenario", "status", "steps"), [
    # Killed after the resumed run's launch was journaled, before its status:
    # the result written before the pause is still owed.
    ("launch", "1", "pause-resume-unfetched", Status.paused, [1]),
    # Killed after the run's exit was journaled, before the trial's new status.
    ("exited", "0", "ends-alone", Status.completed, [1, 2]),
], ids=["inside-a-resume", "after-a-run-ended-alone"])
def test_a_driver_killed_between_two_entries_of_one_change_restores_every_result_once(
    tmp_path: Path, op: str, run: str, scenario: str, status: str, steps: list[int]
) -> None:
    experiment = _killed_driver(tmp_path, op, run, scenario)
    restored_status, results = _restored(experiment)
    assert restored_status == status
    assert [r["step"] for r in results] == steps, _written(experiment)


def test_a_second_restore_never_delivers_what_a_paused_run_wrote_after_its_pause(
    tmp_path: Path,
) -> None:
    # Paused, resumed at once while the paused run ends, killed after the
    # resume's status: the resumed run never starts, and the paused one
    # reports once more after its SIGTERM.
    experiment = _killed_driver(tmp_path, "status", "1", "pause-resume-while-ending")
    first = _delivered_by_driver(tmp_path)
    assert first
    _, second = _restored(experiment)  # looks, resumes nothing, closes
    _, third = _restored(experiment)
    steps = [r["step"] for r in first + second + third]
    assert not any(r["after_term"] for r in second + third), (second, third)
    assert steps == list(range(1, len(steps) + 1)), (steps, _written(experiment))
    assert any(r["after_term"] for r in _written(experiment)), _written(experiment)


def test_what_a_paused_run_wrote_after_its_pause_is_never_delivered_once_its_results_wait(
    tmp_path: Path,
) -> None:
    # Nothing fetched: the paused run's results still wait when its later
    # output is passed over at its end; the resumed run is paused in turn,
    # and the driver killed after that pause's status.
    experiment = _killed_driver(tmp_path, "status", "1", "pause-unfetched-resume-pause", nth=2)
    _, results = _restored(experiment)
    steps = [r["step"] for r in results]
    assert not any(r["after_term"] for r in results), (results, _written(experiment))
    assert steps == sorted(steps) and steps[:2] == [1, 2], steps
    assert any(r["after_term"] for r in _written(experiment))

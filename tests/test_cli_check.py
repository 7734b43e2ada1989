"""``localbackend check`` against the shipped good script and deliberately broken ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localbackend import LocalBackend
from localbackend.cli import _check, main
from tests.helpers import format_logs, wait_for

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "entrypoints" / "train_numpy.py"
SYNE_TUNE_STYLE = REPO / "entrypoints" / "syne_tune_style.py"
BROKEN = REPO / "tests" / "scripts" / "check"
VERDICT = re.compile(r"^\s+(PASS|FAIL|SKIP)\s+(\S+)\s+(.*)$", re.MULTILINE)


def check(script: Path, *args: str) -> tuple[int, dict[str, str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "localbackend.cli", "check", str(script), "--metric", "loss",
         "--grace-period", "1", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )
    verdicts = {name: outcome for outcome, name, _ in VERDICT.findall(result.stdout)}
    return result.returncode, verdicts, f"{result.stdout}\n{result.stderr}"


ALL_PASS = {
    "reporting": "PASS", "sigterm": "PASS", "resume": "PASS", "exact-resume": "PASS",
    "copied-checkpoint": "PASS",
}


@pytest.mark.parametrize("script", [TRAIN, SYNE_TUNE_STYLE], ids=["train_numpy", "syne_tune"])
def test_good_scripts_pass_every_check(script: Path) -> None:
    code, verdicts, output = check(script, "-p", "epochs=4", "-p", "epoch_seconds=0.1")
    assert verdicts == ALL_PASS, output
    assert code == 0, output


def test_a_script_that_never_checkpoints() -> None:
    code, verdicts, output = check(
        BROKEN / "never_checkpoints.py", "-p", "epochs=4", "-p", "epoch_seconds=0.1"
    )
    assert code == 1, output
    assert verdicts["reporting"] == "PASS" and verdicts["sigterm"] == "PASS", output
    assert verdicts["resume"] == "FAIL" and verdicts["copied-checkpoint"] == "FAIL", output
    assert "restarted from scratch" in output
    assert "it saved nothing in its checkpoint folder" in output
    assert "checkpoint.save()" in output


def test_a_script_that_ignores_sigterm() -> None:
    code, verdicts, output = check(
        BROKEN / "ignores_sigterm.py", "-p", "epochs=20", "-p", "epoch_seconds=0.1"
    )
    assert code == 1, output
    assert verdicts["sigterm"] == "FAIL", output
    assert "ignores SIGTERM" in output and "SIGKILL" in output
    assert "fix: handle SIGTERM" in output
    # It checkpoints properly, so what it saved before the kill resumes exactly.
    assert verdicts["resume"] == "PASS" and verdicts["exact-resume"] == "PASS", output


def test_a_script_that_does_not_restore_its_rng() -> None:
    code, verdicts, output = check(
        BROKEN / "forgets_rng.py", "-p", "epochs=4", "-p", "epoch_seconds=0.1"
    )
    assert code == 1, output
    assert verdicts["resume"] == "PASS", output
    assert verdicts["exact-resume"] == "FAIL", output
    assert "RNG or optimizer state is not checkpointed" in output
    assert verdicts["copied-checkpoint"] == "PASS", output


def test_check_needs_a_metric_and_an_existing_script() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    no_metric = subprocess.run(
        [sys.executable, "-m", "localbackend.cli", "check", str(TRAIN)],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert no_metric.returncode == 2 and "--metric" in no_metric.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "localbackend.cli", "check", "nothere.py", "--metric", "loss"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert missing.returncode == 2 and "'nothere.py' does not exist" in missing.stderr
    assert "Traceback" not in no_metric.stderr + missing.stderr


RESTARTS = BROKEN / "restarts_from_scratch.py"
OWN_OPTIONS = BROKEN / "own_options.py"


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def check_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    backend_class: type[LocalBackend], script: Path, *args: str,
) -> tuple[int, dict[str, str], str]:
    """``check`` run by ``main`` in this process, on a backend class that sets the timing."""
    monkeypatch.setattr(_check, "LocalBackend", backend_class)
    code = main(["check", str(script), "--metric", "loss", "--grace-period", "1", *args])
    captured = capsys.readouterr()
    verdicts = {name: outcome for outcome, name, _ in VERDICT.findall(captured.out)}
    return code, verdicts, f"{captured.out}\n{captured.err}"


class PausesAfterAnotherResult(LocalBackend):
    """Its first pause waits until the trial wrote a result not fetched yet.

    That result was written before the pause, so it is delivered after
    ``pause_trial`` returned, while the paused run winds down.
    """

    paused = False

    def pause_trial(self, trial_id: int, result: object = None) -> None:
        if not self.paused:
            type(self).paused = True
            results = self.trial_dir(trial_id) / "results.jsonl"
            wait_for(lambda: _lines(results) >= 2, timeout=30, what="a second result",
                     on_fail=lambda: format_logs(self, [trial_id]))
        super().pause_trial(trial_id)


class PausesAfterTheEnd(LocalBackend):
    """Its first pause waits until the trial has finished, as if it ended just before."""

    paused = False

    def pause_trial(self, trial_id: int, result: object = None) -> None:
        if not self.paused:
            type(self).paused = True
            wait_for(lambda: all(t != trial_id for t, _ in self.busy_trial_ids()), timeout=30,
                     what=f"trial {trial_id} to end", on_fail=lambda: format_logs(self, [trial_id]))
        super().pause_trial(trial_id)


def test_a_script_that_restarts_from_scratch_fails_both_resume_checks() -> None:
    code, verdicts, output = check(RESTARTS, "-p", "epochs=4", "-p", "epoch_seconds=0.1")
    assert code == 1, output
    assert verdicts["reporting"] == "PASS" and verdicts["sigterm"] == "PASS", output
    assert verdicts["resume"] == "FAIL" and verdicts["exact-resume"] == "FAIL", output
    assert "restarted from scratch" in output
    assert "did not load them" in output


def test_results_delivered_during_the_pause_belong_to_the_paused_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(PausesAfterAnotherResult, "paused", False)
    code, verdicts, output = check_in_process(
        monkeypatch, capsys, PausesAfterAnotherResult, RESTARTS,
        "-p", "epochs=5", "-p", "epoch_seconds=0.3",
    )
    assert PausesAfterAnotherResult.paused, output
    assert verdicts["resume"] == "FAIL" and verdicts["exact-resume"] == "FAIL", output
    assert "after epoch 2, it restarted from scratch (epoch 1 again)" in output
    assert code == 1, output


def test_a_well_behaved_script_still_passes_when_results_arrive_during_the_pause(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(PausesAfterAnotherResult, "paused", False)
    code, verdicts, output = check_in_process(
        monkeypatch, capsys, PausesAfterAnotherResult, OWN_OPTIONS,
        "-p", "steps=5", "-p", "delay=0.3",
    )
    assert PausesAfterAnotherResult.paused, output
    assert verdicts == ALL_PASS, output
    assert "paused after epoch 2, it resumed from its checkpoint at epoch 3" in output
    assert code == 0, output


def test_a_trial_that_ends_just_before_its_pause_is_skipped_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(PausesAfterTheEnd, "paused", False)
    code, verdicts, output = check_in_process(
        monkeypatch, capsys, PausesAfterTheEnd, OWN_OPTIONS, "-p", "steps=4", "-p", "delay=0.1",
    )
    assert PausesAfterTheEnd.paused, output
    assert "error" not in output and "Traceback" not in output, output
    assert verdicts["reporting"] == "PASS", output
    for name in ("sigterm", "resume", "exact-resume", "copied-checkpoint"):
        assert verdicts[name] == "SKIP", output
    assert "ended (exit code 0) before the pause reached it" in output, output
    assert "-p steps=4 -p delay=0.1" in output, output
    assert "epoch_seconds" not in output and "epochs=" not in output, output
    assert code == 0, output


def test_a_run_that_had_done_all_its_work_when_paused_is_skipped_not_judged() -> None:
    # Its exit 0 after the SIGTERM says nothing of a handler: it was done already.
    code, verdicts, output = check(BROKEN / "done_before_pause.py", "-p", "epochs=3")
    assert verdicts["reporting"] == "PASS", output
    for name in ("sigterm", "resume", "exact-resume", "copied-checkpoint"):
        assert verdicts[name] == "SKIP", output
    assert "had reported all 3 results" in output, output
    assert "-p epochs=3" in output, output
    assert code == 0, output


def test_the_hint_for_a_trial_too_short_to_pause_names_the_scripts_own_options() -> None:
    code, verdicts, output = check(OWN_OPTIONS, "-p", "steps=0", "-p", "delay=0.01")
    assert verdicts["reporting"] == "FAIL", output
    assert verdicts["sigterm"] == "SKIP", output
    assert "-p steps=0 -p delay=0.01" in output, output
    assert "epoch_seconds" not in output and "epochs=" not in output, output
    assert code == 1, output


def test_a_script_whose_result_lines_are_not_json_is_told_so() -> None:
    # json.dumps writes NaN, which is not JSON: every line is skipped.
    code, verdicts, output = check(BROKEN / "writes_nan.py")
    assert code == 1, output
    assert verdicts["reporting"] == "FAIL", output
    assert "not a JSON object" in output and "NaN" in output, output
    assert "the script reported no result" not in output, output
    # The trial ran to its end because nothing it wrote was a result, not
    # because it had too little work: the later checks wait for reporting.
    assert "ended before it could be paused" not in output, output
    later = ("sigterm", "resume", "exact-resume", "copied-checkpoint")
    assert all(verdicts[name] == "SKIP" for name in later), output
    assert output.count("needs a script that passes the reporting check") == 4, output

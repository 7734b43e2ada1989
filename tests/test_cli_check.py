"""``localbackend check`` against the shipped good script and deliberately broken ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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

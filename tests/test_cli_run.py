"""``localbackend run``: one trial, streamed, with its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "entrypoints" / "train_numpy.py"


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    return clean


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localbackend.cli", "run", *args],
        capture_output=True, text=True, timeout=120, env=env(),
    )


def test_run_streams_results_and_exits_zero(tmp_path: Path) -> None:
    result = run(str(TRAIN), "-p", "epochs=3", "-p", "lr=0.05", "--experiment-dir",
                 str(tmp_path / "one"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("result| ")] == [
        "epoch=1", "epoch=2", "epoch=3",
    ]
    # train_numpy says on stderr that it has no checkpoint folder only when run by hand.
    assert not any("[tune-metric]" in line for line in lines)
    assert "trial 0 Completed (exit code 0)" in result.stdout
    assert f"folder: {tmp_path / 'one' / '0'}" in result.stdout


def test_run_marks_stderr_and_returns_the_trial_exit_code(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.exit(3)\n"
    )
    result = run(str(script))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "out| to stdout" in result.stdout
    assert "err| to stderr" in result.stdout
    assert "trial 0 Failed (exit code 3)" in result.stdout


def test_ctrl_c_stops_the_trial_and_its_tree(tmp_path: Path) -> None:
    experiment = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localbackend.cli", "run", str(TRAIN), "-p", "epochs=1000",
         "-p", "epoch_seconds=0.1", "--experiment-dir", str(experiment)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    seen = ""
    while "result| " not in seen:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, seen
        seen += line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen + out + err
    assert "stopping the trial" in out
    history = [json.loads(x) for x in (experiment / "0" / "status.jsonl").read_text().splitlines()]
    assert history[-1]["status"] == "Stopped"
    exit_info = json.loads((experiment / "0" / "exit.json").read_text())
    assert exit_info, "the trial's process tree ended and was reaped"

"""``tune --preload`` and ``check --preload``, through the command line."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "entrypoints" / "train_numpy.py"
SENSITIVE = REPO / "tests" / "scripts" / "warm_sensitive.py"
ENDS_OTHERWISE = REPO / "tests" / "scripts" / "warm_exit.py"
VERDICT = re.compile(r"^\s+(PASS|FAIL|SKIP)\s+(\S+)\s+(.*)$", re.MULTILINE)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "localbackend.cli", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )


def test_check_preload_runs_every_check_warm_and_compares_with_cold(tmp_path: Path) -> None:
    result = cli(
        "check", str(TRAIN), "--metric", "loss", "--grace-period", "1", "-p", "epochs=4",
        "-p", "epoch_seconds=0.1", "--preload", "numpy", "--experiment-dir", str(tmp_path / "c"),
    )
    output = f"{result.stdout}\n{result.stderr}"
    verdicts = {name: outcome for outcome, name, _ in VERDICT.findall(result.stdout)}
    assert set(verdicts.values()) == {"PASS"}, output
    assert "warm-start" in verdicts, output
    assert result.returncode == 0, output
    assert "starts cold" not in output, output


def _first_result_time(trial_dir: Path) -> str:
    first = json.loads((trial_dir / "results.jsonl").read_text().splitlines()[0])
    return f"{first['st_worker_time']:.3f} s"


def test_check_preload_times_starts_made_once_the_supervisor_is_up(tmp_path: Path) -> None:
    # The first warm run also waits for the supervisor to import the modules,
    # and the first cold one for the supervisor to start: the timing compares
    # a start of each kind made after that, not those first runs.
    root = tmp_path / "c"
    result = cli(
        "check", str(TRAIN), "--metric", "loss", "--grace-period", "1", "-p", "epochs=4",
        "-p", "epoch_seconds=0.1", "--preload", "numpy", "--experiment-dir", str(root),
    )
    output = f"{result.stdout}\n{result.stderr}"
    lines = {name: (outcome, detail) for outcome, name, detail in VERDICT.findall(result.stdout)}
    assert lines["warm-start"][0] == "PASS", output
    warm, cold = _first_result_time(root / "3"), _first_result_time(Path(f"{root}-cold") / "1")
    first_warm = _first_result_time(root / "0")
    detail = lines["warm-start"][1]
    assert f"first result after {warm} warm, {cold} cold" in detail, output
    assert (
        "the first warm start, which also waited for the supervisor to start and import "
        f"numpy: {first_warm}"
    ) in detail, output


@pytest.mark.parametrize(("entry", "said"), [
    (SENSITIVE, ["the warm run reports loss"]),  # other results
    (ENDS_OTHERWISE, ["exit code 3", "exit code 0"]),  # the same results, another end
], ids=["results", "end"])
def test_check_preload_fails_a_script_whose_warm_start_differs(
    tmp_path: Path, entry: Path, said: list[str]
) -> None:
    result = cli(
        "check", str(entry), "--metric", "loss", "--grace-period", "1",
        "--preload", "json", "--experiment-dir", str(tmp_path / "c"),
    )
    output = f"{result.stdout}\n{result.stderr}"
    lines = {name: (outcome, detail) for outcome, name, detail in VERDICT.findall(result.stdout)}
    assert lines["warm-start"][0] == "FAIL", output
    for words in said:
        assert words in lines["warm-start"][1], output
    assert result.returncode == 1, output


def test_tune_preload_starts_trials_warm_and_keeps_it_on_resume(tmp_path: Path) -> None:
    root = tmp_path / "tune"
    result = cli(
        "tune", str(TRAIN), "--metric", "loss", "--scheduler", "random", "-p", "epochs=2",
        "-p", "epoch_seconds=0.01", "-p", "lr=uniform(0.01,0.1)", "--max-trials", "3",
        "--workers", "2", "--view", "plain", "--preload", "numpy",
        "--experiment-dir", str(root),
    )
    output = f"{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    assert "starts cold" not in output, output
    assert json.loads((root / "experiment.json").read_text())["options"]["preload"] == ["numpy"]
    assert json.loads((root / "tuner.json").read_text())["options"]["preload"] == ["numpy"]
    changed = cli("tune", "--resume", str(root), "--preload", "numpy,torch")
    assert changed.returncode != 0
    assert "--preload cannot change on resume" in changed.stderr, changed.stderr


def test_check_preload_names_what_the_script_still_imports_after_the_fork(
    tmp_path: Path,
) -> None:
    # train_numpy.py draws from numpy.random, which --preload numpy leaves
    # to each run (numpy 1 imported it with numpy); with it preloaded too,
    # nothing is left to name.
    if int(importlib.metadata.version("numpy").split(".")[0]) < 2:
        pytest.skip("numpy before 2.0 imports numpy.random with numpy")
    details = {}
    for preload in ("numpy", "numpy,numpy.random"):
        result = cli(
            "check", str(TRAIN), "--metric", "loss", "--grace-period", "1", "-p", "epochs=3",
            "-p", "epoch_seconds=0.05", "--preload", preload,
            "--experiment-dir", str(tmp_path / preload.replace(",", "-")),
        )
        output = f"{result.stdout}\n{result.stderr}"
        lines = {n: (v, d) for v, n, d in VERDICT.findall(result.stdout)}
        assert lines["warm-start"][0] == "PASS", output
        details[preload] = lines["warm-start"][1]
    assert (
        "after the fork the script still imported numpy.random: add it to --preload"
        in details["numpy"]
    ), details
    assert "the script imported no other package after the fork" in details[
        "numpy,numpy.random"
    ], details

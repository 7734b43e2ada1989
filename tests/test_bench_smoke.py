"""The benchmark harness runs end to end at tiny sizes, so it never rots.

This checks that ``python -m bench`` works, not how fast anything is: the
figures of a smoke run mean nothing, and no test asserts on timing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SECTIONS = (
    "1. Throughput",
    "2. Ingestion",
    "3. Pause and resume",
    "4. Memory",
    "5. Checkpoint copy",
    "6. Idle cost",
    "7. Scale",
    "Dask",
    "8. End to end",
)
SYNE_PYTHON = REPO / "bench" / ".venv-syne" / "bin" / "python"


def _run_bench(tmp_path: Path, *options: str) -> str:
    output = tmp_path / "RESULTS.md"
    command = [
        sys.executable, "-m", "bench", "--profile", "smoke", "--no-install",
        "--output", str(output), "--workdir", str(tmp_path / "work"), *options,
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(command)} exited with {done.returncode}\n"
        f"--- stderr ---\n{done.stderr[-6000:]}\n--- stdout ---\n{done.stdout[-3000:]}"
    )
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir()), (
        "the bench left scratch folders behind"
    )
    return output.read_text(encoding="utf-8")


def test_every_scenario_runs_for_floor_and_localbackend(tmp_path: Path) -> None:
    report = _run_bench(tmp_path, "--contenders", "floor,localbackend")
    for section in SECTIONS:
        assert f"## {section}" in report, f"section {section!r} missing from:\n{report}"
    assert "Machine: " in report and "python -m bench --profile smoke" in report
    assert "Many trials at once" in report, report
    assert "error:" not in report, report
    # Every target has a verdict, none is left unmeasured, except the end-to-end
    # comparisons, which need a contender this run leaves out.
    unmeasured = [
        line for line in report.splitlines()
        if "not measured" in line and "no other contender ran" not in line
    ]
    assert not unmeasured, report
    # The saved raw results give back the same report.
    rendered = tmp_path / "RENDERED.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--render", str(tmp_path / "results.json"),
         "--output", str(rendered)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert rendered.read_text(encoding="utf-8") == report


@pytest.mark.skipif(not SYNE_PYTHON.exists(), reason="bench/.venv-syne is not set up")
def test_syne_tune_drivers_run(tmp_path: Path) -> None:
    report = _run_bench(
        tmp_path, "--contenders", "syne", "--syne-python", str(SYNE_PYTHON),
        "--only", "throughput,ingestion,pause",
    )
    assert "syne-tune 0.16" in report
    assert "error:" not in report, report

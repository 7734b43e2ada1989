"""A small chaos soak: random starts, pauses, resumes, stops, copies and crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run_chaos


@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_soak_keeps_every_invariant(tmp_path: Path, seed: int) -> None:
    report = run_chaos(tmp_path / "exp", trials=150, workers=4, seed=seed)
    assert not report.violations, "\n".join(report.violations[:20])
    assert report.actions.get("pause", 0) > 5 and report.actions.get("resume", 0) > 5
    assert report.delivered > 0

"""Integration tests drive the real tuner libraries; a module skips when its library is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: drives a real tuner library (Syne Tune, Optuna, SMAC, Ax); "
        "needs the matching extra installed",
    )

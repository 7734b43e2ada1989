"""Other projects' own tests, run against our adapters; each file names the tag it comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFORMANCE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: drives a real tuner library (Syne Tune, Optuna, SMAC, Ax); "
        "needs the matching extra installed",
    )

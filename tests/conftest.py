"""Shared fixtures: every test leaves no process behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import format_logs

REPO = Path(__file__).resolve().parent.parent


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture(autouse=True)
def no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a child process (or zombie) behind, after reaping it."""
    before = {p.pid for p in _descendants()}
    yield
    deadline = time.monotonic() + 10.0
    leftovers: list[psutil.Process] = []
    while time.monotonic() < deadline:
        leftovers = [p for p in _descendants() if p.pid not in before]
        # A backend that was not closed still owns a supervisor; it ends when
        # its pipe is garbage-collected, so give the collector a chance.
        if not leftovers:
            break
        import gc

        gc.collect()
        time.sleep(0.05)
    if leftovers:
        described = []
        for proc in leftovers:
            try:
                described.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())[:200]}")
                proc.kill()
            except psutil.Error:
                pass
        for proc in leftovers:
            try:
                proc.wait(5)
            except psutil.Error:
                pass
        pytest.fail("test left processes behind:\n" + "\n".join(described), pytrace=False)


@pytest.fixture
def experiment_dir(tmp_path: Path) -> Path:
    return tmp_path / "experiment"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep default experiment folders out of the checkout."""
    monkeypatch.chdir(tmp_path)
    os.environ.pop("LOCALBACKEND_RESULTS_FILE", None)


__all__ = ["REPO", "format_logs"]

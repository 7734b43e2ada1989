"""Start a driver process, kill it, and read back what it was delivered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import wait_for

DRIVERS = Path(__file__).resolve().parent / "drivers"
STEPS = DRIVERS / "steps.py"


@dataclass
class CrashedDriver:
    experiment_dir: Path
    record: Path
    process: subprocess.Popen[bytes]
    pickle_path: Path

    def delivered(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]


def start_driver(tmp_path: Path, *extra: str, steps: int = 40, step_seconds: float = 0.02,
                 trials: int = 2, deliver_at_least: int = 5) -> CrashedDriver:
    experiment = tmp_path / "exp"
    record = tmp_path / "delivered.jsonl"
    ready = tmp_path / "ready"
    pickle_path = tmp_path / "backend.pickle"
    process = subprocess.Popen(
        [sys.executable, str(DRIVERS / "driver.py"), "--experiment-dir", str(experiment),
         "--entry", str(STEPS), "--record", str(record), "--ready", str(ready),
         "--steps", str(steps), "--step-seconds", str(step_seconds), "--trials", str(trials),
         "--deliver-at-least", str(deliver_at_least), "--pickle", str(pickle_path), *extra],
        stderr=subprocess.PIPE,
    )

    def failed() -> str:
        if process.poll() is not None:
            assert process.stderr is not None
            return process.stderr.read().decode(errors="replace")
        return "driver still running"

    wait_for(lambda: ready.exists() or process.poll() is not None, timeout=60,
             what="the driver to get ready", on_fail=failed)
    if not ready.exists():
        raise AssertionError("driver exited early:\n" + failed())
    return CrashedDriver(experiment, record, process, pickle_path)


def kill_driver(driver: CrashedDriver, signum: int = signal.SIGKILL) -> None:
    driver.process.send_signal(signum)
    driver.process.wait(timeout=30)
    if driver.process.stderr is not None:
        driver.process.stderr.close()


def trial_pids(experiment: Path) -> list[int]:
    """PIDs of the trial processes (leaders and recorded descendants) of an experiment."""
    pids: list[int] = []
    for folder in experiment.iterdir():
        if not folder.is_dir() or not folder.name.isdigit():
            continue
        results = folder / "results.jsonl"
        if results.exists():
            for line in results.read_text().splitlines():
                try:
                    pids.append(int(json.loads(line)["pid"]))
                except (ValueError, KeyError):
                    pass
        descendants = folder / "descendants.txt"
        if descendants.exists():
            pids.extend(int(p) for p in descendants.read_text().split())
    return sorted(set(pids))


def alive(pids: list[int]) -> list[int]:
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.Error:
            pass
    return living


def written_results(experiment: Path, trial_id: int) -> list[dict[str, Any]]:
    path = experiment / str(trial_id) / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until every pid is gone; fails after ``timeout``."""
    start = time.monotonic()
    wait_for(lambda: not alive(pids), timeout=timeout,
             what=f"processes {pids} to end", on_fail=lambda: f"alive: {alive(pids)}")
    return time.monotonic() - start


def kill_pids(pids: list[int]) -> None:
    for pid in alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

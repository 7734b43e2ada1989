"""Drivers for 6. idle cost: many trials that sleep, and a driver that waits.

Each contender starts ``trials`` copies of ``trials/sleeper.py`` (sleep
``seconds``, report, exit) and then waits for them in its natural way: the
floor in a blocking ``waitpid``; localbackend in ``wait()`` and
``fetch_status_results``; Syne Tune by sleeping ``syne_poll`` between fetches.

A sampler thread reads the driver's CPU (``RUSAGE_SELF``, all threads) at the
edges of ``window``-second windows, from ``settle`` seconds after the last
start until ``settle`` seconds before the trials wake up, so neither the
launch nor the exits are counted. At the first and last edge it also reads
the CPU of the driver's helper processes (everything under the driver that is
not a trial: localbackend's supervisor and keepers), with psutil where the
driver has it.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any, Callable

from bench.drivers._common import driver_cpu, make_localbackend, make_syne, trial_script

SETTLE_S = 1.5
FINISHED = ("Completed", "Failed", "Stopped")


def _helpers_cpu() -> float | None:
    """CPU seconds of this process's descendants that are not trials, or None."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if any("sleeper.py" in part for part in child.cmdline()):
                continue
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


class Sampler(threading.Thread):
    """Reads the driver's CPU at window edges, off the main thread."""

    def __init__(self, first_edge: float, last_edge: float, window: float) -> None:
        super().__init__(daemon=True)
        self.edges: list[float] = []
        edge = first_edge
        while edge + window <= last_edge + 1e-9:
            self.edges.append(edge)
            edge += window
        self.edges.append(edge)
        self.cpu: list[float] = []
        self.times: list[float] = []
        self.helpers: list[float | None] = []

    def run(self) -> None:
        last = len(self.edges) - 1
        for index, edge in enumerate(self.edges):
            pause = edge - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if index == 0:  # helpers first, so psutil's cost stays outside the windows
                self.helpers.append(_helpers_cpu())
            self.cpu.append(driver_cpu())
            self.times.append(time.monotonic())
            if index == last:
                self.helpers.append(_helpers_cpu())

    def report(self) -> dict[str, Any]:
        shares = [
            (self.cpu[i + 1] - self.cpu[i]) / (self.times[i + 1] - self.times[i])
            for i in range(len(self.cpu) - 1)
        ]
        helpers = None
        if len(self.helpers) == 2 and None not in self.helpers:
            span = self.times[-1] - self.times[0]
            first, last = self.helpers
            assert first is not None and last is not None
            helpers = (last - first) / span if span > 0 else None
        span = self.times[-1] - self.times[0] if len(self.times) > 1 else 0.0
        total = (self.cpu[-1] - self.cpu[0]) / span if span > 0 else None
        return {"window_cpu_share": shares, "cpu_share": total, "helpers_cpu_share": helpers,
                "measured_s": span}


def _sampled(
    params: dict[str, Any], start: Callable[[], None], wait: Callable[[], None]
) -> dict[str, Any]:
    seconds, window = float(params["seconds"]), float(params["window"])
    launched = time.monotonic()
    start()
    settle = min(SETTLE_S, seconds / 4)
    first = time.monotonic() + settle
    last = launched + seconds - settle
    if last - first < window:
        raise ValueError(f"{seconds}s of sleep leaves no {window}s window; raise --idle-seconds")
    sampler = Sampler(first, last, window)
    sampler.start()
    wait()
    sampler.join()
    return {**sampler.report(), "launch_s": first - settle - launched}


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    argv = [params["trial_python"], trial_script("sleeper"), "--seconds", str(params["seconds"])]
    running: dict[int, subprocess.Popen[bytes]] = {}

    def start() -> None:
        for _ in range(int(params["trials"])):
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            running[proc.pid] = proc

    def wait() -> None:
        while running:
            pid, status = os.waitpid(-1, 0)
            running.pop(pid).returncode = os.waitstatus_to_exitcode(status)

    return _sampled(params, start, wait)


def _backend_run(backend: Any, params: dict[str, Any], sleep: Callable[[], None]) -> dict[str, Any]:
    running: set[int] = set()

    def start() -> None:
        for _ in range(int(params["trials"])):
            running.add(backend.start_trial({"seconds": params["seconds"]}).trial_id)

    def wait() -> None:
        while running:
            sleep()
            statuses, _ = backend.fetch_status_results(sorted(running))
            running.difference_update(t for t, (_, s) in statuses.items() if s in FINISHED)

    return _sampled(params, start, wait)


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_localbackend(params, "sleeper")
    try:
        return _backend_run(backend, params, backend.wait)
    finally:
        backend.close()


def run_syne(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_syne(params, "sleeper")
    poll = float(params["poll"])
    try:
        return _backend_run(backend, params, lambda: time.sleep(poll))
    finally:
        for proc in backend.trial_subprocess.values():
            proc.wait()

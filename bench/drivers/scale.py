"""Drivers for 7. scale: thousands of short trials in one experiment.

Like the throughput scenario (``trials/trivial.py``, at most ``concurrency``
running), but every ``block`` finished trials the driver records the wall
time and its own CPU for the block, its current RSS (from
``/proc/self/statm``), and the median time ``start_trial`` took in the
block. ``warmup`` more trials run first and belong to no block: they carry
one-off costs (first imports, localbackend's supervisor start) that would
make the first block look slow and hide any growth. The report compares the
first block with the last.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable

from bench.drivers._common import (
    current_rss,
    driver_cpu,
    make_localbackend,
    make_syne,
    scratch,
    trial_script,
)

FINISHED = ("Completed", "Failed", "Stopped")


class Blocks:
    """Per-block figures, closed every ``size`` finished trials."""

    def __init__(self, size: int, warmup: int) -> None:
        self.size = size
        self.finished = -warmup
        self.starts: list[float] = []
        self.rows: list[dict[str, float]] = []
        self._wall, self._cpu = time.perf_counter(), driver_cpu()

    def started(self, seconds: float) -> None:
        self.starts.append(seconds)

    def done(self, count: int = 1) -> None:
        for _ in range(count):
            self.finished += 1
            if self.finished <= 0:
                if self.finished == 0:  # warm-up over: the first block starts now
                    self._wall, self._cpu, self.starts = time.perf_counter(), driver_cpu(), []
                continue
            if self.finished % self.size == 0:
                wall, cpu = time.perf_counter(), driver_cpu()
                starts = sorted(self.starts)
                self.rows.append({
                    "wall_s": wall - self._wall,
                    "cpu_s": cpu - self._cpu,
                    "rss_bytes": current_rss(),
                    "start_call_s": starts[len(starts) // 2] if starts else 0.0,
                })
                self._wall, self._cpu, self.starts = wall, cpu, []


def _timed_start(start: Callable[[int], int], index: int, blocks: Blocks) -> int:
    began = time.perf_counter()
    trial_id = start(index)
    blocks.started(time.perf_counter() - began)
    return trial_id


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    trials, concurrency = int(params["trials"]) + int(params["warmup"]), int(params["concurrency"])
    argv = [params["trial_python"], trial_script("trivial")]
    blocks = Blocks(int(params["block"]), int(params["warmup"]))
    running: dict[int, subprocess.Popen[bytes]] = {}

    def start(index: int) -> int:
        folder = scratch(params, "floor", str(index))
        os.makedirs(folder)
        with open(os.path.join(folder, "stdout.log"), "wb") as out, open(
            os.path.join(folder, "stderr.log"), "wb"
        ) as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err)
        running[proc.pid] = proc
        return proc.pid

    started = 0
    while started < trials or running:
        while len(running) < concurrency and started < trials:
            _timed_start(start, started, blocks)
            started += 1
        pid, status = os.waitpid(-1, 0)
        running.pop(pid).returncode = os.waitstatus_to_exitcode(status)
        blocks.done()
    return {"blocks": blocks.rows}


def _backend_run(backend: Any, params: dict[str, Any], sleep: Callable[[], Any]) -> dict[str, Any]:
    trials, concurrency = int(params["trials"]) + int(params["warmup"]), int(params["concurrency"])
    blocks = Blocks(int(params["block"]), int(params["warmup"]))
    running: set[int] = set()
    started = failed = 0

    def start(index: int) -> int:
        return int(backend.start_trial({"index": index}).trial_id)

    while started < trials or running:
        while len(running) < concurrency and started < trials:
            running.add(_timed_start(start, started, blocks))
            started += 1
        sleep()
        statuses, _ = backend.fetch_status_results(sorted(running))
        ended = [t for t, (_, status) in statuses.items() if status in FINISHED]
        failed += sum(statuses[t][1] != "Completed" for t in ended)
        running.difference_update(ended)
        blocks.done(len(ended))
    return {"blocks": blocks.rows, "failed": failed}


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_localbackend(params, "trivial")
    try:
        return _backend_run(backend, params, backend.wait)
    finally:
        backend.close()


def run_syne(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_syne(params, "trivial")
    poll = float(params["poll"])
    return _backend_run(backend, params, lambda: time.sleep(poll))

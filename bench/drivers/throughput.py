"""Drivers for 1. throughput and 4. memory: trivial trials, a few at a time.

Every contender runs ``trials/trivial.py`` (start, print one result, exit)
``trials`` times with at most ``concurrency`` running, and collects every
result:

* floor: ``subprocess.Popen`` with stdout/stderr to a file per trial, then a
  blocking ``os.waitpid(-1, 0)`` for the next exit. It reads no result.
* localbackend: ``start_trial``, then ``wait()`` and ``fetch_status_results``
  on the running trials; results come from the trials' stdout.
* Syne Tune: ``start_trial``, then ``time.sleep(poll)`` and
  ``fetch_status_results``, as its ``Tuner`` loop does.

Per trial, each driver also notes (with ``time.time()``, the clock the trial
stamps its result with) when it asked for the start and when it learned
that the trial had ended; with the trial's own timestamp this splits the
wall time into launch latency (start to the trial's first output) and exit
latency (the trial's output to the driver knowing it ended).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.drivers._common import TUNE_METRIC, Measured, make_syne, scratch, trial_script

FINISHED = ("Completed", "Failed", "Stopped")
# Limits no trivial trial reaches, so that only the keepers' watch costs.
LIMITS: dict[str, Any] = {
    "time_limit": 3600, "memory_limit": "4GiB", "heartbeat_timeout": 3600, "max_failures": 1,
}


def _latencies(
    started: dict[int, float], reported: dict[int, float], ended: dict[int, float]
) -> dict[str, list[float]]:
    """Per trial: start -> trial's timestamp, and trial's timestamp -> end seen."""
    ids = [t for t in started if t in reported and t in ended]
    return {
        "launch_latency_s": [round(reported[t] - started[t], 6) for t in ids],
        "exit_latency_s": [round(ended[t] - reported[t], 6) for t in ids],
    }


def _timestamp(stdout: str) -> float | None:
    with open(stdout, "rb") as log:
        for line in log:
            if line.startswith(TUNE_METRIC):
                return float(json.loads(line[len(TUNE_METRIC):])["st_worker_timestamp"])
    return None


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    trials, concurrency = int(params["trials"]), int(params["concurrency"])
    argv = [params["trial_python"], trial_script("trivial")]
    failed = 0
    start_times: dict[int, float] = {}
    end_times: dict[int, float] = {}
    with Measured() as meter:
        running: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
        started = 0
        while started < trials or running:
            while len(running) < concurrency and started < trials:
                start_times[started] = time.time()
                folder = scratch(params, "floor", str(started))
                os.makedirs(folder)
                with open(os.path.join(folder, "stdout.log"), "wb") as out, open(
                    os.path.join(folder, "stderr.log"), "wb"
                ) as err:
                    proc = subprocess.Popen(argv, stdout=out, stderr=err)
                running[proc.pid] = (started, proc)
                started += 1
            pid, status = os.waitpid(-1, 0)
            index, proc = running.pop(pid)
            end_times[index] = time.time()
            # Tell Popen the child is reaped, so that it never waits for it again.
            proc.returncode = os.waitstatus_to_exitcode(status)
            failed += status != 0
    reported = {}
    for index in start_times:
        stamp = _timestamp(scratch(params, "floor", str(index), "stdout.log"))
        if stamp is not None:
            reported[index] = stamp
    return {**meter.as_dict(), "trials": trials, "failed": failed, "results": None,
            **_latencies(start_times, reported, end_times)}


def _drive_trial_backend(
    backend: Any, params: dict[str, Any], sleep: Callable[[], object]
) -> dict[str, Any]:
    """Run the trivial trials through a TrialBackend-shaped object; ``sleep`` waits a round."""
    trials, concurrency = int(params["trials"]), int(params["concurrency"])
    results = failed = 0
    start_times: dict[int, float] = {}
    reported: dict[int, float] = {}
    end_times: dict[int, float] = {}
    running: set[int] = set()
    started = 0
    while started < trials or running:
        while len(running) < concurrency and started < trials:
            now = time.time()
            trial_id = backend.start_trial({"index": started}).trial_id
            start_times[trial_id] = now
            running.add(trial_id)
            started += 1
        sleep()
        statuses, new = backend.fetch_status_results(sorted(running))
        now = time.time()
        results += len(new)
        for trial_id, result in new:
            reported.setdefault(trial_id, float(result["st_worker_timestamp"]))
        for trial_id, (_, status) in statuses.items():
            if status in FINISHED:
                end_times[trial_id] = now
                running.discard(trial_id)
                failed += status != "Completed"
    return {"trials": trials, "failed": failed, "results": results,
            **_latencies(start_times, reported, end_times)}


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    from localbackend import LocalBackend

    with Measured() as meter:
        # With "limits", every keeper watches its run: the cost of the watch.
        limits = LIMITS if params.get("limits") else {}
        # With "preload", every trial starts warm, forked from the zygote.
        warm = {"preload": params["preload"]} if params.get("preload") else {}
        backend = LocalBackend(
            trial_script("trivial"),
            experiment_dir=scratch(params, "experiment"),
            binary=[params["trial_python"]],
            **limits,
            **warm,
        )
        measured = _drive_trial_backend(backend, params, backend.wait)
        backend.close()
    return {**meter.as_dict(), **measured}


def run_syne(params: dict[str, Any]) -> dict[str, Any]:
    poll = float(params["poll"])
    with Measured() as meter:
        backend = make_syne(params, "trivial")
        measured = _drive_trial_backend(backend, params, lambda: time.sleep(poll))
    return {**meter.as_dict(), **measured}

"""Drivers for 2. ingestion: many results from one trial.

Part ``burst``, for each size N: a trial (``trials/emit.py --hold 1``) writes N
results as fast as it can, marks that it is done and stays alive. The driver
times the one ``fetch_status_results`` that ingests all N (the burst rate),
then times ``idle_calls`` more calls that find nothing new (the cost of a
poll once N results have been read) and keeps their median.

Part ``stream``: a trial writes ``count`` results at ``rate`` per second and
exits; the driver sleeps ``poll`` seconds between fetches until the trial is
finished, and reports its own CPU and the time spent inside fetch.

Part ``concurrent``: ``trials`` trials each write ``count`` results at
``rate`` per second, all at once, and exit. localbackend's driver loops on
``wait()`` and one ``fetch_status_results`` of every trial, as a tuner does,
so it takes each result as it is written; the floor polls every trial's
stdout every ``poll`` seconds. Both report their CPU per result.

What each reads: the floor keeps a byte offset into the trial's stdout file
and parses new ``[tune-metric]:`` lines with orjson; localbackend reads its
results file (``via=file``) or the trial's stdout (``via=stdout``); Syne Tune
reads the trial's stdout.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from bench.drivers._common import (
    TUNE_METRIC,
    JsonlTail,
    Measured,
    fast_loads,
    make_localbackend,
    make_syne,
    scratch,
    trial_script,
    wait_until,
)

FINISHED = ("Completed", "Failed", "Stopped")
# Syne Tune re-reads everything on each call; stop timing its idle calls
# after this long (at least 3 calls are always made).
SYNE_IDLE_BUDGET_S = 1.5


def _config(n: int, rate: float, via: str, done: str, hold: bool) -> dict[str, Any]:
    return {"count": n, "rate": rate, "via": via, "done": done, "hold": int(hold)}


def _wait_for_file(path: str, what: str) -> None:
    wait_until(lambda: os.path.exists(path) or None, timeout=300, what=what)


def _median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def _time_calls(call: Any, count: int, budget: float | None = None) -> list[float]:
    samples: list[float] = []
    deadline = time.perf_counter() + budget if budget is not None else None
    for _ in range(count):
        start = time.perf_counter()
        new = call()
        samples.append(time.perf_counter() - start)
        if new:
            raise AssertionError(f"a call that should find nothing new found {len(new)} result(s)")
        if deadline is not None and len(samples) >= 3 and time.perf_counter() > deadline:
            break
    return samples


def _backend_burst(backend: Any, params: dict[str, Any], via: str, syne: bool) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    for n in params["sizes"]:
        done = scratch(params, f"done-{n}")
        trial_id = backend.start_trial(_config(n, 0, via, done, hold=True)).trial_id
        _wait_for_file(done, f"{n} results written")
        start = time.perf_counter()
        _, new = backend.fetch_status_results([trial_id])
        burst = time.perf_counter() - start
        got, fetches = len(new), 1
        deadline = time.monotonic() + 60
        while got < n and time.monotonic() < deadline:
            fetches += 1
            _, new = backend.fetch_status_results([trial_id])
            got += len(new)
        idle = _time_calls(
            lambda tid=trial_id: backend.fetch_status_results([tid])[1],
            int(params["idle_calls"]),
            budget=SYNE_IDLE_BUDGET_S if syne else None,
        )
        backend.stop_trial(trial_id)
        sizes[str(n)] = {
            "burst_s": burst, "burst_results": got, "burst_fetches": fetches,
            "expected": n, "idle_fetch_s": _median(idle), "idle_calls": len(idle),
        }
    return {"sizes": sizes}


def _backend_stream(backend: Any, params: dict[str, Any], via: str) -> dict[str, Any]:
    count, poll = int(params["count"]), float(params["poll"])
    inside = 0.0
    got = polls = 0
    with Measured() as meter:
        config = _config(count, float(params["rate"]), via, "", False)
        trial_id = backend.start_trial(config).trial_id
        while True:
            time.sleep(poll)
            start = time.perf_counter()
            statuses, new = backend.fetch_status_results([trial_id])
            inside += time.perf_counter() - start
            got += len(new)
            polls += 1
            if statuses[trial_id][1] in FINISHED:
                break
    return {**meter.as_dict(), "fetch_s": inside, "results": got, "expected": count,
            "polls": polls, "status": statuses[trial_id][1]}


def _backend_concurrent(backend: Any, params: dict[str, Any]) -> dict[str, Any]:
    trials, count = int(params["trials"]), int(params["count"])
    got = wakes = 0
    with Measured() as meter:
        config = _config(count, float(params["rate"]), "stdout", "", False)
        ids = [backend.start_trial(config).trial_id for _ in range(trials)]
        while True:
            backend.wait(timeout=1.0)
            wakes += 1
            statuses, new = backend.fetch_status_results(ids)
            got += len(new)
            if all(status in FINISHED for _, status in statuses.values()):
                break
    return {**meter.as_dict(), "results": got, "expected": trials * count, "wakes": wakes}


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_localbackend(params, "emit", grace_period=1.0)
    try:
        if params["part"] == "concurrent":
            return _backend_concurrent(backend, params)
        if params["part"] == "stream":
            return _backend_stream(backend, params, params["via"])
        return _backend_burst(backend, params, params["via"], syne=False)
    finally:
        backend.close()


def run_syne(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_syne(params, "emit")
    try:
        if params["part"] == "stream":
            return _backend_stream(backend, params, "stdout")
        return _backend_burst(backend, params, "stdout", syne=True)
    finally:
        backend.stop_all()
        for proc in backend.trial_subprocess.values():
            proc.wait()


def _spawn(params: dict[str, Any], name: str, config: dict[str, Any]) -> tuple[Any, str]:
    folder = scratch(params, name)
    os.makedirs(folder)
    stdout = os.path.join(folder, "stdout.log")
    argv = [params["trial_python"], trial_script("emit")]
    for key, value in config.items():
        argv += [f"--{key}", str(value)]
    with open(stdout, "wb") as out, open(os.path.join(folder, "stderr.log"), "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
    return proc, stdout


def _floor_concurrent(params: dict[str, Any]) -> dict[str, Any]:
    loads = fast_loads()
    trials, count, poll = int(params["trials"]), int(params["count"]), float(params["poll"])
    got = wakes = 0
    with Measured() as meter:
        config = _config(count, params["rate"], "stdout", "", False)
        running = [_spawn(params, f"concurrent-{i}", config) for i in range(trials)]
        readers = [(proc, JsonlTail(stdout, TUNE_METRIC, loads)) for proc, stdout in running]
        while readers:
            time.sleep(poll)
            wakes += 1
            left = []
            for proc, reader in readers:
                exited = proc.poll() is not None
                got += len(reader.read())
                if not exited:
                    left.append((proc, reader))
            readers = left
    return {**meter.as_dict(), "results": got, "expected": trials * count, "wakes": wakes}


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    loads = fast_loads()
    if params["part"] == "concurrent":
        return _floor_concurrent(params)
    if params["part"] == "stream":
        count, poll = int(params["count"]), float(params["poll"])
        inside = 0.0
        got = polls = 0
        with Measured() as meter:
            config = _config(count, params["rate"], "stdout", "", False)
            proc, stdout = _spawn(params, "stream", config)
            reader = JsonlTail(stdout, TUNE_METRIC, loads)
            while True:
                time.sleep(poll)
                start = time.perf_counter()
                exited = proc.poll() is not None
                got += len(reader.read())
                inside += time.perf_counter() - start
                polls += 1
                if exited:
                    break
        return {**meter.as_dict(), "fetch_s": inside, "results": got, "expected": count,
                "polls": polls, "status": "Completed" if proc.returncode == 0 else "Failed"}

    sizes: dict[str, Any] = {}
    for n in params["sizes"]:
        done = scratch(params, f"done-{n}")
        proc, stdout = _spawn(params, f"trial-{n}", _config(n, 0, "stdout", done, hold=True))
        try:
            _wait_for_file(done, f"{n} results written")
            reader = JsonlTail(stdout, TUNE_METRIC, loads)
            start = time.perf_counter()
            got = len(reader.read())
            burst = time.perf_counter() - start
            idle = _time_calls(reader.read, int(params["idle_calls"]))
        finally:
            proc.terminate()
            proc.wait()
        sizes[str(n)] = {"burst_s": burst, "burst_results": got, "burst_fetches": 1,
                         "expected": n, "idle_fetch_s": _median(idle), "idle_calls": len(idle)}
    return {"sizes": sizes}

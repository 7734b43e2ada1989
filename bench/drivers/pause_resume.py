"""Drivers for 3. pause and resume.

The trial (``trials/checkpointer.py``) replaces its checkpoint every
``interval`` seconds and reports each step; on start it loads the checkpoint
and reports at once, with its pid. One driver runs ``cycles`` pause/resume
cycles of a cooperative trial, then ``ignoring_cycles`` of a trial that
ignores SIGTERM. Per cycle it records:

* ``pause``: how long ``pause_trial`` takes to return;
* ``gone``: from the pause call until the trial's process has exited (read
  from ``/proc/<pid>/stat`` every 0.5 ms: gone, or a zombie);
* ``free``: until ``busy_trial_ids()`` no longer lists the trial, i.e. a
  tuner may use the slot again;
* ``resume``: from ``resume_trial`` until the driver holds the first result
  of the new process (localbackend waits with ``wait()``; Syne Tune polls
  ``fetch_status_results`` every ``syne_poll`` seconds). It is split, with
  the result's own ``st_worker_timestamp``, into ``resume_output`` (until the
  new process wrote it) and ``resume_notice`` (until the driver held it).

The floor starts the same script with ``Popen(stdout=PIPE)`` and reads its
first line (spawn to first output); it pauses with SIGTERM, polls for the exit
like the others, and sends SIGKILL after the same grace period.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

from bench.drivers._common import (
    make_localbackend,
    make_syne,
    process_exited,
    scratch,
    trial_script,
    wait_until,
)

POLL_S = 0.0005
RESULTS_BEFORE_PAUSE = 3
TIMEOUT_S = 60.0


def _variants(params: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [("cooperative", 0, int(params["cycles"])),
            ("ignoring", 1, int(params["ignoring_cycles"]))]


def _empty() -> dict[str, list[float]]:
    return {"pause": [], "gone": [], "free": [], "resume": [], "resume_call": [],
            "resume_output": [], "resume_notice": []}


def _until_gone(pid: int, trial_id: int, backend: Any, start: float) -> tuple[float, float]:
    """Seconds from ``start`` until the process exited and until the slot is free."""
    gone = free = None
    deadline = time.monotonic() + TIMEOUT_S
    while gone is None or free is None:
        now = time.perf_counter() - start
        if gone is None and process_exited(pid):
            gone = now
        if free is None and all(t != trial_id for t, _ in backend.busy_trial_ids()):
            free = now
        if time.monotonic() > deadline:
            raise TimeoutError(f"trial {trial_id} (pid {pid}) still busy after {TIMEOUT_S}s")
        time.sleep(POLL_S)
    return gone, free


def _until_not_busy(backend: Any, trial_id: int) -> None:
    wait_until(lambda: all(t != trial_id for t, _ in backend.busy_trial_ids()),
               timeout=TIMEOUT_S, what=f"trial {trial_id} to end")


def _backend_cycles(backend: Any, params: dict[str, Any], syne: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    syne_poll = float(params["syne_poll"])

    def results_from_new_process(
        trial_id: int, old_pid: int, need: int
    ) -> tuple[float, float, float, int]:
        """Block until ``need`` results of a process other than ``old_pid`` arrived.

        Returns when the first arrived (``perf_counter`` and ``time.time``),
        the trial's timestamp in it, and the new pid.
        """
        first_at, first_wall, stamp, pid, seen = 0.0, 0.0, 0.0, 0, 0
        deadline = time.monotonic() + TIMEOUT_S
        while seen < need:
            if syne:
                time.sleep(syne_poll)
            else:
                backend.wait(timeout=1.0)
            _, new = backend.fetch_status_results([trial_id])
            for _, result in new:
                if result.get("pid") not in (None, old_pid):
                    if not seen:
                        first_at, first_wall = time.perf_counter(), time.time()
                        pid, stamp = int(result["pid"]), float(result["st_worker_timestamp"])
                    seen += 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"trial {trial_id}: no result from a new process")
        return first_at, first_wall, stamp, pid

    for name, ignore, cycles in _variants(params):
        samples = _empty()
        config = {"interval": params["interval"], "ignore_sigterm": ignore}
        trial_id = backend.start_trial(config).trial_id
        *_, pid = results_from_new_process(trial_id, -1, RESULTS_BEFORE_PAUSE)
        for _ in range(cycles):
            start = time.perf_counter()
            backend.pause_trial(trial_id)
            samples["pause"].append(time.perf_counter() - start)
            gone, free = _until_gone(pid, trial_id, backend, start)
            samples["gone"].append(gone)
            samples["free"].append(free)
            start, start_wall = time.perf_counter(), time.time()
            backend.resume_trial(trial_id)
            samples["resume_call"].append(time.perf_counter() - start)
            first_at, first_wall, stamp, new_pid = results_from_new_process(
                trial_id, pid, RESULTS_BEFORE_PAUSE
            )
            samples["resume"].append(first_at - start)
            samples["resume_output"].append(stamp - start_wall)
            samples["resume_notice"].append(first_wall - stamp)
            pid = new_pid
        backend.stop_trial(trial_id)
        _until_not_busy(backend, trial_id)
        out[name] = samples
    return out


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_localbackend(params, "checkpointer", grace_period=float(params["grace"]))
    try:
        return _backend_cycles(backend, params, syne=False)
    finally:
        backend.close()


def run_syne(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_syne(params, "checkpointer")
    try:
        return _backend_cycles(backend, params, syne=True)
    finally:
        backend.stop_all()
        for proc in backend.trial_subprocess.values():
            proc.wait()


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    grace = float(params["grace"])
    out: dict[str, Any] = {}
    for name, ignore, cycles in _variants(params):
        samples = _empty()
        folder = scratch(params, name)
        argv = [params["trial_python"], trial_script("checkpointer"),
                "--interval", str(params["interval"]), "--ignore_sigterm", str(ignore),
                "--st_checkpoint_dir", os.path.join(folder, "checkpoints")]
        for cycle in range(cycles + 1):
            start, start_wall = time.perf_counter(), time.time()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            first_at, first_wall = time.perf_counter(), time.time()
            if cycle:  # the first start has no checkpoint to load, as a resume has
                stamp = float(json.loads(line.split(b": ", 1)[1])["st_worker_timestamp"])
                samples["resume"].append(first_at - start)
                samples["resume_output"].append(stamp - start_wall)
                samples["resume_notice"].append(first_wall - stamp)
            for _ in range(RESULTS_BEFORE_PAUSE - 1):
                proc.stdout.readline()
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            samples["pause"].append(time.perf_counter() - start)
            # Polled like the backends' trials, rather than Popen.wait(timeout),
            # whose sleeps back off up to 50 ms.
            deadline = start + grace
            while not process_exited(proc.pid):
                if time.perf_counter() > deadline:
                    proc.kill()
                    deadline = float("inf")
                time.sleep(POLL_S)
            gone = time.perf_counter() - start
            proc.wait()
            samples["gone"].append(gone)
            samples["free"].append(gone)
            proc.stdout.close()
        out[name] = samples
    return out

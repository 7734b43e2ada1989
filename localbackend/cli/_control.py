"""Requests to a running ``tune`` from other processes, through files.

``localbackend stop`` writes ``control/stop-<uuid>.json`` atomically. The
driver notices it on its next wake (at most half a second later), acts, and
writes its answer to ``control/done/stop-<uuid>.json`` before removing the
request. No lock is needed: each request has its own name, and both files
appear whole thanks to ``os.replace``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

from ._common import TunerPaths, atomic_write_json, read_json

_PREFIX = "stop-"
_SUFFIX = ".json"


def write_stop_request(files: TunerPaths, trial_ids: Optional[list[int]]) -> Path:
    """Ask the driver to stop these trials, or the whole run if None; returns the answer path."""
    files.control.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{_PREFIX}{uuid.uuid4().hex}{_SUFFIX}"
    atomic_write_json(
        files.control / name, {"trials": trial_ids, "time": time.time(), "pid": os.getpid()}
    )
    return files.control_done / name


def wait_for_answer(answer: Path, timeout: float, still_running: Callable[[], bool]) -> Any:
    """The driver's answer, or None if it did not come in time or the driver ended."""
    deadline = time.monotonic() + timeout
    while True:
        found = read_json(answer)
        if found is not None:
            return found
        if time.monotonic() >= deadline or not still_running():
            return read_json(answer)
        time.sleep(0.1)


def handle_requests(
    files: TunerPaths, on_stop: Callable[[Optional[list[int]]], dict[str, Any]]
) -> Iterator[Path]:
    """Carry out each pending request with ``on_stop`` and answer it; yields the answers."""
    try:
        entries = sorted(
            entry.name
            for entry in os.scandir(files.control)
            if entry.name.startswith(_PREFIX) and entry.name.endswith(_SUFFIX)
        )
    except FileNotFoundError:
        return
    for name in entries:
        request_path = files.control / name
        request = read_json(request_path)
        answer: dict[str, Any]
        trials = request.get("trials") if isinstance(request, dict) else None
        if not isinstance(request, dict) or (
            trials is not None
            and (not isinstance(trials, list) or not all(isinstance(t, int) for t in trials))
        ):
            answer = {"error": f"not a valid request: {request!r}"}
        else:
            answer = on_stop(trials)
        answer["handled"] = time.time()
        files.control_done.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_json(files.control_done / name, answer)
        try:
            os.unlink(request_path)
        except FileNotFoundError:
            pass
        yield files.control_done / name

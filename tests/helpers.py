"""Helpers for tests that drive real trial processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def format_logs(backend: Any, trial_ids: list[int] | None = None) -> str:
    """Stdout and stderr of trials, for failure messages."""
    ids = trial_ids if trial_ids is not None else list(range(backend.new_trial_id()))
    parts = []
    for trial_id in ids:
        try:
            out = "".join(backend.stdout(trial_id))[-3000:]
            err = "".join(backend.stderr(trial_id))[-3000:]
        except Exception as error:  # the trial may not exist
            out, err = "", f"<{error}>"
        parts.append(f"--- trial {trial_id} stdout ---\n{out}\n--- trial {trial_id} stderr ---\n{err}")
    return "\n".join(parts)


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float = 30.0,
    what: str = "condition",
    on_fail: Callable[[], str] | None = None,
    interval: float = 0.01,
) -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = on_fail() if on_fail is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")
        time.sleep(interval)


def drain(backend: Any, trial_ids: list[int], *, timeout: float = 60.0) -> tuple[dict[int, Any], list[tuple[int, dict[str, Any]]]]:
    """Fetch until none of ``trial_ids`` is busy; return last statuses and all results."""
    results: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    statuses: dict[int, Any] = {}
    while True:
        backend.wait(timeout=1.0)
        statuses, new = backend.fetch_status_results(trial_ids)
        results.extend(new)
        busy = {t for t, _ in backend.busy_trial_ids()}
        if not busy.intersection(trial_ids):
            statuses, new = backend.fetch_status_results(trial_ids)
            results.extend(new)
            return statuses, results
        if time.monotonic() > deadline:
            raise AssertionError(
                f"trials {trial_ids} still busy after {timeout}s\n" + format_logs(backend, trial_ids)
            )

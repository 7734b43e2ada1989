"""Helpers for tests that drive real trial processes."""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
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
        parts.append(
            f"--- trial {trial_id} stdout ---\n{out}\n--- trial {trial_id} stderr ---\n{err}"
        )
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


def drain(
    backend: Any, trial_ids: list[int], *, timeout: float = 60.0
) -> tuple[dict[int, Any], list[tuple[int, dict[str, Any]]]]:
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
                f"trials {trial_ids} still busy after {timeout}s\n"
                + format_logs(backend, trial_ids)
            )


# -- helpers for the LocalBackend tests ----------------------------------------

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def script(name: str) -> Path:
    """Path of a trial script in tests/scripts."""
    return SCRIPTS / name


def collect(
    backend: Any,
    trial_ids: list[int],
    until: Callable[[dict[int, Any], list[tuple[int, dict[str, Any]]]], bool],
    *,
    timeout: float = 30.0,
) -> tuple[dict[int, Any], list[tuple[int, dict[str, Any]]]]:
    """Fetch (waking on ``wait``) until ``until(statuses, all_results)`` holds."""
    results: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while True:
        statuses, new = backend.fetch_status_results(trial_ids)
        results.extend(new)
        if until(statuses, results):
            return statuses, results
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            shown = {t: s for t, (_, s) in statuses.items()}
            raise AssertionError(
                f"timed out after {timeout}s; statuses {shown}, {len(results)} results, "
                f"last {results[-3:]}\n" + format_logs(backend, trial_ids)
            )
        backend.wait(timeout=min(0.5, remaining))


def until_status(*wanted: str) -> Callable[[dict[int, Any], list[Any]], bool]:
    """An ``until`` for ``collect``: every trial has one of the ``wanted`` statuses."""
    return lambda statuses, _results: all(s in wanted for _, s in statuses.values())


def wait_for_trial_file(backend: Any, trial_id: int, name: str, timeout: float = 30.0) -> Path:
    """Wait until the trial has created ``name`` in its folder; show its logs if not."""
    path: Path = backend.trial_dir(trial_id) / name
    wait_for(
        path.exists, timeout=timeout, what=f"{path}",
        on_fail=lambda: format_logs(backend, [trial_id]),
    )
    return path


def wait_not_busy(backend: Any, trial_ids: list[int], timeout: float = 30.0) -> None:
    """Wait until none of ``trial_ids`` is InProgress or Stopping."""
    wait_for(
        lambda: not {t for t, _ in backend.busy_trial_ids()} & set(trial_ids),
        timeout=timeout, what=f"trials {trial_ids} to leave busy_trial_ids()",
        on_fail=lambda: format_logs(backend, trial_ids),
    )


def status_history(backend: Any, trial_id: int) -> list[dict[str, Any]]:
    """The trial's status history file, one dict per change."""
    path = backend.trial_dir(trial_id) / "status.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def remove_tree_under_writers(path: Path, timeout: float = 30.0) -> None:
    """Delete ``path`` while a running trial's processes may still add files to it.

    A keeper or a trial can create an entry between ``rmtree``'s listing of a
    folder and its ``rmdir``, which then fails with ENOTEMPTY (or finds an
    entry gone); each pass deletes what the one before missed, until the
    folder is gone, and once it is nothing can be created in it.
    """
    deadline = time.monotonic() + timeout
    while path.exists():
        try:
            shutil.rmtree(path)
        except OSError as err:
            gone_or_refilled = err.errno in (errno.ENOTEMPTY, errno.ENOENT)
            if not gone_or_refilled or time.monotonic() > deadline:
                raise

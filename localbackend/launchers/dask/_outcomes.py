"""What a run's Dask task said, as the typed run events of the ``Launcher`` interface.

A task publishes its run's start as a Dask event and returns the
supervisor's last event for the run, with the worker's address; a task
whose worker died fails with ``KilledWorker`` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from .._base import RunEvent, RunExited, RunHandle, RunLost, RunNotStarted, RunStarted

KEEPER_DIED = "the process supervising this trial died"


def started_event(message: Mapping[str, Any]) -> RunStarted:
    """The ``RunStarted`` of a task's start message (the keeper's ``started`` event)."""
    trial_id, run = int(message["trial"]), int(message["run"])
    return RunStarted(trial_id, run, RunHandle(
        trial_id, run, pid=int(message["pid"]), create_time=float(message["create_time"]),
        keeper=int(message["keeper"]), keeper_create_time=float(message["keeper_create_time"]),
        host=str(message.get("host") or ""),
    ))


def end_event(trial_id: int, run: int, outcome: Mapping[str, Any]) -> RunEvent:
    """The end of a run from what its task returned (see ``_task.run_on_worker``)."""
    kind = outcome.get("ev")
    host = outcome.get("host") or "an unknown worker"
    if kind == "exited":
        return RunExited.from_record(outcome)
    if kind == "spawn_failed":
        return RunNotStarted(
            trial_id, run, f"the process could not be started on {host}: {outcome.get('error')}"
        )
    if kind == "cancelled":
        return RunNotStarted(trial_id, run, "cancelled before it started", cancelled=True)
    if kind == "keeper_died":
        return RunLost(trial_id, run, f"{KEEPER_DIED} (on Dask worker {host})")
    return RunLost(trial_id, run, f"the supervisor process on Dask worker {host} ended")


def failure_event(
    trial_id: int, run: int, error: BaseException, address: Optional[str], started: bool
) -> RunEvent:
    """The end of a run whose task failed: its worker died, or the task could not run."""
    from distributed.scheduler import KilledWorker

    if isinstance(error, KilledWorker):
        last = getattr(error.last_worker, "address", None) or address or "unknown"
        return RunLost(trial_id, run, f"worker lost: {address or last}")
    reason = f"the Dask task of this run failed: {type(error).__name__}: {error}"
    if started:
        return RunLost(trial_id, run, reason)
    return RunNotStarted(trial_id, run, reason)

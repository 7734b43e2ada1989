"""What a run's Dask task said, as the typed run events of the ``Launcher`` interface.

A task publishes its run's start as a Dask event and returns the
supervisor's last event for the run, with the worker's address: both are
the supervisor's own events, typed as ``LocalLauncher`` types them, with
the worker named in the reasons. A task whose worker died fails with
``KilledWorker`` instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Optional

from .._base import RunEvent, RunLost, RunNotStarted, RunStarted
from ..local._launcher import typed_event


def started_event(message: Mapping[str, Any]) -> RunStarted:
    """The ``RunStarted`` of a task's start message (the keeper's ``started`` event)."""
    event = typed_event(message, str(message.get("host") or ""))
    if not isinstance(event, RunStarted):
        raise ValueError(f"not a start: {dict(message)}")
    return event


def end_event(trial_id: int, run: int, outcome: Mapping[str, Any]) -> RunEvent:
    """The end of a run from what its task returned (see ``_task.run_on_worker``)."""
    host = outcome.get("host") or "an unknown worker"
    event = typed_event({"trial": trial_id, "run": run, **outcome}, str(host))
    if isinstance(event, RunLost) or (isinstance(event, RunNotStarted) and not event.cancelled):
        return dataclasses.replace(event, reason=f"{event.reason} (on Dask worker {host})")
    return event


def worker_died(error: Optional[BaseException]) -> bool:
    """Whether a task failed because its worker died (which took the run's tree with it)."""
    from distributed.scheduler import KilledWorker

    return isinstance(error, KilledWorker)


def failure_event(
    trial_id: int, run: int, error: Optional[BaseException], address: Optional[str],
    started: bool, scheduler: Optional[str] = None,
) -> RunEvent:
    """The end of a run whose task failed: its worker died, or the task could not run.

    ``error`` is None for a task that Dask cancelled (it gives no exception then).
    ``scheduler``: its address, when the client has lost it.
    """
    if worker_died(error):
        last = getattr(getattr(error, "last_worker", None), "address", None) or address \
            or "unknown"
        return RunLost(trial_id, run, f"worker lost: {address or last}")
    if scheduler is not None:
        reason = (
            f"the Dask scheduler at {scheduler} cannot be reached: start it again (its "
            "workers with it), then LocalBackend.restore the experiment with a DaskLauncher "
            "on it, or `localbackend tune --resume`"
        )
    elif error is None or "Cancelled" in type(error).__name__:
        reason = (
            "the Dask task of this run was cancelled, by another client or by a scheduler "
            "that restarted"
        )
    else:
        reason = f"the Dask task of this run failed: {type(error).__name__}: {error}"
    if started:
        return RunLost(trial_id, run, reason)
    return RunNotStarted(trial_id, run, reason)

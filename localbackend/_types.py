"""Trial records returned to tuners, shaped like Syne Tune's."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class Status:
    """Trial status strings, identical to Syne Tune's ``Status``."""

    completed: str = "Completed"
    in_progress: str = "InProgress"
    failed: str = "Failed"
    paused: str = "Paused"
    stopped: str = "Stopped"
    stopping: str = "Stopping"


FINISHED_STATUSES = frozenset({Status.completed, Status.failed, Status.stopped})

# Why a trial failed, as ``Trial.failure_kind``: its process exited with an
# error ("exit") or was killed by a signal ("signal"); the keeper ended it at
# a limit ("time_limit", "memory_limit") or because it wrote nothing for too
# long ("hang"); what ran it was lost ("lost", for example a Dask worker);
# its process could not be started ("launch").
FAILURE_KINDS = frozenset(
    {"exit", "signal", "time_limit", "memory_limit", "hang", "lost", "launch"}
)


@dataclass
class Trial:
    """A trial as returned by ``fetch_status_results``.

    Beyond Syne Tune's three fields it tells how the last run ended:
    ``exit_code`` (None while running or when ended by a signal),
    ``exit_signal`` (for example ``"SIGKILL"``), ``stderr_tail`` (the last
    lines of stderr of a failed run), ``trial_dir``, and
    ``training_end_time`` (when the last run ended; None while it runs), which
    a Syne Tune adapter copies into the ``TrialResult`` it keeps.

    ``failure_reason`` says why a ``Failed`` trial failed, in words (for
    example ``"time limit (60 s)"`` or ``"exit code 1"``), and
    ``failure_kind`` the same as one word a tuner can act on: one of
    ``FAILURE_KINDS``. Both are None unless the trial failed.
    """

    trial_id: int
    config: dict[str, Any]
    creation_time: datetime.datetime
    exit_code: Optional[int] = None
    exit_signal: Optional[str] = None
    stderr_tail: str = ""
    trial_dir: Optional[Path] = None
    training_end_time: Optional[datetime.datetime] = None
    failure_reason: Optional[str] = None
    failure_kind: Optional[str] = None

    def add_results(
        self,
        metrics: list[dict[str, Any]],
        status: str,
        training_end_time: Optional[datetime.datetime],
    ) -> TrialResult:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(Trial)}
        fields["training_end_time"] = training_end_time
        return TrialResult(**fields, metrics=metrics, status=status)


@dataclass
class TrialResult(Trial):
    """What ``start_trial`` and ``resume_trial`` return, as in Syne Tune.

    ``training_end_time`` is inherited from ``Trial``.
    """

    metrics: list[dict[str, Any]] = field(default_factory=list)
    status: str = Status.in_progress

    @property
    def seconds(self) -> int:
        """Whole seconds from creation to the end of training (or to now, while it runs)."""
        end = self.training_end_time or datetime.datetime.now()
        elapsed = end.replace(tzinfo=None) - self.creation_time.replace(tzinfo=None)
        # ``timedelta.seconds`` is only the part below one day.
        return int(elapsed.total_seconds())

    @property
    def cost(self) -> Any:
        return self.metrics[-1].get("st_worker_cost") if self.metrics else None

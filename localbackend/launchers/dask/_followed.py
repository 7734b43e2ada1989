"""Runs the Dask launcher follows by their keeper, since no task of this driver reports them.

Two kinds: runs of an earlier driver, re-attached after a restore (detach
mode), and runs whose task ended while their tree may still run (cancelled
by another client or lost by a scheduler that restarted, while the worker
lives; or lost with a worker that is closing, whose supervisor ends its
trees as it goes). Both are looked at every ``POLL_SECONDS``. A run has
ended once its worker, if the scheduler still lists it, says its keeper is
gone, and its keeper wrote the run's end in ``exit.json``; or, if that never
comes (a keeper killed, a host gone), once ``patience`` seconds have passed.
A re-attached run then ends as ``exit.json`` says, the other kind with the
end its task's failure gave.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from ..._files import read_json_object
from ..._paths import TrialPaths
from .._base import RunEvent, RunHandle
from ..local._launcher import attached_run_end

POLL_SECONDS = 0.25
# How long a run whose keeper is gone may take to write its end (exit.json):
# a worker's supervisor ends its trees within a second of the worker going,
# then each keeper waits out the run's grace period.
_END_MARGIN = 5.0
# The grace period of a run of an earlier driver, which is not known here.
_ATTACHED_GRACE = 5.0


def started_run(trial_id: int, run: int, paths: TrialPaths) -> Optional[RunHandle]:
    """The run as its keeper's ``run.json`` names it, if it started (its worker unknown)."""
    record = read_json_object(paths.run_record)
    if record is None or record.get("run") != run or not record.get("keeper"):
        return None
    return RunHandle.of_start(trial_id, run, record)


@dataclass
class _Followed:
    handle: RunHandle
    paths: TrialPaths
    # The end to tell; None: what the keeper wrote in exit.json.
    end: Optional[RunEvent]
    # After this (time.monotonic()), the end is told without exit.json.
    deadline: float


class FollowedRuns:
    """The followed runs of one launcher, each with its handle and how its end is told."""

    def __init__(self) -> None:
        self._runs: dict[tuple[int, int], _Followed] = {}
        self._checked = 0.0

    def attach(self, handle: RunHandle, paths: TrialPaths,
               grace_period: float = _ATTACHED_GRACE) -> None:
        """A run that started before this launcher heard of it: its end is what its keeper wrote."""
        self._follow(handle, paths, None, grace_period)

    def orphan(self, handle: RunHandle, paths: TrialPaths, end: RunEvent,
               grace_period: float) -> None:
        """A run whose task ended: ``end`` is told once its tree is gone."""
        self._follow(handle, paths, end, grace_period)

    def _follow(self, handle: RunHandle, paths: TrialPaths, end: Optional[RunEvent],
                grace_period: float) -> None:
        self._runs[(handle.trial_id, handle.run)] = _Followed(
            handle, paths, end, time.monotonic() + grace_period + _END_MARGIN
        )

    def handle(self, trial_id: int, run: int) -> Optional[RunHandle]:
        followed = self._runs.get((trial_id, run))
        return None if followed is None else followed.handle

    def __contains__(self, key: object) -> bool:
        """Whether ``(trial_id, run)`` is followed."""
        return key in self._runs

    def has_trial(self, trial_id: int) -> bool:
        return any(t == trial_id for t, _ in self._runs)

    def ends(self, is_alive: Callable[[RunHandle], bool]) -> list[RunEvent]:
        """The ends of the runs whose keeper is gone, at most every ``POLL_SECONDS``."""
        if not self._runs or time.monotonic() - self._checked <= POLL_SECONDS:
            return []
        self._checked = time.monotonic()
        ends: list[RunEvent] = []
        for key, followed in list(self._runs.items()):
            if is_alive(followed.handle):
                continue
            if not _end_written(followed.paths, key[1]) and time.monotonic() < followed.deadline:
                continue  # its supervisor may still be ending the tree
            del self._runs[key]
            end = followed.end
            ends.append(attached_run_end(*key, followed.paths) if end is None else end)
        return ends

    def clear(self) -> list[RunEvent]:
        """Forget every run (the launcher shuts down, and its sessions end the trees).

        Returns the ends of the runs whose task had ended.
        """
        told = [f.end for f in self._runs.values() if f.end is not None]
        self._runs.clear()
        return told


def _end_written(paths: TrialPaths, run: int) -> bool:
    record = read_json_object(paths.exit_status)
    return record is not None and record.get("run") == run

"""Runs the Dask launcher follows by their keeper, since no task of this driver reports them.

Two kinds: runs of an earlier driver, re-attached after a restore (detach
mode), and runs whose task ended while their tree may run on (cancelled by
another client, or lost by a scheduler that restarted, while the worker
lives). Both are looked at every ``POLL_SECONDS``, by asking their worker
whether the keeper lives. A run whose keeper is gone has ended: a
re-attached run as its keeper wrote in ``exit.json``, the other kind with
the end its task's failure gave.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional, Union

from ..._paths import TrialPaths
from .._base import RunEvent, RunHandle
from ..local._launcher import attached_run_end

POLL_SECONDS = 0.25


class FollowedRuns:
    """The followed runs of one launcher, each with its handle and how its end is told."""

    def __init__(self) -> None:
        self._runs: dict[tuple[int, int], tuple[RunHandle, Union[TrialPaths, RunEvent]]] = {}
        self._checked = 0.0

    def attach(self, handle: RunHandle, paths: TrialPaths) -> None:
        """A run of an earlier driver: its end is what its keeper wrote."""
        self._runs[(handle.trial_id, handle.run)] = (handle, paths)

    def orphan(self, handle: RunHandle, end: RunEvent) -> None:
        """A run whose task ended, sent the stop: ``end`` is told once its keeper is gone."""
        self._runs[(handle.trial_id, handle.run)] = (handle, end)

    def handle(self, trial_id: int, run: int) -> Optional[RunHandle]:
        followed = self._runs.get((trial_id, run))
        return None if followed is None else followed[0]

    def has_trial(self, trial_id: int) -> bool:
        return any(t == trial_id for t, _ in self._runs)

    def ends(self, is_alive: Callable[[RunHandle], bool]) -> list[RunEvent]:
        """The ends of the runs whose keeper is gone, at most every ``POLL_SECONDS``."""
        if not self._runs or time.monotonic() - self._checked <= POLL_SECONDS:
            return []
        self._checked = time.monotonic()
        ends: list[RunEvent] = []
        for key, (handle, end) in list(self._runs.items()):
            if is_alive(handle):
                continue
            del self._runs[key]
            ends.append(attached_run_end(*key, end) if isinstance(end, TrialPaths) else end)
        return ends

    def clear(self) -> list[RunEvent]:
        """Forget every run (the launcher shuts down, and its sessions end the trees).

        Returns the ends of the runs whose task had ended.
        """
        told = [end for _handle, end in self._runs.values() if not isinstance(end, TrialPaths)]
        self._runs.clear()
        return told

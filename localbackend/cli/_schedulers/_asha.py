"""Promotion-type ASHA: trials pause at rungs, and the best of each rung are resumed.

The rungs sit at ``min_resource * eta**k`` below ``max_resource``; what
ASHA records at each rung (metric per trial, who was promoted, who waits
where) is its whole state, saved for ``--resume`` per trial.
"""

from __future__ import annotations

import random
from typing import Any, Optional

from .._search_space import SearchSpace
from ._base import CONTINUE, PAUSE, Action, ResumeTrial, Scheduler, Settings, Verdict


def rung_levels(min_resource: float, reduction_factor: float, max_resource: float) -> list[float]:
    """``min_resource * eta**k`` below ``max_resource``."""
    levels = []
    level = float(min_resource)
    while level < max_resource - 1e-9:
        levels.append(int(level) if float(level).is_integer() else level)
        level *= reduction_factor
    return levels


class Asha(Scheduler):
    """Promotion-type asynchronous successive halving (Li et al., 2020).

    A trial pauses when it reaches a rung. A paused trial is promoted, that
    is resumed, once its metric at that rung is in the top ``1/eta`` of all
    trials recorded there. Promotions from higher rungs come first; a new
    trial is started only when nothing can be promoted. A trial that is
    promotable the moment it reaches a rung goes on without pausing.
    """

    name = "asha"
    label_header = "rung"

    def __init__(
        self,
        space: SearchSpace,
        settings: Settings,
        rng: random.Random,
        *,
        reduction_factor: float = 3.0,
        min_resource: float = 1.0,
    ) -> None:
        super().__init__(space, settings, rng)
        if settings.max_resource is None:
            raise ValueError("ASHA needs max_resource")
        self.reduction_factor = reduction_factor
        self.levels = rung_levels(min_resource, reduction_factor, settings.max_resource)
        # Per rung: trial id -> metric recorded there, and the ids promoted from it.
        self.recorded: list[dict[int, float]] = [{} for _ in self.levels]
        self.promoted: list[set[int]] = [set() for _ in self.levels]
        self.next_rung: dict[int, int] = {}
        self.paused_at: dict[int, int] = {}

    def describe(self) -> str:
        shown = ", ".join(f"{level:g}" for level in self.levels)
        return (
            f"asha (rungs at {self.settings.resource_attr} {shown}; promotes the top "
            f"1/{self.reduction_factor:g})"
        )

    def on_trial_start(self, trial_id: int, config: dict[str, Any]) -> None:
        self.next_rung.setdefault(trial_id, 0)

    def on_result(self, trial_id: int, resource: Optional[float], value: float) -> Verdict:
        if resource is None:
            return Verdict(CONTINUE)
        rung = self.next_rung.get(trial_id, 0)
        reached = None
        while rung < len(self.levels) and resource >= self.levels[rung] - 1e-9:
            self.recorded[rung][trial_id] = value
            reached = rung
            rung += 1
        self.next_rung[trial_id] = rung
        if reached is None:
            return Verdict(CONTINUE)
        level = self.levels[reached]
        target = self._target(reached)
        rank, count = self._rank(reached, trial_id)
        event = {
            "trial": trial_id, "rung": level, "value": value, "rank": rank, "count": count,
            "next": target,
        }
        if self._promotable(reached, trial_id):
            self.promoted[reached].add(trial_id)
            return Verdict(CONTINUE, dict(event, event="continue"))
        self.paused_at[trial_id] = reached
        return Verdict(PAUSE, dict(event, event="pause"))

    def on_trial_end(self, trial_id: int, status: str) -> None:
        self.paused_at.pop(trial_id, None)

    def next_action(self, can_start: bool, idle: set[int]) -> Optional[Action]:
        for rung in reversed(range(len(self.levels))):
            candidates = [
                trial_id
                for trial_id in self._top(rung)
                if self.paused_at.get(trial_id) == rung
                and trial_id not in self.promoted[rung]
                and trial_id in idle
            ]
            if candidates:
                trial_id = candidates[0]
                self.promoted[rung].add(trial_id)
                del self.paused_at[trial_id]
                rank, count = self._rank(rung, trial_id)
                event = {
                    "event": "promote", "trial": trial_id, "rung": self.levels[rung],
                    "value": self.recorded[rung][trial_id], "rank": rank, "count": count,
                    "next": self._target(rung),
                }
                return ResumeTrial(trial_id, event=event)
        return super().next_action(can_start, idle)

    def label(self, trial_id: int) -> str:
        reached = self.next_rung.get(trial_id, 0) - 1
        return f"{self.levels[reached]:g}" if reached >= 0 else "-"

    def _target(self, rung: int) -> float:
        if rung + 1 < len(self.levels):
            return self.levels[rung + 1]
        assert self.settings.max_resource is not None
        return self.settings.max_resource

    def _ordered(self, rung: int) -> list[int]:
        entries = self.recorded[rung]
        return sorted(entries, key=lambda t: (self.settings.sort_key(entries[t]), t))

    def _top(self, rung: int) -> list[int]:
        ordered = self._ordered(rung)
        return ordered[: int(len(ordered) / self.reduction_factor + 1e-9)]

    def _rank(self, rung: int, trial_id: int) -> tuple[int, int]:
        ordered = self._ordered(rung)
        return ordered.index(trial_id) + 1, len(ordered)

    def _promotable(self, rung: int, trial_id: int) -> bool:
        return trial_id not in self.promoted[rung] and trial_id in self._top(rung)

    def state_dict(self) -> dict[str, Any]:
        return {
            "recorded": [{str(t): v for t, v in rung.items()} for rung in self.recorded],
            "promoted": [sorted(rung) for rung in self.promoted],
            "next_rung": {str(t): r for t, r in self.next_rung.items()},
            "paused_at": {str(t): r for t, r in self.paused_at.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recorded = [{int(t): float(v) for t, v in rung.items()} for rung in state["recorded"]]
        self.promoted = [set(rung) for rung in state["promoted"]]
        self.next_rung = {int(t): int(r) for t, r in state["next_rung"].items()}
        self.paused_at = {int(t): int(r) for t, r in state["paused_at"].items()}

    def trial_state(self, trial_id: int) -> Any:
        return {
            "recorded": {
                str(rung): entries[trial_id]
                for rung, entries in enumerate(self.recorded)
                if trial_id in entries
            },
            "promoted": [rung for rung, ids in enumerate(self.promoted) if trial_id in ids],
            "next_rung": self.next_rung.get(trial_id),
            "paused_at": self.paused_at.get(trial_id),
        }

    def load_trial_state(self, trial_id: int, state: Any) -> None:
        recorded = {int(rung): float(v) for rung, v in state["recorded"].items()}
        promoted = set(state["promoted"])
        for rung in range(len(self.levels)):
            if rung in recorded:
                self.recorded[rung][trial_id] = recorded[rung]
            else:
                self.recorded[rung].pop(trial_id, None)
            if rung in promoted:
                self.promoted[rung].add(trial_id)
            else:
                self.promoted[rung].discard(trial_id)
        for table, value in ((self.next_rung, state["next_rung"]),
                             (self.paused_at, state["paused_at"])):
            if value is None:
                table.pop(trial_id, None)
            else:
                table[trial_id] = int(value)


__all__ = ["Asha", "rung_levels"]

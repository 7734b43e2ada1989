"""The decisions of ``localbackend tune``: random search, ASHA and PBT.

A scheduler never touches a process. It is told of starts, results and
ends, and answers with data: continue, pause or stop a trial after a result,
and which trial to start or resume when a worker is free. The tuner carries
the answers out on the backend, so the logic here is plain and its state is
a JSON object saved for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Union

from ._search_space import LogUniform, SearchSpace, Uniform

Decision = Literal["continue", "pause", "stop"]
CONTINUE: Decision = "continue"
PAUSE: Decision = "pause"
STOP: Decision = "stop"


@dataclass(frozen=True)
class Settings:
    """What every scheduler needs to know about the metric and the resource."""

    metric: str
    mode: Literal["min", "max"]
    resource_attr: str
    max_resource: Optional[float]

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def sort_key(self, value: float) -> float:
        """Ascending order of this key is best first."""
        return value if self.mode == "min" else -value


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    event: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class StartTrial:
    config: dict[str, Any]


@dataclass(frozen=True)
class ResumeTrial:
    trial_id: int
    new_config: Optional[dict[str, Any]] = None
    copy_from: Optional[int] = None
    event: Optional[dict[str, Any]] = field(default=None)


Action = Union[StartTrial, ResumeTrial]


class Scheduler:
    """Base class, with random search's behaviour: the others refine it."""

    name: ClassVar[str]
    label_header: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, settings: Settings, rng: random.Random) -> None:
        self.space = space
        self.settings = settings
        self.rng = rng

    def describe(self) -> str:
        return self.name

    def on_trial_start(self, trial_id: int, config: dict[str, Any]) -> None:
        """A trial was started with ``config``."""

    def on_result(self, trial_id: int, resource: Optional[float], value: float) -> Verdict:
        """A result of a running trial; says whether it goes on."""
        return Verdict(CONTINUE)

    def on_trial_end(self, trial_id: int, status: str) -> None:
        """The trial completed, failed or was stopped; it will never run again."""

    def next_action(self, can_start: bool, idle: set[int]) -> Optional[Action]:
        """What to run on a free worker; ``idle`` are paused trials whose processes ended."""
        return StartTrial(self.space.sample(self.rng)) if can_start else None

    def label(self, trial_id: int) -> str:
        """Rung or generation of a trial, for the trial table."""
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def trial_state(self, trial_id: int) -> Any:
        """What the scheduler holds about one trial, as JSON.

        A call about a trial (``on_trial_start``, ``on_result``,
        ``on_trial_end``, or ``next_action`` choosing it) changes only that
        trial's part of the state, so the tuner saves, after each batch, the
        parts of the trials it touched.
        """
        return None

    def load_trial_state(self, trial_id: int, state: Any) -> None:
        """Put back one trial's part, as ``trial_state`` returned it, over ``load_state_dict``."""


class RandomSearch(Scheduler):
    """Each trial gets an independent random config and runs to its end."""

    name = "random"


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


@dataclass
class _Member:
    config: dict[str, Any]
    value: Optional[float] = None
    resource: Optional[float] = None
    last_perturbation: float = 0.0
    generation: int = 0
    # running, waiting (paused so a member with less progress can run),
    # exploiting (paused for a checkpoint copy), or ended.
    state: str = "running"
    # Exploit: the member whose checkpoint it takes, and its explored config.
    source: Optional[int] = None
    explored: Optional[dict[str, Any]] = None


class Pbt(Scheduler):
    """Population-based training (Jaderberg et al., 2017), asynchronous.

    Every ``interval`` units of the resource a member is compared with the
    population. A member in the bottom quantile pauses, receives a copy of
    the checkpoint of a member from the top quantile, and resumes with that
    member's config, explored: each mutable hyperparameter is multiplied by
    0.8 or 1.2, or resampled. With fewer workers than members, a member
    that reaches a comparison point ahead of others also pauses, and the
    member with the least progress runs next, so the population advances
    together and comparisons are fair.
    """

    name = "pbt"
    label_header = "gen"

    def __init__(
        self,
        space: SearchSpace,
        settings: Settings,
        rng: random.Random,
        *,
        population: int = 8,
        interval: float = 2.0,
        quantile: float = 0.25,
        mutable: Optional[list[str]] = None,
    ) -> None:
        super().__init__(space, settings, rng)
        self.population = population
        self.interval = interval
        self.quantile = quantile
        domains = space.domains
        self.mutable = (
            list(mutable)
            if mutable is not None
            else [n for n, d in domains.items() if isinstance(d, (Uniform, LogUniform))]
        )
        self.members: dict[int, _Member] = {}

    def describe(self) -> str:
        mutable = ", ".join(self.mutable) or "nothing"
        return (
            f"pbt (population {self.population}, compared every {self.interval:g} "
            f"{self.settings.resource_attr}, bottom {self.quantile:.0%} copy the top "
            f"{self.quantile:.0%}, explores {mutable})"
        )

    def on_trial_start(self, trial_id: int, config: dict[str, Any]) -> None:
        self.members[trial_id] = _Member(config=dict(config))

    def on_result(self, trial_id: int, resource: Optional[float], value: float) -> Verdict:
        member = self.members.get(trial_id)
        if member is None:
            return Verdict(CONTINUE)
        member.value = value
        member.resource = resource
        if resource is None or resource - member.last_perturbation < self.interval - 1e-9:
            return Verdict(CONTINUE)
        member.last_perturbation = resource
        max_resource = self.settings.max_resource
        if max_resource is not None and resource >= max_resource - 1e-9:
            return Verdict(CONTINUE)
        exploit = self._exploit(trial_id, member, resource, value)
        if exploit is not None:
            return exploit
        behind = self._behind(resource)
        if behind:
            member.state = "waiting"
            event = {
                "event": "yield", "trial": trial_id, "resource": resource, "value": value,
                "behind": behind,
            }
            return Verdict(PAUSE, event)
        return Verdict(CONTINUE)

    def _exploit(
        self, trial_id: int, member: _Member, resource: float, value: float
    ) -> Optional[Verdict]:
        scored = [t for t, m in self.members.items() if m.value is not None]
        if len(scored) < 2:
            return None
        ordered = sorted(
            scored, key=lambda t: (self.settings.sort_key(self.members[t].value or 0.0), t)
        )
        size = max(1, math.floor(len(ordered) * self.quantile))
        top, bottom = ordered[:size], ordered[-size:]
        if trial_id not in bottom or trial_id in top:
            return None
        max_resource = self.settings.max_resource
        # A finished member's checkpoint is at the end of training: nothing left to learn from.
        sources = [
            t
            for t in top
            if t != trial_id
            and self.members[t].state != "ended"
            and (max_resource is None or (self.members[t].resource or 0) < max_resource - 1e-9)
        ]
        if not sources:
            return None
        source = self.rng.choice(sources)
        member.source = source
        member.explored = self._explore(self.members[source].config)
        member.state = "exploiting"
        member.generation += 1
        event = {
            "event": "exploit", "trial": trial_id, "source": source, "value": value,
            "source_value": self.members[source].value, "resource": resource,
            "source_resource": self.members[source].resource, "generation": member.generation,
        }
        return Verdict(PAUSE, event)

    def _behind(self, resource: float) -> list[int]:
        """Members, or -1 for one not started yet, waiting with less progress than this."""
        behind = [
            t
            for t, m in self.members.items()
            if m.state in ("waiting", "exploiting") and self._progress(m) < resource - 1e-9
        ]
        if len(self.members) < self.population:
            behind.append(-1)
        return behind

    def _progress(self, member: _Member) -> float:
        if member.state == "exploiting" and member.source is not None:
            return self.members[member.source].resource or 0.0
        return member.resource or 0.0

    def on_trial_end(self, trial_id: int, status: str) -> None:
        member = self.members.get(trial_id)
        if member is not None:
            member.state = "ended"

    def next_action(self, can_start: bool, idle: set[int]) -> Optional[Action]:
        candidates: list[tuple[float, int, int]] = [
            (self._progress(m), 0 if m.state == "exploiting" else 1, t)
            for t, m in self.members.items()
            if m.state in ("waiting", "exploiting") and t in idle
        ]
        if can_start and len(self.members) < self.population:
            candidates.append((0.0, 2, -1))
        if not candidates:
            return None
        _progress, _kind, trial_id = min(candidates)
        if trial_id < 0:
            return StartTrial(self.space.sample(self.rng))
        member = self.members[trial_id]
        if member.state == "waiting":
            member.state = "running"
            event = {"event": "turn", "trial": trial_id, "resource": member.resource}
            return ResumeTrial(trial_id, event=event)
        assert member.source is not None and member.explored is not None
        source = self.members[member.source]
        explored = member.explored
        member.config = dict(explored)
        member.state = "running"
        # The copied checkpoint is the source's: count intervals from its progress.
        if source.resource is not None:
            member.last_perturbation = source.resource
        changed = {k: v for k, v in explored.items() if source.config.get(k) != v}
        event = {
            "event": "copy", "trial": trial_id, "source": member.source,
            "source_resource": source.resource, "changed": changed,
            "generation": member.generation,
        }
        copy_from = member.source
        member.source = member.explored = None
        return ResumeTrial(trial_id, new_config=explored, copy_from=copy_from, event=event)

    def label(self, trial_id: int) -> str:
        member = self.members.get(trial_id)
        return str(member.generation) if member is not None else "-"

    def _explore(self, config: dict[str, Any]) -> dict[str, Any]:
        explored = dict(config)
        domains = self.space.domains
        for name in self.mutable:
            if name in domains and name in explored:
                explored[name] = domains[name].perturb(explored[name], self.rng)
        return explored

    def state_dict(self) -> dict[str, Any]:
        return {"members": {str(t): dataclasses.asdict(m) for t, m in self.members.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.members = {int(t): _Member(**m) for t, m in state["members"].items()}

    def trial_state(self, trial_id: int) -> Any:
        member = self.members.get(trial_id)
        return dataclasses.asdict(member) if member is not None else None

    def load_trial_state(self, trial_id: int, state: Any) -> None:
        if state is None:
            self.members.pop(trial_id, None)
        else:
            self.members[trial_id] = _Member(**state)

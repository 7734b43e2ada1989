"""Population-based training: the bottom of the population takes the top's checkpoints.

Each member's progress, last score, generation and pending exploit (whose
checkpoint it takes, with which explored config) is PBT's whole state,
saved for ``--resume`` per member.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any, Optional

from .._search_space import LogUniform, SearchSpace, Uniform
from ._base import CONTINUE, PAUSE, Action, ResumeTrial, Scheduler, Settings, StartTrial, Verdict


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


__all__ = ["Pbt"]

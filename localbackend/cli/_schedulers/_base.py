"""What every scheduler shares: the decisions it answers with, and its base class.

A scheduler never touches a process. It is told of starts, results and
ends, and answers with the data defined here: a :class:`Verdict` (continue,
pause or stop) after a result, and an :data:`Action` (start a trial, or
resume one) when a worker is free. The base :class:`Scheduler` documents
each hook and behaves as random search; the others override what they refine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional, Union

from .._search_space import SearchSpace

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
    """The answer to a result: what the trial does next, and the event that explains it."""

    decision: Decision
    event: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class StartTrial:
    """Start a new trial with this config."""

    config: dict[str, Any]


@dataclass(frozen=True)
class ResumeTrial:
    """Resume a paused trial, optionally with a new config and another trial's checkpoint."""

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


__all__ = [
    "CONTINUE",
    "PAUSE",
    "STOP",
    "Action",
    "Decision",
    "ResumeTrial",
    "Scheduler",
    "Settings",
    "StartTrial",
    "Verdict",
]

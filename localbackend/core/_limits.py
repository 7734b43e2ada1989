"""Limits, retries and checkpoint retention: the options, checked, and their words.

``TrialLimits`` holds what the keeper enforces on each run (time, memory,
silence) and how often a failed trial is retried; a backend has one for
every trial, and ``start_trial`` may override it for one trial.
``Retention`` says which checkpoints the backend keeps. Both are stored
with the backend's options, so a ``restore`` applies them again.
"""

from __future__ import annotations

import decimal
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from .._errors import BackendConfigurationError

# A failed run that ran less than this is a quick failure: a trial whose
# every retry fails this fast is in a crash loop, and its reason says so.
QUICK_FAILURE_SECONDS = 5.0
# Failure kinds a retry can help with (a time limit is spent once and for all;
# a process that could not start will not start the next time either).
RETRIED_KINDS = frozenset({"exit", "signal", "memory_limit", "hang", "lost"})

_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
    "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
# The largest count or size a limit takes: the journal's JSON and the kernel
# hold 64-bit integers, and a larger one could be checked here but never stored.
LARGEST = 2**63 - 1
# The longest time a limit or a grace period takes (about 31 years): a
# keeper sets its timers in nanoseconds, which hold about 292 years.
LONGEST_SECONDS = 10**9


def parse_bytes(name: str, value: object) -> Optional[int]:
    """A byte count from an int or a string such as ``"2GiB"`` or ``"512M"``; None stays None."""
    if value is None:
        return None
    given = value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = match[2].lower() if match else ""
        if match is None or unit not in _UNITS:
            raise BackendConfigurationError(
                name, value, "is not a size",
                "Give a number of bytes, or a number with a unit such as '512MiB' or '2G'.",
            )
        value = int(float(match[1]) * _UNITS[unit])
    elif not isinstance(value, bool) and isinstance(value, numbers.Integral):
        value = int(value)  # numpy integers
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= LARGEST:
        raise BackendConfigurationError(
            name, given, f"must be a positive number of bytes, at most {LARGEST}",
            f"Use for example {name}='2GiB', or leave it unset for no limit.",
        )
    return value


def _seconds(name: str, value: object) -> Optional[float]:
    if value is None:
        return None
    number: Optional[float] = None
    if not isinstance(value, (bool, str)) and isinstance(value, numbers.Real):
        try:  # numpy scalars are Real too; a huge int does not fit a float
            number = float(value)
        except (OverflowError, ValueError):
            number = None
    if number is None or not math.isfinite(number) or not 0 < number <= LONGEST_SECONDS:
        raise BackendConfigurationError(
            name, value, f"must be a positive, finite number of seconds, at most {LONGEST_SECONDS}",
            f"Use for example {name}=600, or leave it unset for no limit.",
        )
    return number


def _count(name: str, value: object, *, low: int, allow_none: bool = True) -> Optional[int]:
    if value is None and allow_none:
        return None
    if not isinstance(value, bool) and isinstance(value, numbers.Integral):
        value = int(value)  # numpy integers
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= LARGEST:
        raise BackendConfigurationError(
            name, value, f"must be a whole number from {low} to {LARGEST}",
            f"Use for example {name}={max(low, 1)}" + (", or leave it unset." if allow_none
                                                     else "."),
        )
    return value


@dataclass(frozen=True)
class TrialLimits:
    """What applies to each run of a trial, and how often a failed trial is retried."""

    time_limit: Optional[float] = None
    memory_limit: Optional[int] = None
    heartbeat_timeout: Optional[float] = None
    max_failures: int = 0

    @classmethod
    def check(
        cls, *, time_limit: object = None, memory_limit: object = None,
        heartbeat_timeout: object = None, max_failures: object = 0,
    ) -> TrialLimits:
        """The limits, or our error naming the first bad value."""
        return cls(
            time_limit=_seconds("time_limit", time_limit),
            memory_limit=parse_bytes("memory_limit", memory_limit),
            heartbeat_timeout=_seconds("heartbeat_timeout", heartbeat_timeout),
            max_failures=int(_count("max_failures", max_failures, low=0, allow_none=False) or 0),
        )

    def override(self, overrides: Mapping[str, Any]) -> TrialLimits:
        """These limits with one trial's overrides (``None`` values keep the backend's)."""
        if not isinstance(overrides, Mapping):
            raise BackendConfigurationError(
                "limits", overrides, "must be a dict of per-trial limits",
                "Pass e.g. limits={'time_limit': 600}.",
            )
        unknown = sorted(set(overrides) - set(asdict(self)))
        if unknown:
            raise BackendConfigurationError(
                unknown[0], overrides[unknown[0]], "is not a per-trial limit",
                f"Use one of {', '.join(sorted(asdict(self)))}.",
            )
        given = {key: value for key, value in overrides.items() if value is not None}
        if not given:
            return self
        checked = TrialLimits.check(**{**asdict(self), **given})
        return replace(self, **{key: getattr(checked, key) for key in given})

    def saved(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> TrialLimits:
        return cls.check(**dict(saved or {}))


@dataclass(frozen=True)
class Retention:
    """Which checkpoints the backend keeps (``None``: no such rule)."""

    keep_checkpoints: Optional[int] = None
    keep_best: Optional[int] = None
    metric: Optional[str] = None
    mode: str = "min"
    checkpoint_budget: Optional[int] = None

    @classmethod
    def check(
        cls, *, keep_checkpoints: object = None, keep_best: object = None,
        metric: object = None, mode: object = "min", checkpoint_budget: object = None,
    ) -> Retention:
        """The retention rules, or our error naming the first bad value."""
        keep = _count("keep_checkpoints", keep_checkpoints, low=1)
        best = _count("keep_best", keep_best, low=1)
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise BackendConfigurationError(
                "metric", metric, "must be the name of a reported metric",
                "Use for example metric='loss'.",
            )
        if mode not in ("min", "max"):
            raise BackendConfigurationError(
                "mode", mode, "must be 'min' or 'max'",
                "Use mode='min' when lower values of the metric are better.",
            )
        if best is not None and metric is None:
            raise BackendConfigurationError(
                "keep_best", best, "needs a metric to rank the trials by",
                "Pass metric='<reported name>' and mode='min' or 'max' with it.",
            )
        return cls(
            keep_checkpoints=keep, keep_best=best, metric=metric, mode=str(mode),
            checkpoint_budget=parse_bytes("checkpoint_budget", checkpoint_budget),
        )

    @property
    def active(self) -> bool:
        """Whether the driver has retention work to do after runs end."""
        return self.keep_checkpoints is not None or self.ranks_trials

    @property
    def ranks_trials(self) -> bool:
        """Whether a rule weighs the experiment's trials against each other."""
        return self.keep_best is not None or self.checkpoint_budget is not None

    def saved(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> Retention:
        return cls.check(**dict(saved or {}))


def check_cpus_per_trial(value: object, available: int) -> Optional[int]:
    """``cpus_per_trial``, checked against the cores this process may use."""
    count = _count("cpus_per_trial", value, low=1)
    if count is not None and available and count > available:
        raise BackendConfigurationError(
            "cpus_per_trial", value, f"is more than the {available} cores available here",
            f"Use at most cpus_per_trial={available}.",
        )
    return count


def check_threads_per_trial(value: object) -> Optional[int]:
    """``threads_per_trial``: the thread count numeric libraries get in each trial."""
    return _count("threads_per_trial", value, low=1)


def seconds_text(value: float) -> str:
    """Seconds for people: ``60``, ``0.5``, ``86400``, ``0.0004`` (never in exponent form)."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    if text == "0" and value > 0:
        # Under a millisecond: the shortest digits that give the number back.
        text = format(decimal.Decimal(repr(value)), "f")
    return text


def bytes_text(value: int) -> str:
    """A byte count for people: ``512 MiB``, ``1.5 GiB``, ``1000 MiB``."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024:
            if unit == "B":
                return f"{int(amount)} B"
            return f"{amount:.1f}".rstrip("0").rstrip(".") + f" {unit}"
        amount /= 1024
    return f"{amount:.1f}".rstrip("0").rstrip(".") + " TiB"


def limit_reason(kind: str, limits: TrialLimits, peak: Optional[int]) -> str:
    """The failure reason of a run the keeper ended at one of its limits."""
    if kind == "time_limit" and limits.time_limit is not None:
        return f"time limit ({seconds_text(limits.time_limit)} s)"
    if kind == "memory_limit" and limits.memory_limit is not None:
        seen = f", peak {bytes_text(peak)}" if peak else ""
        return f"memory limit ({bytes_text(limits.memory_limit)}{seen})"
    if kind == "hang" and limits.heartbeat_timeout is not None:
        return f"no output for {seconds_text(limits.heartbeat_timeout)} s"
    return kind.replace("_", " ")

"""Whether what trials report can drive the tune, and when the tune must give up.

A result is usable for a decision when it holds the metric as a finite
number and, where the scheduler needs it, the resource attribute too. The
first trials are held to that strictly: a script that never reports the
metric, reports something that is not a number, keeps failing, or ends
without a result is a usage problem, and the tune ends with a message that
says what to change (:class:`TuneFailed`). Once the metric has been seen, a
result without it is recorded but only warned about, once per trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from ._common import EXIT_FAILED, EXIT_USAGE, TunerPaths
from ._tune_options import TuneOptions

# Give up when this many trials failed before any reported the metric.
FAILURES_BEFORE_GIVING_UP = 3


class TuneFailed(Exception):
    """The tune cannot go on: ends it with this message and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class Reading:
    """A usable result: the metric as a float, and the resource as reported and as a float."""

    value: float
    resource: Any
    level: Optional[float]


class ResultJudge:
    """Reads results and ends of trials for what the tune may decide on."""

    def __init__(
        self, options: TuneOptions, files: TunerPaths, warn: Callable[[str], None]
    ) -> None:
        self.options = options
        self.files = files
        # Called at the time of the warning, so it reaches the view shown then.
        self.warn = warn
        self.metric_seen = False
        self.resource_seen = False
        self.failures = 0
        self.warned_missing: set[int] = set()

    def resumed(self, reported: bool) -> None:
        """A resumed tune: ``reported`` says whether its trials delivered any result before."""
        self.metric_seen = reported
        self.resource_seen = self.metric_seen

    def read(self, trial_id: int, result: dict[str, Any]) -> Optional[Reading]:
        """The result's metric and resource, or None when it cannot be used to decide."""
        options = self.options
        value = result.get(options.metric)
        resource = result.get(options.resource_attr)
        if options.metric not in result:
            self._missing(trial_id, result, options.metric, "--metric", self.metric_seen)
            return None
        if not _is_number(value):
            raise TuneFailed(
                f"trial {trial_id} reported {options.metric}={value!r}, which is not a number; "
                f"report a number, or choose another --metric",
                EXIT_USAGE,
            )
        self.metric_seen = True
        needs_resource = options.scheduler != "random" or options.max_resource is not None
        if needs_resource and options.resource_attr not in result:
            self._missing(
                trial_id, result, options.resource_attr, "--resource-attr", self.resource_seen
            )
            return None
        if options.resource_attr in result:
            if not _is_number(resource):
                raise TuneFailed(
                    f"trial {trial_id} reported {options.resource_attr}={resource!r}, which is "
                    "not a number; --resource-attr must name a number that grows, like the epoch",
                    EXIT_USAGE,
                )
            self.resource_seen = True
        number = float(value)  # type: ignore[arg-type]  # checked by _is_number
        level = float(resource) if resource is not None else None
        return Reading(number, resource, level)

    def _missing(
        self, trial_id: int, result: dict[str, Any], name: str, option: str, seen: bool
    ) -> None:
        if seen:
            if trial_id not in self.warned_missing:
                self.warned_missing.add(trial_id)
                self.warn(
                    f"trial {trial_id} reported a result without {name!r}; such results are "
                    "recorded but not used to decide"
                )
            return
        reported = sorted(k for k in result if not k.startswith("st_")) or ["nothing"]
        raise TuneFailed(
            f"trial {trial_id} reported {', '.join(reported)} but not {name!r}; pass {option} "
            f"with one of those names, or make the script report {name}",
            EXIT_USAGE,
        )

    def failed(self, trial_id: int, last: str) -> None:
        """A trial failed, its stderr ending with ``last``; gives up after too many at first."""
        self.failures += 1
        if self.failures >= FAILURES_BEFORE_GIVING_UP and not self.metric_seen:
            raise TuneFailed(
                f"{self.failures} trials failed before any reported {self.options.metric!r}; "
                f"the last said: {last}\nSee {self.files.trial(trial_id).stderr}, or try "
                f"the script alone with `localbackend run {self.options.script} -p ...`",
                EXIT_FAILED,
            )

    def completed(self, trial_id: int, results: int) -> None:
        """A trial completed after ``results`` results; none at all, at first, ends the tune."""
        if results == 0 and not self.metric_seen:
            raise TuneFailed(
                f"trial {trial_id} ended without reporting any result; the script must call "
                f"localbackend.report({self.options.metric}=...) (or print "
                "'[tune-metric]: {json}' lines); see "
                f"{self.files.trial(trial_id).stdout}",
                EXIT_USAGE,
            )


def how_it_failed(trial: Any) -> tuple[str, str]:
    """How a failed trial ended (exit code or signal), and the last line of its stderr."""
    code = trial.exit_code
    how = f"exit code {code}" if code is not None else f"signal {trial.exit_signal}"
    tail = (trial.stderr_tail or "").strip().splitlines()
    last = tail[-1] if tail else "no output on stderr"
    return how, last


def _is_number(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
    )


# TuneFailed is left out: it never leaves the tuner, whose loop turns it into a
# message and an exit code, so it is no part of what the package exports.
__all__ = ["FAILURES_BEFORE_GIVING_UP", "Reading", "ResultJudge", "how_it_failed"]

"""Pieces the tuner adapters share: errors, and reading what a trial reported."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._errors import LocalBackendError


class IntegrationError(LocalBackendError):
    """A tuner adapter was used in a way it cannot serve; the message says how to fix it."""

    def __init__(self, adapter: str, problem: str, hint: str) -> None:
        self.adapter = adapter
        self.problem = problem
        self.hint = hint
        super().__init__(f"{adapter}: {problem}. {hint}")


class MissingMetricError(IntegrationError):
    """A trial reported a result without the metric the tuner optimises."""

    def __init__(
        self, adapter: str, trial_id: int, metric: str, reported: list[str], trial_dir: str
    ) -> None:
        self.trial_id = trial_id
        self.metric = metric
        self.reported = reported
        self.trial_dir = trial_dir
        super().__init__(
            adapter,
            f"trial {trial_id} reported a result without {metric!r} "
            f"(it reported {', '.join(sorted(reported)) or 'nothing'})",
            f"Call report({metric}=...) in the trial script, or change the metric name. "
            f"The trial's files are in {trial_dir}.",
        )


def missing_library(library: str, extra: str, err: ImportError) -> ImportError:
    """The ImportError to raise when an adapter's tuner library is not installed."""
    error = ImportError(
        f"localbackend.integrations needs {library}, which cannot be imported ({err}). "
        f'Install it with: pip install "localbackend[{extra}]"'
    )
    error.name = err.name
    return error


def metric_value(result: Mapping[str, Any], metric: str) -> float | None:
    """``result[metric]`` as a finite float, or None when it is missing or not a number."""
    value = result.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None

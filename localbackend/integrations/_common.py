"""Pieces the tuner adapters share: their error, argument checks, reading what a trial reported."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Defined with the other errors, so that ``localbackend.IntegrationError``
# imports no adapter; kept importable from here.
from .._errors import IntegrationError
from .._protocol import ST_WORKER_ITER

__all__ = [
    "DEFAULT_STEP_KEY",
    "WAIT_SECONDS",
    "IntegrationError",
    "check_count",
    "metric_value",
    "missing_library",
]

# The 0-based result counter LocalBackend adds to every result: the step of a
# learning curve when the script reports none of its own.
DEFAULT_STEP_KEY = ST_WORKER_ITER
# ``LocalBackend.wait`` returns on any news; this only bounds how late an
# adapter's loop notices a deadline of its own.
WAIT_SECONDS = 1.0


def missing_library(library: str, extra: str, err: ImportError) -> ImportError:
    """The ImportError to raise when an adapter's tuner library is not installed."""
    error = ImportError(
        f"localbackend.integrations needs {library}, which cannot be imported ({err}). "
        f'Install it with: pip install "localbackend[{extra}]"'
    )
    error.name = err.name
    return error


def check_count(adapter: str, name: str, value: object, *, minimum: int) -> int:
    """``value`` if it is a whole number >= ``minimum``, else an IntegrationError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise IntegrationError(
            adapter, f"{name}={value!r} must be a whole number >= {minimum}",
            f"Pass for example {name}={max(minimum, 2)}.",
        )
    return value


def metric_value(result: Mapping[str, Any], metric: str) -> float | None:
    """``result[metric]`` as a finite float, or None when it is missing or not a number."""
    value = result.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None

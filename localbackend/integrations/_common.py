"""Pieces the tuner adapters share: their error, and reading what a trial reported."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Defined with the other errors, so that ``localbackend.IntegrationError``
# imports no adapter; kept importable from here.
from .._errors import IntegrationError

__all__ = ["IntegrationError", "metric_value", "missing_library"]


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

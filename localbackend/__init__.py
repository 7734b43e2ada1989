"""Run hyperparameter-tuning trials as local processes, with pause and resume.

The driver side is :class:`LocalBackend`; a trial script reports with
:func:`report` and checkpoints with :mod:`localbackend.checkpoint`.

Names are imported on first use, so that a trial script's
``from localbackend import report`` loads only the small reporting module and
not the driver's machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import checkpoint
    from ._errors import (
        BackendConfigurationError,
        CheckpointCopyError,
        ConfigError,
        EntryPointError,
        ExperimentError,
        ExperimentLockedError,
        ExperimentMovedError,
        IntegrationError,
        InvalidTransitionError,
        LocalBackendError,
        SupervisorError,
        TrialLaunchError,
        TrialNotFoundError,
    )
    from ._function import FunctionBackend
    from ._report import ReportError, report
    from ._types import Status, Trial, TrialResult
    from .checkpoint import CheckpointError
    from .core._backend import LocalBackend

__version__ = "0.1.0"

_WHERE = {
    "LocalBackend": ".core._backend",
    "FunctionBackend": "._function",
    "BackendConfigurationError": "._errors",
    "CheckpointCopyError": "._errors",
    "CheckpointError": ".checkpoint",
    "ConfigError": "._errors",
    "EntryPointError": "._errors",
    "ExperimentError": "._errors",
    "ExperimentLockedError": "._errors",
    "ExperimentMovedError": "._errors",
    "IntegrationError": "._errors",
    "InvalidTransitionError": "._errors",
    "LocalBackendError": "._errors",
    "SupervisorError": "._errors",
    "TrialLaunchError": "._errors",
    "TrialNotFoundError": "._errors",
    "ReportError": "._report",
    "report": "._report",
    "Status": "._types",
    "Trial": "._types",
    "TrialResult": "._types",
}

__all__ = [
    "BackendConfigurationError",
    "CheckpointCopyError",
    "CheckpointError",
    "ConfigError",
    "EntryPointError",
    "ExperimentError",
    "ExperimentLockedError",
    "ExperimentMovedError",
    "FunctionBackend",
    "IntegrationError",
    "InvalidTransitionError",
    "LocalBackend",
    "LocalBackendError",
    "ReportError",
    "Status",
    "SupervisorError",
    "Trial",
    "TrialLaunchError",
    "TrialNotFoundError",
    "TrialResult",
    "__version__",
    "checkpoint",
    "report",
]


def __getattr__(name: str) -> Any:
    if name == "checkpoint":
        return importlib.import_module(".checkpoint", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'localbackend' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

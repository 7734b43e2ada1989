"""Run hyperparameter-tuning trials as local processes, with pause and resume.

The driver side is :class:`LocalBackend`; a trial script reports with
:func:`report` and checkpoints with :mod:`localbackend.checkpoint`.
"""

from __future__ import annotations

from . import checkpoint
from ._backend import LocalBackend
from ._errors import (
    BackendConfigurationError,
    CheckpointCopyError,
    ConfigError,
    EntryPointError,
    InvalidTransitionError,
    LocalBackendError,
    SupervisorError,
    TrialLaunchError,
    TrialNotFoundError,
)
from ._report import report
from ._types import Status, Trial, TrialResult

__version__ = "0.1.0"

__all__ = [
    "BackendConfigurationError",
    "CheckpointCopyError",
    "ConfigError",
    "EntryPointError",
    "InvalidTransitionError",
    "LocalBackend",
    "LocalBackendError",
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

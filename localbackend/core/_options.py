"""Checks of the backend's constructor arguments, shared by ``__init__`` and ``restore``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from .._errors import BackendConfigurationError


def check_grace_period(grace_period: object) -> float:
    if (
        isinstance(grace_period, bool)
        or not isinstance(grace_period, (int, float))
        or not math.isfinite(grace_period)
        or grace_period < 0
    ):
        raise BackendConfigurationError(
            "grace_period", grace_period, "must be a finite number of seconds >= 0",
            "Use for example grace_period=10.0.",
        )
    return float(grace_period)


def check_gpu_counts(num_gpus: object, num_gpus_per_trial: object) -> None:
    if num_gpus is not None and (
        isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0
    ):
        raise BackendConfigurationError(
            "num_gpus", num_gpus, "must be a whole number >= 0 or None",
            "Leave it unset to detect the GPUs.",
        )
    if (
        isinstance(num_gpus_per_trial, bool)
        or not isinstance(num_gpus_per_trial, int)
        or num_gpus_per_trial < 1
    ):
        raise BackendConfigurationError(
            "num_gpus_per_trial", num_gpus_per_trial, "must be a whole number >= 1",
            "Use for example num_gpus_per_trial=1.",
        )


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise BackendConfigurationError(
            "env", env, "must be a dict of variable names to strings",
            "Pass e.g. {'OMP_NUM_THREADS': '1'}.",
        )
    clean: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise BackendConfigurationError(
                "env", {key: value}, f"has an invalid variable name {key!r}",
                "Use names without '=' or NUL characters.",
            )
        if not isinstance(value, str) or "\0" in value:
            raise BackendConfigurationError(
                "env", {key: value}, f"sets {key!r} to a value that is not a string",
                "Convert every value to str.",
            )
        clean[key] = value
    return clean


def check_experiment_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise BackendConfigurationError(
            "experiment_dir", str(root), "exists and is not a folder",
            "Choose a folder path, or remove the file.",
        )
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BackendConfigurationError(
            "experiment_dir", str(root), f"cannot be written ({probe} is not writable)",
            "Choose a folder you can write to.",
        )

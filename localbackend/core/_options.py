"""The backend's options: each argument checked, and the whole as stored for ``restore``."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._errors import BackendConfigurationError
from ._command import check_entry_point, parse_binary
from ._limits import (
    LONGEST_SECONDS,
    Retention,
    TrialLimits,
    check_cpus_per_trial,
    check_threads_per_trial,
)

T = TypeVar("T")
# More GPUs than one machine holds: the allocator keeps a count for each.
MOST_GPUS = 2**16


def check_grace_period(grace_period: object) -> float:
    if (
        isinstance(grace_period, bool)
        or not isinstance(grace_period, (int, float))
        or not math.isfinite(grace_period)
        or not 0 <= grace_period <= LONGEST_SECONDS
    ):
        raise BackendConfigurationError(
            "grace_period", grace_period,
            f"must be a finite number of seconds >= 0, at most {LONGEST_SECONDS}",
            "Use for example grace_period=10.0.",
        )
    return float(grace_period)


def check_gpu_counts(num_gpus: object, num_gpus_per_trial: object) -> None:
    if num_gpus is not None and (
        isinstance(num_gpus, bool) or not isinstance(num_gpus, int)
        or not 0 <= num_gpus <= MOST_GPUS
    ):
        raise BackendConfigurationError(
            "num_gpus", num_gpus, f"must be a whole number from 0 to {MOST_GPUS}, or None",
            "Leave it unset to detect the GPUs.",
        )
    if (
        isinstance(num_gpus_per_trial, bool)
        or not isinstance(num_gpus_per_trial, int)
        or not 1 <= num_gpus_per_trial <= MOST_GPUS
    ):
        raise BackendConfigurationError(
            "num_gpus_per_trial", num_gpus_per_trial,
            f"must be a whole number from 1 to {MOST_GPUS}",
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


def check_preload(preload: object) -> tuple[str, ...]:
    """The modules to preload for warm starts, each a dotted module name, without repeats."""
    if preload is None:
        return ()
    if isinstance(preload, (str, bytes)) or not isinstance(preload, Sequence):
        raise BackendConfigurationError(
            "preload", preload, "must be a list of module names",
            "Pass e.g. preload=['numpy', 'torch'].",
        )
    names: list[str] = []
    for name in preload:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise BackendConfigurationError(
                "preload", list(preload), f"holds {name!r}, which is not a module name",
                "Give importable names such as 'numpy' or 'torch.nn'.",
            )
        if name not in names:
            names.append(name)
    from ..launchers.local._zygote import cuda_modules

    refused = cuda_modules(names)
    if refused:
        raise BackendConfigurationError(
            "preload", names, f"holds {refused}, whose import initialises CUDA, and trials "
            "forked from a process with CUDA initialised cannot use the GPU",
            "Leave it out of preload and import it in the trial script.",
        )
    return tuple(names)


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


@dataclass
class BackendOptions:
    """The backend's settings, checked; as stored in the experiment folder for ``restore``.

    ``delete_checkpoints`` and ``entry_point`` may change after construction
    (Syne Tune's ``TrialBackend`` allows it); the backend journals each change.
    """

    entry_point: Path
    binary: tuple[str, ...]
    pass_args_as_json: bool
    delete_checkpoints: bool
    grace_period: float
    env: dict[str, str]
    num_gpus: int | None
    num_gpus_per_trial: int
    gpus_to_use: list[int] | None
    detach: bool
    cwd: Path
    rotate_gpus: bool = True
    # Modules imported once, for warm starts by fork (empty: every start is cold).
    preload: tuple[str, ...] = ()
    # Limits for every trial, and checkpoint retention (see ``_limits``).
    limits: TrialLimits = field(default_factory=TrialLimits)
    retention: Retention = field(default_factory=Retention)
    cpus_per_trial: int | None = None
    # Threads each trial's numeric libraries use (None: their own default).
    threads_per_trial: int | None = None

    @classmethod
    def check(
        cls,
        *,
        entry_point: str | os.PathLike[str],
        binary: str | Sequence[str] | None,
        pass_args_as_json: bool,
        delete_checkpoints: bool,
        grace_period: float,
        env: Mapping[str, str] | None,
        num_gpus: int | None,
        num_gpus_per_trial: int,
        gpus_to_use: Sequence[int] | None,
        detach: bool,
        cwd: Path,
        entry_point_must_exist: bool = True,
        rotate_gpus: bool = True,
        preload: Sequence[str] | None = None,
        limits: TrialLimits | None = None,
        retention: Retention | None = None,
        cpus_per_trial: int | None = None,
        threads_per_trial: int | None = None,
    ) -> BackendOptions:
        """The options, or our error naming the first bad value."""
        words = parse_binary(binary)
        if entry_point_must_exist:
            script = check_entry_point(entry_point, must_be_executable=not words)
        else:  # it may be gone after a crash; start and resume check it again
            script = Path(entry_point)
        check_gpu_counts(num_gpus, num_gpus_per_trial)
        return cls(
            entry_point=script, binary=words, pass_args_as_json=bool(pass_args_as_json),
            delete_checkpoints=bool(delete_checkpoints),
            grace_period=check_grace_period(grace_period), env=check_env(env),
            num_gpus=num_gpus, num_gpus_per_trial=num_gpus_per_trial,
            gpus_to_use=list(gpus_to_use) if gpus_to_use is not None else None,
            detach=bool(detach), cwd=cwd, rotate_gpus=bool(rotate_gpus),
            preload=check_preload(preload),
            limits=limits or TrialLimits(), retention=retention or Retention(),
            cpus_per_trial=check_cpus_per_trial(cpus_per_trial, 0),
            threads_per_trial=check_threads_per_trial(threads_per_trial),
        )

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> BackendOptions:
        """The options an experiment folder stored (its entry point may be gone)."""
        return cls.check(
            entry_point=saved["entry_point"],
            binary=saved["binary"],
            pass_args_as_json=bool(saved.get("pass_args_as_json")),
            delete_checkpoints=bool(saved.get("delete_checkpoints")),
            grace_period=saved["grace_period"],
            env=saved.get("env"),
            num_gpus=saved.get("num_gpus"),
            num_gpus_per_trial=int(saved.get("num_gpus_per_trial", 1)),
            gpus_to_use=saved.get("gpus_to_use"),
            detach=bool(saved.get("detach")),
            cwd=Path(saved.get("cwd") or os.getcwd()),
            entry_point_must_exist=False,
            rotate_gpus=bool(saved.get("rotate_gpus", True)),
            preload=saved.get("preload"),
            limits=TrialLimits.from_saved(saved.get("limits")),
            retention=Retention.from_saved(saved.get("retention")),
            cpus_per_trial=saved.get("cpus_per_trial"),
            threads_per_trial=saved.get("threads_per_trial"),
        )

    def saved(self) -> dict[str, Any]:
        """The form stored in the experiment folder."""
        return {
            "entry_point": str(self.entry_point),
            "binary": list(self.binary),
            "pass_args_as_json": self.pass_args_as_json,
            "delete_checkpoints": self.delete_checkpoints,
            "grace_period": self.grace_period,
            "env": self.env,
            "num_gpus": self.num_gpus,
            "num_gpus_per_trial": self.num_gpus_per_trial,
            "gpus_to_use": self.gpus_to_use,
            "detach": self.detach,
            "cwd": str(self.cwd),
            "rotate_gpus": self.rotate_gpus,
            "preload": list(self.preload),
            "limits": self.limits.saved(),
            "retention": self.retention.saved(),
            "cpus_per_trial": self.cpus_per_trial,
            "threads_per_trial": self.threads_per_trial,
        }


def made_by(saved: Mapping[str, Any], called: type[T]) -> type[T]:
    """The class an experiment's ``saved`` options name, where it is a subclass of ``called``.

    ``LocalBackend.restore`` rebuilds an experiment as the class that made it
    (a ``FunctionBackend``'s must write its function into each new trial);
    a class that is gone, or that is not a ``called``, gives ``called``.
    """
    module, _, qualname = str(saved.get("made_by") or "").partition(":")
    if not module:
        return called
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # a module that fails to import: the class is gone
        return called
    return found if isinstance(found, type) and issubclass(found, called) else called

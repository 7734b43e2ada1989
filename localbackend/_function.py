"""``FunctionBackend``: tune a Python function, each trial in its own process tree."""

from __future__ import annotations

import inspect
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from ._errors import BackendConfigurationError
from ._files import atomic_write_bytes
from ._paths import TrialPaths
from ._types import TrialResult
from .core._backend import LocalBackend

RUNNER_MODULE = "localbackend._function_trial"
# The runner's file stands as the entry point (it must exist); the runner is
# started with ``-m`` so that its package imports resolve.
RUNNER_FILE = Path(__file__).resolve().parent / "_function_trial.py"


def function_name(fn: object) -> str:
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def serialize_function(fn: Callable[..., Any]) -> bytes:
    """The bytes a trial loads ``fn`` from, or our error naming ``fn`` when it cannot."""
    name = function_name(fn)
    if not callable(fn):
        raise BackendConfigurationError(
            "fn", fn, "is not callable", "Pass a function defined at the top level of a module.",
        )
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise BackendConfigurationError(
            "fn", name, "cannot be pickled by reference: a lambda or a function defined "
            "inside another function has no name a trial process can import",
            "Define it with def at the top level of a module (or of your main script).",
        )
    main_script: str | None = None
    if getattr(fn, "__module__", None) == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file is None:
            raise BackendConfigurationError(
                "fn", name, "is defined in an interactive session, which a trial process "
                "cannot import",
                "Move it to a module (a .py file) and import it from there.",
            )
        if not os.path.isfile(main_file):
            # `python -` names its script "<stdin>": there is no file to run again.
            raise BackendConfigurationError(
                "fn", name, f"is defined in a main script that is no file ({main_file}), "
                "which a trial process cannot run again",
                "Save the script as a .py file and run that, or move the function to a module.",
            )
        main_script = os.path.abspath(main_file)
    try:
        pickled = pickle.dumps(fn)
        restored = pickle.loads(pickled)
    except (pickle.PicklingError, AttributeError, TypeError, ImportError) as err:
        raise BackendConfigurationError(
            "fn", name, f"cannot be pickled by reference ({err})",
            "Pass a function defined at the top level of an importable module.",
        ) from err
    if inspect.isfunction(fn) and restored is not fn:
        raise BackendConfigurationError(
            "fn", name, "does not pickle back to itself (its name points at another object)",
            "Pass the function under the name it was defined with.",
        )
    # As multiprocessing's spawn does: the trial imports from the driver's path.
    search_path = [os.path.abspath(entry or os.curdir) for entry in sys.path]
    header = {"main": main_script, "name": name, "sys_path": search_path}
    return pickle.dumps(header) + pickled


class FunctionBackend(LocalBackend):
    """A :class:`LocalBackend` whose trials call a Python function, not a script.

    ``fn`` is pickled by reference into each trial folder (``function.pkl``)
    and called in a process tree of its own by ``python -m
    localbackend._function_trial``, with the config keys it accepts as
    keyword arguments (and ``st_checkpoint_dir`` if it takes one), so a trial
    has every guarantee a script trial has: pause and resume, grace periods,
    limits, reaping, results read from its files. The function reports with
    ``localbackend.report`` and checkpoints with ``localbackend.checkpoint``;
    a mapping it returns is reported as its last result.

    ``fn`` must be importable by name: defined with ``def`` at the top level
    of a module, or of the main script (which the trial runs again under the
    name ``__mp_main__``, as ``multiprocessing`` does, so keep the driver's
    code under ``if __name__ == "__main__":``). A lambda or a local function
    raises ``BackendConfigurationError`` naming it.

    Args:
        fn: The function to tune.
        **options: Any keyword argument of :class:`LocalBackend` except
            ``binary`` and ``pass_args_as_json``, which the function runner sets.
    """

    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        for fixed in ("binary", "pass_args_as_json", "entry_point"):
            if fixed in options:
                raise BackendConfigurationError(
                    fixed, options[fixed], "is set by FunctionBackend itself",
                    "Leave it out; use LocalBackend to run a script with your own binary.",
                )
        self._function_payload: bytes | None = serialize_function(fn)
        super().__init__(RUNNER_FILE, binary=[sys.executable, "-m", RUNNER_MODULE],
                         pass_args_as_json=True, **options)

    def start_trial(
        self, config: Mapping[str, Any], checkpoint_trial_id: Optional[int] = None,
        **options: Any,
    ) -> TrialResult:
        """As :meth:`LocalBackend.start_trial`, with the function pickled into the trial folder."""
        with self._lock:
            self._payload()  # a restored backend with no function says so first
            return super().start_trial(config, checkpoint_trial_id, **options)

    def _write_trial_files(self, paths: TrialPaths) -> None:
        """The pickled function, in the new trial's folder before its first run."""
        atomic_write_bytes(paths.function, self._payload())

    def _payload(self) -> bytes:
        """The pickled function; after ``restore``, read back from a trial folder."""
        payload = getattr(self, "_function_payload", None)
        if payload is None:
            for trial_id in range(self.new_trial_id()):
                path = self._paths.trial(trial_id).function
                if path.exists():
                    payload = path.read_bytes()
                    break
            else:
                raise BackendConfigurationError(
                    "experiment_dir", str(self.experiment_dir),
                    "holds no trial with a pickled function to start new trials from",
                    "Create a new FunctionBackend(fn, experiment_dir=...) instead.",
                )
            self._function_payload = payload
        return payload

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["function"] = self._payload()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._function_payload = state["function"]


__all__ = ["FunctionBackend", "serialize_function"]

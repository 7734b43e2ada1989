"""The trial side of ``FunctionBackend``: ``python -m localbackend._function_trial``.

It loads the function pickled into the trial folder, reads the trial's config
from its config file (types intact, unlike ``--key value`` words), and calls
the function with the config keys it accepts as keyword arguments, plus
``st_checkpoint_dir`` when it takes one, as Syne Tune's ``PythonBackend``
does. The function reports with ``localbackend.report`` (or Syne Tune's
``Reporter``) and checkpoints with ``localbackend.checkpoint``; a mapping it
returns is reported as its last result. An exception ends the process with a
traceback on stderr and a non-zero exit, so the trial is ``Failed`` like a
script that raised.

The function is imported with the driver's ``sys.path`` in front of the
trial's own, and one defined in the driver's main script is found again, as
``multiprocessing``'s spawn start method finds them: the script is run under
the name ``__mp_main__``, so code under ``if __name__ == "__main__":`` does
not run again.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import runpy
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ._paths import TrialPaths
from ._protocol import ENV_CHECKPOINT_DIR, ENV_CONFIG_FILE, ENV_TRIAL_DIR, ST_CHECKPOINT_DIR_ARG


def load_function(path: Path) -> Callable[..., Any]:
    """The function in ``path``: a header (the main script, if any), then the pickle."""
    with open(path, "rb") as file:
        header = pickle.load(file)
        driver_path = [entry for entry in header.get("sys_path", []) if entry not in sys.path]
        sys.path[:0] = driver_path
        main_script = header.get("main")
        if main_script is not None:
            _import_main_script(main_script)
        function: Callable[..., Any] = pickle.load(file)
    return function


def _import_main_script(path: str) -> None:
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def call_arguments(function: Callable[..., Any], config: Mapping[str, Any],
                   checkpoint_dir: str | None) -> dict[str, Any]:
    """The keyword arguments ``function`` accepts, taken from the config."""
    values = dict(config)
    if checkpoint_dir is not None:
        values.setdefault(ST_CHECKPOINT_DIR_ARG, checkpoint_dir)
    parameters = inspect.signature(function).parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
        if ST_CHECKPOINT_DIR_ARG not in config:
            values.pop(ST_CHECKPOINT_DIR_ARG, None)
        return values
    names = {p.name for p in parameters
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {key: value for key, value in values.items() if key in names}


def main() -> None:
    trial_dir = Path(os.environ[ENV_TRIAL_DIR])
    function = load_function(TrialPaths(trial_dir).function)
    config = json.loads(Path(os.environ[ENV_CONFIG_FILE]).read_text())
    returned = function(**call_arguments(function, config, os.environ.get(ENV_CHECKPOINT_DIR)))
    if isinstance(returned, Mapping) and returned:
        from ._report import report

        report(**{str(key): value for key, value in returned.items()})


if __name__ == "__main__":
    main()

"""Turn a trial's config into the exact command, environment and folder to run.

Everything here is a pure function of its arguments: nothing is spawned and
nothing is written, so the command line can be tested without a process.
The argv is a list; no shell ever sees a config value.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import _protocol as proto
from .._errors import BackendConfigurationError, ConfigError, EntryPointError
from .._files import which
from .._paths import TrialPaths

# An option name a script's argparse can declare: no spaces, no leading dash,
# nothing a shell or argparse would read differently. Use it with fullmatch.
OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_RESERVED_KEYS = frozenset({proto.ST_CHECKPOINT_DIR_ARG, proto.ST_CONFIG_JSON_ARG})
# Set in every trial's environment unless it already has them. Unbuffered
# output makes a Python trial's prints and [tune-metric] lines reach the log
# as they happen, as they would in a terminal.
ENV_DEFAULTS = {"PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class LaunchSpec:
    """The command, environment and working folder of one run of a trial.

    The working folder is the driver's, as with Syne Tune, so scripts that
    open files by relative path run unchanged.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path


def parse_binary(binary: str | Sequence[str] | None) -> tuple[str, ...]:
    """The interpreter or launcher words, e.g. ``"torchrun --nproc_per_node=2"``.

    ``None`` means the running Python; an empty list or string means the
    entry point is run itself (it must then be executable).
    """
    if binary is None:
        return (sys.executable,)
    if not isinstance(binary, (str, list, tuple)):
        raise BackendConfigurationError(
            "binary", binary, "must be a string or a list of argv words",
            "Pass e.g. 'python3 -u' or ['torchrun', '--nproc_per_node=2'].",
        )
    try:
        words = shlex.split(binary) if isinstance(binary, str) else [str(w) for w in binary]
    except ValueError as err:
        raise BackendConfigurationError(
            "binary", binary, f"cannot be split into words ({err})", "Check its quotes."
        ) from err
    if not words:
        return ()
    program = words[0]
    if os.sep in program:
        found = program if os.access(program, os.X_OK) and os.path.isfile(program) else None
    else:
        found = which(program)
    if found is None:
        raise BackendConfigurationError(
            "binary",
            binary,
            f"names a program that is not found or not executable ({program!r})",
            "Give an absolute path or a program on PATH.",
        )
    return tuple(words)


def check_entry_point(
    entry_point: str | os.PathLike[str], *, must_be_executable: bool = False
) -> Path:
    """The entry point as an absolute path, or an error saying what is wrong with it."""
    path = Path(entry_point).expanduser()
    if not path.exists():
        raise EntryPointError(
            str(entry_point),
            "does not exist",
            f"Check the path; it is resolved against the current folder {os.getcwd()!r}.",
        )
    if not path.is_file():
        raise EntryPointError(str(entry_point), "is not a file", "Pass the path of a script.")
    if not os.access(path, os.R_OK):
        raise EntryPointError(
            str(entry_point), "is not readable", "Fix its permissions (chmod u+r)."
        )
    if must_be_executable and not (path.stat().st_mode & 0o111 and os.access(path, os.X_OK)):
        raise EntryPointError(
            str(entry_point), "is not executable, and no binary was given to run it",
            "Make it executable (chmod +x) or pass binary='python3'.",
        )
    return path.resolve()


def normalize_config(config: object) -> dict[str, Any]:
    """A JSON-clean copy of ``config``, or a ConfigError naming the bad entry.

    NaN and infinities are refused: JSON cannot carry them and a script
    would receive a value it cannot parse back reliably.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(
            "<config>", config, f"a config must be a dict, not {type(config).__name__}",
            "Pass a dict of option names to values.",
        )
    clean: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not OPTION_NAME.fullmatch(key):
            raise ConfigError(
                str(key), value, "the key cannot be a command-line option name",
                "Use letters, digits, '_', '-' and '.', starting with a letter or '_'.",
            )
        if key in _RESERVED_KEYS:
            raise ConfigError(
                key, value, "the key is reserved for the backend", "Rename this entry."
            )
        clean[key] = _json_value(key, value)
    return clean


def _json_value(key: str, value: Any) -> Any:
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ConfigError(
                key, value, f"the string is not valid Unicode ({err.reason})",
                "Remove the lone surrogate characters, or pass the value in another form.",
            ) from err
        return value
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(
                key, value, "NaN and infinite values cannot be passed to a trial",
                "Use a finite number, or a string such as 'inf' that the script parses.",
            )
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(key, item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(key, v) for k, v in value.items()}
    raise ConfigError(
        key, value, f"values of type {type(value).__name__} are not JSON-serializable",
        "Use str, int, float, bool, None, or lists and dicts of those.",
    )


def format_value(value: Any) -> str:
    """One argv word for a config value, as ``str(value)`` would give for scalars."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def config_arguments(config: Mapping[str, Any]) -> list[str]:
    """``--key value`` pairs, each key and each value its own argv word."""
    words: list[str] = []
    for key, value in config.items():
        words.append(f"--{key}")
        words.append(format_value(value))
    return words


def build_launch_spec(
    *,
    trial_id: int,
    paths: TrialPaths,
    binary: Sequence[str],
    entry_point: Path,
    config: Mapping[str, Any],
    pass_args_as_json: bool,
    inherited_env: Mapping[str, str],
    env_overrides: Mapping[str, str],
    gpus: Sequence[str] | None,
    iteration_start: int,
    run_start_time: float,
    cwd: Path,
) -> LaunchSpec:
    """The exact command, environment and folder for one run of a trial."""
    argv = [*binary, str(entry_point)]
    if pass_args_as_json:
        argv += [f"--{proto.ST_CONFIG_JSON_ARG}", str(paths.config)]
    else:
        argv += config_arguments(config)
    argv += [f"--{proto.ST_CHECKPOINT_DIR_ARG}", str(paths.checkpoints)]

    env = dict(inherited_env)
    env.update(env_overrides)
    env[proto.ENV_TRIAL_ID] = str(trial_id)
    env[proto.ENV_TRIAL_DIR] = str(paths.root)
    env[proto.ENV_CHECKPOINT_DIR] = str(paths.checkpoints)
    env[proto.ENV_RESULTS_FILE] = str(paths.results)
    env[proto.ENV_CONFIG_FILE] = str(paths.config)
    env[proto.ENV_ITERATION_START] = str(iteration_start)
    env[proto.ENV_RUN_START_TIME] = repr(run_start_time)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
    for key, value in ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return LaunchSpec(argv=tuple(argv), env=env, cwd=cwd)

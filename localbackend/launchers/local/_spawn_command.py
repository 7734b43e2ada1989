"""The supervisor's ``spawn`` command for one run, built in the driver.

Every launcher that runs a keeper (``LocalLauncher``, and the Dask launcher
on each worker) hands the supervisor this command; ``_keeper`` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson

from .._base import RunSpec


def _command_text(command: dict[str, Any]) -> str:
    """The text of a run's ``command.json``, encoded in the driver.

    A keeper is a fresh fork of the supervisor, for which the encoding would
    cost page faults on its way to the spawn. orjson refuses lone surrogates,
    which stand for the undecodable bytes of a path or a variable: such a
    command is written by the standard ``json``, which escapes them.
    """
    try:
        return orjson.dumps(command, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return json.dumps(command, indent=2)


def spawn_command(spec: RunSpec, *, executable: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The supervisor's ``spawn`` command for one run: what its keeper reads.

    ``executable`` is the program resolved on the host that runs the trial,
    and ``env`` the whole environment of the trial there. Every launcher
    that runs the keeper builds its command here.
    """
    paths = spec.paths
    return {
        "op": "spawn",
        "trial": spec.trial_id,
        "run": spec.run,
        "executable": executable,
        "argv": list(spec.argv),
        "env": dict(env),
        "cwd": str(spec.cwd),
        "stdout": str(paths.stdout),
        "stderr": str(paths.stderr),
        "results": str(paths.results),
        "exit_file": str(paths.exit_status),
        "run_file": str(paths.run_record),
        "checkpoints": str(paths.checkpoints),
        "checkpoint_request": str(paths.checkpoint_request),
        "command_file": str(paths.command),
        # What the keeper publishes as command.json: the variables we set, not the host's.
        "command_text": _command_text(
            {"run": spec.run, "argv": list(spec.argv), "cwd": str(spec.cwd),
             "env": dict(spec.env), "limits": spec.limits.as_record()},
        ),
        "delete_on_completion": spec.delete_checkpoints_on_completion,
        "grace": spec.grace_period,
        "limits": spec.limits.as_record(),
        "preload": list(spec.preload),
    }


__all__ = ["spawn_command"]

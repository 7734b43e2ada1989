"""Small helpers shared by the trial scripts the backend tests run.

A script talks to its test through files in its trial folder: it ``touch``es a
file when it reaches a point, and waits at a ``gate`` until the test creates
one. Every wait has a deadline so a script never outlives a broken test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEADLINE_SECONDS = 60.0


def trial_dir() -> Path:
    return Path(os.environ["LOCALBACKEND_TRIAL_DIR"])


def results_file() -> str:
    return os.environ["LOCALBACKEND_RESULTS_FILE"]


def write_json(name: str, obj: Any) -> None:
    """Publish a JSON file in the trial folder atomically, so a reader never sees half."""
    final = trial_dir() / name
    tmp = final.with_name(f".{name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, final)


def touch(name: str) -> None:
    write_json(name, {"pid": os.getpid()})


def gate(name: str) -> None:
    """Block until the test creates ``name`` in the trial folder."""
    path = trial_dir() / name
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            sys.stderr.write(f"trialkit: gave up waiting for {path}\n")
            os._exit(97)
        time.sleep(0.005)


def wait_for_path(path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            sys.stderr.write(f"trialkit: gave up waiting for {path}\n")
            os._exit(97)
        time.sleep(0.005)


def idle(seconds: float = DEADLINE_SECONDS, code: int = 98) -> None:
    """Sleep until killed, or exit with ``code`` once ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(code)


def option(name: str, default: str) -> str:
    """Value of ``--name VALUE`` in argv (the last one wins), without argparse's rules."""
    value = default
    args = sys.argv[1:]
    for index, arg in enumerate(args[:-1]):
        if arg == f"--{name}":
            value = args[index + 1]
    return value


def append_raw(data: bytes) -> None:
    """Append bytes to the results file with one write, as any language could."""
    fd = os.open(results_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)

"""What every command shares: the CLI's error, the tuner's file names, small file helpers."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .._errors import LocalBackendError
from .._paths import TunerPaths
from ..core._storage import atomic_write_json

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "CliError",
    "TunerPaths",
    "append_jsonl",
    "atomic_write_json",
    "driver_identity",
    "format_duration",
    "format_value",
    "iter_jsonl",
    "last_jsonl",
    "read_json",
    "trial_ids_on_disk",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# 2: tuner.json is a snapshot, and tuner-journal.jsonl holds the changes since.
TUNER_FORMAT_VERSION = 2


class CliError(LocalBackendError):
    """Bad input on the command line: printed as one line, exit code 2."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line with a single write, so concurrent readers see whole lines."""
    line = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """The parsed JSON file, or None if it does not exist or is not JSON."""
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
        return None


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Whole JSON-object lines of a file; an unfinished or broken line is skipped."""
    try:
        with open(path, "rb") as source:
            for line in source:
                if not line.endswith(b"\n"):
                    return
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    yield obj
    except (FileNotFoundError, NotADirectoryError):
        return


def last_jsonl(path: Path, block: int = 8192) -> dict[str, Any] | None:
    """The last whole JSON-object line of a file, read from its end."""
    try:
        with open(path, "rb") as source:
            source.seek(0, os.SEEK_END)
            end = source.tell()
            data = b""
            position = end
            while position > 0:
                step = min(block, position)
                position -= step
                source.seek(position)
                data = source.read(step) + data
                lines = data.split(b"\n")
                # The last element is after the final newline: unfinished or empty.
                complete = lines[:-1] if position == 0 else lines[1:-1]
                for line in reversed(complete):
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(obj, dict):
                        return obj
                if len(data) > 16 * block and complete:
                    return None
    except (FileNotFoundError, NotADirectoryError):
        return None
    return None


def trial_ids_on_disk(root: Path) -> list[int]:
    """Ids of the trial folders of an experiment, sorted."""
    ids = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name.isdigit() and entry.is_dir():
                    ids.append(int(entry.name))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(ids)


def driver_identity() -> dict[str, Any]:
    """Who runs this tune, for display only.

    Whether it still runs is asked of the experiment lock
    (``localbackend.core._lock.experiment_is_held``), never of this PID, which
    may have been reused.
    """
    import psutil

    return {
        "pid": os.getpid(),
        "create_time": psutil.Process().create_time(),
        "host": socket.gethostname(),
        "started": time.time(),
    }


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_value(value: Any) -> str:
    """A metric or config value, short enough for a table cell."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)

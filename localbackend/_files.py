"""Small file reads shared by the driver and the keeper (standard library only)."""

from __future__ import annotations

import json
import os
from typing import Any

_BLOCK = 1 << 20


def file_size(path: str | os.PathLike[str]) -> int:
    """Size of a file in bytes; 0 if it does not exist (yet, or any more)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def count_lines(path: str | os.PathLike[str], start: int = 0, end: int | None = None) -> int:
    """Newlines in ``path`` between two byte offsets (to the end of the file by default)."""
    if end is not None and end <= start:
        return 0
    count = 0
    try:
        with open(path, "rb") as source:
            source.seek(start)
            remaining = end - start if end is not None else None
            while remaining is None or remaining > 0:
                block = source.read(_BLOCK if remaining is None else min(remaining, _BLOCK))
                if not block:
                    break
                count += block.count(b"\n")
                if remaining is not None:
                    remaining -= len(block)
    except OSError:
        return 0
    return count


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from a small file, or None when it is missing or not an object."""
    try:
        with open(path, "rb") as source:
            value = json.loads(source.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

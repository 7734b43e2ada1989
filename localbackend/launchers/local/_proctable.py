"""Read the process table from ``/proc`` without psutil.

The supervisor and its keepers need only two facts about processes: who is
whose parent, and when a process started. Reading them directly keeps those
processes small (no psutil import) and safe to use inside signal handlers
(nothing is imported lazily).
"""

from __future__ import annotations

import os

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or ')'.
    return data[data.rfind(b")") + 2 :].decode().split()


def boot_time() -> float:
    """When the machine booted, as psutil computes it (``btime`` in /proc/stat)."""
    with open("/proc/stat", "rb") as stat:
        for line in stat:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise OSError("no btime line in /proc/stat")


def create_time(pid: int, booted: float) -> float:
    """Start time of ``pid`` in seconds since the epoch, equal to psutil's ``create_time``."""
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return booted + float(fields[19]) / _CLOCK_TICKS


def descendants(root: int) -> list[int]:
    """PIDs of every living descendant of ``root``, found through their parent PIDs."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found

"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

A container started with ``docker run --cpus=2`` on a 64-core host still has
all 64 cores in its affinity mask: the kernel lets its processes run on any
of them, but for only two cores' worth of time per period (CFS bandwidth
control), and threads beyond that wait. Sizing thread pools or workers by
the affinity alone would then run 32 times too many threads.

The quota is read from the cgroup of this process and of every ancestor up
to the hierarchy's mount, the tightest winning: ``cpu.max`` on cgroup v2
(``"max 100000"`` is no quota, ``"200000 100000"`` two cores),
``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` on cgroup v1 (a quota of -1
is none). The mounts and the process's place in each hierarchy come from
``/proc/self/mountinfo`` and ``/proc/self/cgroup``, so a container with or
without its own cgroup namespace, a systemd slice with ``CPUQuota=`` and a
hybrid v1/v2 host are all read where they are. A fraction of a core counts
as one. Anything unreadable or malformed counts as no quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_SELF = Path("/proc/self")


def usable_cores(proc: Path = PROC_SELF) -> int:
    """The cores this process may use: its affinity, at most its cgroup CPU quota (>= 1)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(proc)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cpu_quota(proc: Path = PROC_SELF) -> float | None:
    """The tightest cgroup CPU quota on this process, in cores, or None where there is none."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for membership in memberships:
        parts = membership.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, cgroup = parts
        if controllers == "":
            fstype, controller, read = "cgroup2", None, _v2_quota
        elif "cpu" in controllers.split(","):
            fstype, controller, read = "cgroup", "cpu", _v1_quota
        else:
            continue
        for folder in _own_and_ancestors(_mounts(mounts, fstype, controller), cgroup):
            quota = read(folder)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _mounts(lines: list[str], fstype: str, controller: str | None) -> list[tuple[str, Path]]:
    """The root and mount point of each mount of ``fstype`` (with ``controller``, for v1)."""
    found = []
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        # Six fields, then optional ones up to "-", then type, source, options.
        if dash < 6 or len(fields) < dash + 4 or fields[dash + 1] != fstype:
            continue
        if controller is not None and controller not in fields[dash + 3].split(","):
            continue
        found.append((_unescape(fields[3]), Path(_unescape(fields[4]))))
    return found


def _own_and_ancestors(mounts: list[tuple[str, Path]], cgroup: str) -> list[Path]:
    """This process's cgroup folder, then each parent up to the root of the mount it is under.

    ``cgroup`` is the path in the whole hierarchy; each mount shows the part
    of it below its root field (``/`` on a host or in a container with its own
    cgroup namespace; the container's cgroup where the host's hierarchy is
    bind-mounted without one). The mount whose root holds the path most
    closely is read; a mount of some other cgroup is never read. No mount
    holding it, or a path outside the cgroup namespace (``/../x``): nothing
    is read, as for no quota.
    """
    best: tuple[str, Path] | None = None
    for root, point in mounts:
        base = root.rstrip("/")
        if (cgroup == base or cgroup.startswith(base + "/")) and (
            best is None or len(base) > len(best[0])
        ):
            best = (base, point)
    if best is None:
        return []
    below = [part for part in cgroup[len(best[0]):].split("/") if part]
    if ".." in below:
        return []
    return [best[1].joinpath(*below[:depth]) for depth in range(len(below), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        words = (folder / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(words) != 2 or words[0] == "max":
        return None
    return _ratio(words[0], words[1])


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = (folder / "cpu.cfs_quota_us").read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space) decoded."""
    if "\\" not in field:
        return field
    out, index = [], 0
    while index < len(field):
        chunk = field[index + 1:index + 4]
        if field[index] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)

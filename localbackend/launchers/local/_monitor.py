"""The keeper's watch over a running tree: time, memory and output limits.

A keeper whose run has limits (see ``RunLimits``) checks them between
reaps, in the same thread, so that the decision to end the tree and the
signals that end it never race the reaping:

- ``time_limit``: the run's own running time, from spawn to now;
- ``memory_limit``: the memory of the whole tree. Where the keeper can
  create a cgroup v2 with the memory controller (``memory.max``), the run
  goes into one of its own and the kernel enforces the limit for every
  descendant (``setsid`` and double-forked ones included); otherwise the
  keeper sums the resident set size of every process of the tree as often
  as ``MEMORY_SAMPLE_SECONDS``, and when that is over the limit, their
  proportional set size, which counts shared pages once;
- ``heartbeat_timeout``: how long the tree may write nothing to its
  results, stdout or stderr. Before the tree is ended, every process of
  it that catches SIGUSR1 (``localbackend.report`` registers
  ``faulthandler`` for it) is sent SIGUSR1, so that a Python trial writes
  its stacks to stderr.

This module imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

from ._proctable import descendants

# How often the tree's memory is summed when no cgroup enforces the limit.
MEMORY_SAMPLE_SECONDS = 0.05
# Longest sleep between checks of the output sizes for the heartbeat.
HEARTBEAT_CHECK_SECONDS = 0.5
# How long a hung trial may take to write its stacks before it is ended.
STACK_DUMP_WAIT_SECONDS = 2.0
# Once the stacks start to arrive, the quiet time that says they are done.
STACK_DUMP_QUIET_SECONDS = 0.2
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CGROUP_ROOT = "/sys/fs/cgroup"
_SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)


class Verdict(NamedTuple):
    """Why the tree must end now: ``kind`` is "time_limit", "memory_limit" or "hang"."""

    kind: str
    grace: Optional[float] = None  # None: the run's grace period; 0: SIGKILL at once


class Monitor:
    """Checks one run's limits; ``check`` says when the tree must end."""

    def __init__(self, limits: Mapping[str, Any], watched: Sequence[str], keeper: int) -> None:
        self.time_limit: Optional[float] = _number(limits.get("time_limit"))
        memory = limits.get("memory_limit")
        self.memory_limit: Optional[int] = int(memory) if memory else None
        self.heartbeat: Optional[float] = _number(limits.get("heartbeat_timeout"))
        self.watched = list(watched)
        self.keeper = keeper
        self.started = time.monotonic()
        self.peak_memory = 0
        self.cgroup: Optional[Cgroup] = None
        self.mechanism: Optional[str] = None
        self._sizes = self._output_sizes()
        self._last_output = self.started
        self._dump_deadline: Optional[float] = None
        self._dump_quiet_since: Optional[float] = None
        self._stderr_at_dump = 0

    @property
    def active(self) -> bool:
        return bool(self.time_limit or self.memory_limit or self.heartbeat)

    def prepare(self, name: str) -> None:
        """Before the spawn: put the keeper (and so the run) in a cgroup of its own, if it can."""
        if not self.memory_limit:
            return
        self.cgroup = Cgroup.create(name, self.memory_limit)
        self.mechanism = "cgroup" if self.cgroup is not None else "rss-sampling"

    def started_now(self) -> None:
        """The tree has been spawned: running time and silence count from here."""
        self.started = self._last_output = time.monotonic()
        if self.cgroup is not None:
            self.cgroup.protect_keeper()

    def timeout(self, now: float) -> float:
        """Seconds until the next check is due."""
        due = []
        if self.time_limit and now < self.started + self.time_limit:
            due.append(self.started + self.time_limit - now)
        if self.memory_limit:
            due.append(MEMORY_SAMPLE_SECONDS if self.cgroup is None else 0.25)
        if self.heartbeat:
            due.append(min(HEARTBEAT_CHECK_SECONDS, self.heartbeat / 4))
        if self._dump_deadline is not None:
            due.append(0.05)
        return max(min(due, default=1.0), 0.005)

    def check(self, now: float) -> Optional[Verdict]:
        """A verdict when a limit is reached, else None."""
        if self.time_limit and now - self.started >= self.time_limit:
            return Verdict("time_limit")
        if self.memory_limit:
            verdict = self._check_memory()
            if verdict is not None:
                return verdict
        if self.heartbeat:
            return self._check_output(now)
        return None

    # -- memory --------------------------------------------------------------

    def _check_memory(self) -> Optional[Verdict]:
        assert self.memory_limit is not None  # only called when set
        if self.cgroup is not None:
            self.peak_memory = max(self.peak_memory, self.cgroup.peak())
            if self.cgroup.oom_kills():
                return Verdict("memory_limit", grace=0.0)
            return None
        used = tree_rss(self.keeper)
        if used > self.memory_limit:
            # Resident sizes count a page shared by two processes (a forked
            # worker pool, the libraries) twice: the proportional set size,
            # dearer to read, says whether the tree is really over.
            used = tree_pss(self.keeper)
        self.peak_memory = max(self.peak_memory, used)
        if used > self.memory_limit:
            # Over its budget, the tree gets no grace: the kernel would not give any.
            return Verdict("memory_limit", grace=0.0)
        return None

    # -- output --------------------------------------------------------------

    def _output_sizes(self) -> list[int]:
        sizes = []
        for path in self.watched:
            try:
                sizes.append(os.stat(path).st_size)
            except OSError:
                sizes.append(-1)
        return sizes

    def _check_output(self, now: float) -> Optional[Verdict]:
        sizes = self._output_sizes()
        if self._dump_deadline is not None:
            # Waiting for the stacks: they are done once stderr grew and went quiet.
            if sizes != self._sizes:
                self._sizes = sizes
                self._dump_quiet_since = now
            quiet = self._dump_quiet_since is not None and (
                now - self._dump_quiet_since >= STACK_DUMP_QUIET_SECONDS
            )
            return Verdict("hang") if quiet or now >= self._dump_deadline else None
        if sizes != self._sizes:
            self._sizes = sizes
            self._last_output = now
            return None
        assert self.heartbeat is not None  # only called when set
        if now - self._last_output < self.heartbeat:
            return None
        if ask_for_stacks(self.keeper):
            self._dump_deadline = now + STACK_DUMP_WAIT_SECONDS
            return None
        return Verdict("hang")

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the tree at the cgroup's ``memory.max``."""
        return self.cgroup is not None and self.cgroup.oom_kills() > 0

    def close(self) -> None:
        if self.cgroup is not None:
            self.peak_memory = max(self.peak_memory, self.cgroup.peak())
            self.cgroup.remove()

    def report(self) -> dict[str, Any]:
        """What the exit record says about the limits."""
        record: dict[str, Any] = {"running_time": time.monotonic() - self.started}
        if self.memory_limit:
            record["peak_memory"] = self.peak_memory
            record["memory_mechanism"] = self.mechanism
        return record


def _number(value: object) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and value else None


def tree(root: int) -> list[int]:
    """Every descendant of ``root``, through ``/proc/<pid>/task/<tid>/children`` where it exists."""
    found: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children", "rb") as children:
                    words = children.read().split()
            except FileNotFoundError:
                if pid == root and task == str(root):
                    return descendants(root)  # a kernel without the children files
                continue
            except OSError:
                continue
            for word in words:
                found.append(int(word))
                stack.append(int(word))
    return found


def tree_rss(root: int) -> int:
    """The resident set size of every descendant of ``root``, in bytes, summed.

    Pages shared between processes of the tree count once per process, so
    the sum can exceed what the tree really uses; it never falls short.
    """
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_pss(root: int) -> int:
    """The proportional set size of every descendant of ``root``, in bytes, summed.

    A page shared by N processes counts 1/N in each: the sum is what the
    tree uses. Read from ``/proc/<pid>/smaps_rollup``; a process whose file
    cannot be read counts its resident size.
    """
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
                line = next((line for line in rollup if line.startswith(b"Pss:")), None)
            if line is not None:
                total += int(line.split()[1]) * 1024
                continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def ask_for_stacks(root: int) -> bool:
    """SIGUSR1 to every process of the tree that catches it; True if any did."""
    asked = False
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status", "rb") as status:
                caught = next(
                    (line for line in status if line.startswith(b"SigCgt:")), b"SigCgt: 0"
                )
            if int(caught.split()[1], 16) & _SIGUSR1_BIT:
                os.kill(pid, signal.SIGUSR1)
                asked = True
        except (OSError, ValueError, IndexError):
            continue
    return asked


class Cgroup:
    """A cgroup v2 of the run's own, with ``memory.max``; the keeper moves itself in.

    Used only where cgroup v2 is mounted at ``/sys/fs/cgroup``, the keeper's
    cgroup is writable, and its ``cgroup.subtree_control`` has (or takes)
    the memory controller. Anything else returns None from ``create``, and
    the keeper samples the tree's memory instead.
    """

    def __init__(self, path: str, parent: str) -> None:
        self.path = path
        self.parent = parent

    @classmethod
    def create(cls, name: str, limit: int) -> Optional[Cgroup]:
        parent = _own_cgroup()
        if parent is None:
            return None
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(parent, "cgroup.subtree_control"), "rb") as control:
                enabled = control.read().split()
            if b"memory" not in enabled:
                with open(os.path.join(parent, "cgroup.subtree_control"), "wb") as control:
                    control.write(b"+memory")
            os.mkdir(path, 0o755)
        except OSError:
            return None
        group = cls(path, parent)
        try:
            group._write("memory.max", str(limit))
        except OSError:
            group.remove()
            return None
        try:
            group._write("memory.swap.max", "0")
        except OSError:
            pass  # no swap accounting: memory.max still holds
        try:
            group._write("cgroup.procs", str(os.getpid()))
        except OSError:
            group.remove()
            return None
        return group

    def protect_keeper(self) -> None:
        """After the spawn: leave the tree alone in the cgroup, which the OOM kill takes whole.

        The keeper moved in before the spawn so that the trial starts inside;
        now it moves back to its parent cgroup, which the kernel allows where
        the parent could delegate the memory controller (the root cgroup of
        a namespace). Where it cannot, it stays, exempt from the group kill by
        ``oom_score_adj`` -1000 if it may set that (set only now, so the trial
        did not inherit it); else the kernel kills the largest process alone
        and the keeper ends the rest of the tree when it sees the OOM kill.
        """
        try:
            with open(os.path.join(self.parent, "cgroup.procs"), "w", encoding="ascii") as procs:
                procs.write(str(os.getpid()))
        except OSError:
            try:
                with open("/proc/self/oom_score_adj", "w", encoding="ascii") as adjust:
                    adjust.write("-1000")
            except OSError:
                return
        try:
            self._write("memory.oom.group", "1")
        except OSError:
            pass

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w", encoding="ascii") as control:
            control.write(value)

    def _read(self, name: str) -> bytes:
        try:
            with open(os.path.join(self.path, name), "rb") as control:
                return control.read()
        except OSError:
            return b""

    def peak(self) -> int:
        text = self._read("memory.peak").strip() or self._read("memory.current").strip()
        return int(text) if text.isdigit() else 0

    def oom_kills(self) -> int:
        for line in self._read("memory.events").splitlines():
            words = line.split()
            if len(words) == 2 and words[0] in (b"oom_kill", b"oom_group_kill") and int(words[1]):
                return int(words[1])
        return 0

    def remove(self) -> None:
        """Move the keeper back out, then remove the (empty) cgroup."""
        try:
            with open(os.path.join(self.parent, "cgroup.procs"), "w", encoding="ascii") as procs:
                procs.write(str(os.getpid()))
        except OSError:
            pass
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def _own_cgroup() -> Optional[str]:
    """This process's cgroup v2 folder, if cgroup v2 is mounted where expected."""
    if not os.path.exists(os.path.join(_CGROUP_ROOT, "cgroup.controllers")):
        return None
    try:
        with open("/proc/self/cgroup", "rb") as own:
            lines = own.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(b"0::"):
            relative = line[3:].decode(errors="replace").lstrip("/")
            folder = os.path.join(_CGROUP_ROOT, relative)
            if os.access(folder, os.W_OK):
                return folder
    return None

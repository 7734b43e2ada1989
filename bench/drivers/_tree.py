"""What a whole process tree costs: CPU of every descendant, and its peak memory.

Standard library only (the Ray and Syne Tune venvs run this too). The
driver makes itself a child subreaper, so every descendant that outlives
its parent (a daemon, a double-forked helper, Ray's workers) is reparented
to it and reaped here: ``RUSAGE_CHILDREN`` then holds the CPU of the whole
tree. A thread samples the tree's memory every ``interval`` seconds: the sum
of PSS (shared pages split between the processes sharing them, so Ray's
shared object store is not counted once per worker), the driver's own peak,
and how many zombies were waiting at once.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import threading
import time
from typing import Any

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(name)] = (int(fields[1]), fields[0])
    return found


def descendants(root: int) -> dict[int, str]:
    """pid -> state letter of every descendant of ``root``."""
    table = _parents()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, str] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def _memory_kib(pid: int) -> int:
    """PSS of ``pid`` in KiB (RSS where smaps_rollup cannot be read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return 0


def _own_peak() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return float(int(line.split()[1]) * 1024)
    return 0.0


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class TreeMeter:
    """``with TreeMeter() as meter:`` around a run; ``meter.result()`` after it.

    ``driver_pid`` names the process whose peak RSS is the tuner's (a child
    such as the ``localbackend tune`` CLI); by default this process.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.driver_pid: int | None = None
        self.peak_tree = 0.0
        self.peak_driver = 0.0
        self.peak_zombies = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)
        self._start = (0.0, 0.0)
        self.wall_s = self.cpu_s = 0.0

    def __enter__(self) -> TreeMeter:
        become_subreaper()
        self._start = (time.perf_counter(), _cpu())
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.wall_s = time.perf_counter() - self._start[0]
        self._stop.set()
        self._thread.join()
        reap_everything(timeout=60.0)
        self.cpu_s = _cpu() - self._start[1]

    def _sample_until_stopped(self) -> None:
        me = os.getpid()
        while not self._stop.wait(self.interval):
            tree = descendants(me)
            live = [pid for pid, state in tree.items() if state != "Z"]
            total = sum(_memory_kib(pid) for pid in live) * 1024.0 + _memory_kib(me) * 1024.0
            self.peak_tree = max(self.peak_tree, total)
            self.peak_zombies = max(self.peak_zombies, len(tree) - len(live))
            self.peak_processes = max(self.peak_processes, len(live) + 1)
            if self.driver_pid is not None and self.driver_pid in tree:
                self.peak_driver = max(self.peak_driver, _vm_hwm(self.driver_pid))

    def result(self) -> dict[str, Any]:
        driver = self.peak_driver if self.driver_pid is not None else _own_peak()
        return {
            "wall_s": self.wall_s, "tree_cpu_s": self.cpu_s, "peak_tree_bytes": self.peak_tree,
            "peak_driver_bytes": driver, "peak_zombies": self.peak_zombies,
            "peak_processes": self.peak_processes,
        }


def _vm_hwm(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return float(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 0.0


def reap_everything(timeout: float) -> None:
    """Reap every descendant; those still alive after ``timeout`` are killed, then reaped."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            continue
        if time.monotonic() > deadline:
            for pid in descendants(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
        time.sleep(0.05)

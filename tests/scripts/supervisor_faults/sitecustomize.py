"""Fault injection for the supervisor process, loaded through ``PYTHONPATH``.

Tests in ``tests/test_supervisor_faults.py`` put this folder on
``PYTHONPATH`` before the backend starts its supervisor, which inherits the
driver's environment. Only in the supervisor (recognised by its command line,
``python -c <bootstrap> <event fd> <package folder> attach|detach``) and only
when the variables below are set, it:

- ``LOCALBACKEND_TEST_FORK_MARKER=<path>``: makes ``os.fork`` raise
  ``OSError(EAGAIN)`` while ``<path>`` exists, as a full process table would
  (``RuntimeError`` while it holds ``unexpected``: a failure of no known kind);
- ``LOCALBACKEND_TEST_FORK_LOG=<path>``: appends ``<caller> ok|failed`` to
  ``<path>`` for every fork, naming the supervisor function that asked for
  the keeper (``_handle`` for a new run, ``_reap`` for a queued one);
- ``LOCALBACKEND_TEST_MIN_FD=<n>``: keeps descriptors open up to ``n``, so
  every descriptor the supervisor opens afterwards has a number above it.

Every other process (trials, the test itself) is left alone.
"""

from __future__ import annotations

import errno
import os
import resource
import sys


def _is_supervisor() -> bool:
    argv = getattr(sys, "argv", [])
    return len(argv) == 4 and argv[0] == "-c" and argv[3] in ("attach", "detach")


def _install_fork_fault(marker: str, log: str | None) -> None:
    real_fork = os.fork

    def fork() -> int:
        # Frame 1 is _fork_keeper; frame 2 decided to fork.
        caller = sys._getframe(2).f_code.co_name
        failing = os.path.exists(marker)
        if log:
            with open(log, "a") as out:
                out.write(f"{caller} {'failed' if failing else 'ok'}\n")
        if failing:
            with open(marker) as kind:
                if kind.read().strip() == "unexpected":
                    raise RuntimeError("an injected failure of no known kind")
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return real_fork()

    os.fork = fork


def _hold_descriptors(minimum: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = minimum + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[int] = []
    while not held or held[-1] < minimum:
        held.append(os.open(os.devnull, os.O_RDONLY))
    _held.extend(held)


_held: list[int] = []

if _is_supervisor():
    _marker = os.environ.get("LOCALBACKEND_TEST_FORK_MARKER")
    if _marker:
        _install_fork_fault(_marker, os.environ.get("LOCALBACKEND_TEST_FORK_LOG"))
    if os.environ.get("LOCALBACKEND_TEST_MIN_FD"):
        _hold_descriptors(int(os.environ["LOCALBACKEND_TEST_MIN_FD"]))

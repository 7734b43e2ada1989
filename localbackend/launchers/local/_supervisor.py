"""The supervisor: the one process that owns every trial process.

The driver (the process that holds the ``LocalBackend``) starts this module
once, as ``python -c "...main()"``, and sends it one JSON command per line on
its stdin. For each run of a trial the supervisor forks a keeper (see ``_keeper``),
a copy of itself that runs the trial's process tree to its end and reports
it. Forking from this small, single-threaded process is cheap and safe,
where forking the driver (large, possibly multithreaded) would be neither.
A run of a trial whose previous run is still ending is queued until that
run's keeper is gone.

The supervisor notices the driver's death by end-of-file on its stdin, which
needs no cooperation from the driver (SIGKILL and OOM included), and then
ends every trial tree within about a second. Keepers get ``PR_SET_PDEATHSIG``
so that they do the same if the supervisor itself is killed.

This module imports only the standard library, and nothing runs at import
time.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time
from collections import deque
from typing import Any

from ._keeper import (
    KEEPER_SIGNALS,
    PR_SET_CHILD_SUBREAPER,
    Keeper,
    prctl,
    write_event,
)
from ._proctable import boot_time, descendants
from ._zygote import Zygote

# How long the supervisor waits for keepers after telling them to stop fast.
SHUTDOWN_WAIT_SECONDS = 3.0
# How much of a bad command line the supervisor's log shows.
_SHOWN_BYTES = 200
# Fields every command of an operation must carry, and the integer ones among them.
_FIELDS = {
    "spawn": (
        "trial", "run", "executable", "argv", "env", "cwd", "stdout", "stderr", "results",
        "exit_file", "run_file", "grace",
    ),
    "terminate": ("trial", "run"),
    "shutdown": (),
}
_INTEGER_FIELDS = ("trial", "run")
# The type of each field of a spawn command that the supervisor or a keeper
# reads (each kind checked by _fits); a field that may be left out
# is checked where it is given.
_SPAWN_TYPES = {
    "executable": "str", "cwd": "str", "stdout": "str", "stderr": "str", "results": "str",
    "exit_file": "str", "run_file": "str", "checkpoints": "str", "checkpoint_request": "str",
    "command_file": "str", "command_text": "str", "argv": "strings", "preload": "strings",
    "env": "variables", "grace": "number", "delete_on_completion": "bool", "limits": "object",
}
_WHAT = {
    "str": "a string", "strings": "a list of strings", "variables": "an object of strings",
    "number": "a number", "bool": "true or false", "object": "an object",
}


def _fits(kind: str, value: object) -> bool:
    """Whether ``value`` is of the kind ``_SPAWN_TYPES`` names."""
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if kind == "variables":
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "object": dict}[kind])


class BadCommand(ValueError):
    """A command line the supervisor cannot carry out; it is logged and skipped."""


def parse_command(line: bytes) -> dict[str, Any]:
    """The command on one line of the driver's pipe, or ``BadCommand`` saying what is wrong."""
    try:
        # The driver writes ASCII JSON; decoding first keeps json.loads from
        # guessing UTF-16 and giving a confusing message.
        command = json.loads(line.decode("utf-8"))
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise BadCommand(f"not valid JSON: {err}") from None
    if not isinstance(command, dict):
        raise BadCommand(f"a JSON {type(command).__name__}, not an object")
    if "op" not in command:
        raise BadCommand("no 'op' field")
    op = command["op"]
    fields = _FIELDS.get(op) if isinstance(op, str) else None
    if fields is None:
        raise BadCommand(f"unknown operation {_brief(op)}")
    missing = [name for name in fields if name not in command]
    if missing:
        raise BadCommand(f"{op!r} lacks {', '.join(missing)}")
    for name in _INTEGER_FIELDS:
        value = command.get(name)
        if name in fields and (not isinstance(value, int) or isinstance(value, bool)):
            raise BadCommand(f"{op!r} has {name}={_brief(value)}, not an integer")
    if op == "spawn":
        for name, kind in _SPAWN_TYPES.items():
            if name in command and not _fits(kind, command[name]):
                raise BadCommand(f"'spawn' has {name}={_brief(command[name])}, not {_WHAT[kind]}")
    return command


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _shorten(line: bytes) -> str:
    if len(line) <= _SHOWN_BYTES:
        return repr(line)
    return f"{line[:_SHOWN_BYTES]!r}... ({len(line)} bytes)"


class _Supervisor:
    """The supervisor's loop: commands in, keepers out, reaping throughout."""

    def __init__(self, event_fd: int, detach: bool) -> None:
        self.event_fd = event_fd
        # In detach mode the trials outlive the driver: on end-of-file the
        # supervisor only waits for its keepers, and a restored driver
        # re-attaches to them by PID.
        self.detach = detach
        self.keepers: dict[int, tuple[int, int]] = {}  # keeper pid -> (trial, run)
        self.active: dict[int, tuple[int, int]] = {}  # trial -> (keeper pid, run)
        self.pending: dict[int, deque[dict[str, Any]]] = {}
        # Warm starts: the modules this supervisor preloaded for its keepers.
        self.zygote = Zygote()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def serve(self) -> None:
        self.boot_time = boot_time()
        os.set_inheritable(self.event_fd, False)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, lambda s, f: None)
        signal.set_wakeup_fd(self.wake_w)
        buffer = b""
        stdin = sys.stdin.fileno()
        # poll, not select: select() cannot watch descriptors numbered 1024 or more.
        poller = select.poll()
        for fd in (stdin, self.wake_r):
            poller.register(fd, select.POLLIN)
        while True:
            try:
                readable = {fd for fd, _mask in poller.poll()}
            except InterruptedError:
                readable = set()
            if self.wake_r in readable:
                self._drain_wakeups()
            self._reap()
            # POLLHUP without POLLIN (the driver closed its end) also lands
            # here: the read then returns end-of-file.
            if stdin in readable:
                chunk = os.read(stdin, 1 << 16)
                if not chunk:
                    if self.detach:
                        self._outlive_driver()
                    else:
                        self._shutdown(fast=True)
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        command = parse_command(line)
                    except BadCommand as err:
                        # Whoever wrote it, it concerns no trial that runs:
                        # dying here would end every trial for one bad line.
                        self._log(f"skipped a bad command line ({err}): {_shorten(line)}")
                        continue
                    try:
                        if self._handle(command):
                            return
                    except Exception as err:  # one command's failure is not every trial's
                        self._log(f"could not carry out {_shorten(line)}: {err!r}")
                        self._report_unstarted(command, err)

    def _report_unstarted(self, command: dict[str, Any], err: Exception) -> None:
        """A spawn that failed before its keeper existed is that run's failure, as a fork's."""
        trial, run = command.get("trial"), command.get("run")
        if command["op"] == "spawn" and (trial, run) not in self.keepers.values():
            write_event(self.event_fd, {
                "ev": "spawn_failed", "trial": trial, "run": run, "errno": None,
                "error": f"{type(err).__name__}: {err} (in the supervisor)",
            })

    @staticmethod
    def _log(message: str) -> None:
        try:
            sys.stderr.write(f"localbackend supervisor: {message}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass  # nowhere to log to; the supervisor's work matters more

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _handle(self, command: dict[str, Any]) -> bool:
        op = command["op"]
        if op == "spawn":
            trial = int(command["trial"])
            if trial in self.active:
                self.pending.setdefault(trial, deque()).append(command)
            else:
                self._fork_keeper(command)
        elif op == "terminate":
            self._terminate(int(command["trial"]), int(command["run"]))
        elif op == "shutdown":
            self._shutdown(fast=False)
            return True
        return False

    def _terminate(self, trial: int, run: int) -> None:
        queue = self.pending.get(trial)
        if queue:
            for spec in list(queue):
                if int(spec["run"]) == run:
                    queue.remove(spec)
                    write_event(self.event_fd, {"ev": "cancelled", "trial": trial, "run": run})
                    return
        keeper = self.active.get(trial)
        if keeper is not None and keeper[1] == run:
            try:
                os.kill(keeper[0], signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _fork_keeper(self, spec: dict[str, Any]) -> int | None:
        """Fork the keeper of one run; its PID, or None when the fork failed.

        A failed fork (EAGAIN when the process limit is reached, ENOMEM) is
        that run's failure only: it is reported as ``spawn_failed``, and the
        supervisor carries on with every other trial.
        """
        supervisor_pid = os.getpid()
        trial, run = int(spec["trial"]), int(spec["run"])
        if spec.get("preload"):
            self._judge_warm_start(spec)
        # A stop may be sent the moment the keeper exists. Until the keeper
        # has its own handlers, the signal must wait, not reach the handlers
        # it inherits from the supervisor.
        signal.pthread_sigmask(signal.SIG_BLOCK, KEEPER_SIGNALS)
        try:
            pid = os.fork()
        except BaseException as err:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, KEEPER_SIGNALS)
            if not isinstance(err, OSError):
                raise
            write_event(
                self.event_fd,
                {
                    "ev": "spawn_failed", "trial": trial, "run": run, "errno": err.errno,
                    "error": f"{type(err).__name__}: {err} (fork failed in the supervisor)",
                },
            )
            return None
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, KEEPER_SIGNALS)
        if pid == 0:  # the keeper
            code = 0
            try:
                signal.set_wakeup_fd(-1)
                for fd in (self.wake_r, self.wake_w):
                    os.close(fd)
                # Let go of the command pipe, but keep fd 0 taken so that the
                # files the keeper opens never land on 0, 1 or 2.
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                Keeper(spec, self.event_fd, self.boot_time).run(supervisor_pid)
            except BaseException as err:  # report, never fall back into the supervisor loop
                code = 70
                try:
                    sys.stderr.write(f"localbackend keeper error: {err!r}\n")
                except Exception:
                    pass
            finally:
                os._exit(code)
        self.keepers[pid] = (trial, run)
        self.active[trial] = (pid, run)
        return pid

    def _judge_warm_start(self, spec: dict[str, Any]) -> None:
        """Mark a run asking for preloaded modules ``warm``, or say why it starts cold."""
        # Imported here, once, rather than by each keeper after its fork: the
        # keeper forks the trial with it. Before the verdict, which looks for
        # files next to the script named as modules imported here (it
        # imports random and runpy).
        from . import _warm_child

        reason = self.zygote.verdict(spec)
        spec["warm"] = reason is None
        if reason is None:
            _warm_child.compile_ahead(spec)
        first = reason is not None and self.zygote.note_once(reason)
        write_event(
            self.event_fd,
            {"ev": "start_mode", "trial": spec["trial"], "run": spec["run"], "reason": reason,
             "first": first},
        )

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            owner = self.keepers.pop(pid, None)
            if owner is None:
                continue  # an orphan from a keeper that died; already gone now
            trial, run = owner
            if self.active.get(trial, (None,))[0] == pid:
                del self.active[trial]
            if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
                # The keeper itself died: end whatever its tree left behind.
                self._kill_strays()
                write_event(
                    self.event_fd,
                    {"ev": "keeper_died", "trial": trial, "run": run, "status": status},
                )
            queue = self.pending.get(trial)
            # The next queued run of this trial; if its fork fails, the one
            # after it (each failure is reported on its own).
            while queue and trial not in self.active:
                self._fork_keeper(queue.popleft())

    def _outlive_driver(self) -> None:
        """Detach mode: keep the running trials, start no queued ones, exit after the last."""
        for queue in self.pending.values():
            for spec in queue:
                write_event(
                    self.event_fd, {"ev": "cancelled", "trial": spec["trial"], "run": spec["run"]}
                )
        self.pending.clear()
        # Nobody reads the event pipe any more; keepers must not block on it.
        os.close(self.event_fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.event_fd)
        os.close(devnull)
        while self.keepers:
            try:
                pid, _status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.keepers.pop(pid, None)

    def _kill_strays(self) -> None:
        """SIGKILL every process below us that no keeper owns (a dead keeper's tree)."""
        keepers = set(self.keepers)
        owned: set[int] = set()
        for keeper in keepers:
            owned.update(descendants(keeper))
        for pid in descendants(os.getpid()):
            if pid in keepers or pid in owned:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def _shutdown(self, fast: bool) -> None:
        for queue in self.pending.values():
            for spec in queue:
                write_event(
                    self.event_fd, {"ev": "cancelled", "trial": spec["trial"], "run": spec["run"]}
                )
        self.pending.clear()
        for pid in list(self.keepers):
            try:
                os.kill(pid, signal.SIGUSR1 if fast else signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + SHUTDOWN_WAIT_SECONDS
        while self.keepers and (not fast or time.monotonic() < deadline):
            self._reap()
            if self.keepers:
                time.sleep(0.01)
        for pid in list(self.keepers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_strays()
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except OSError as err:
                if err.errno != errno.EINTR:
                    break


def main() -> None:
    """Entry point of the supervisor: argv[1] is the event fd, argv[2] "detach" or "attach"."""
    _Supervisor(int(sys.argv[1]), detach=sys.argv[2] == "detach").serve()


if __name__ == "__main__":
    main()

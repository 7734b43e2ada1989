"""The supervisor: the one process that owns every trial process.

The driver (the process that holds the ``LocalBackend``) starts this module
once, as ``python -c "...main()"``, and sends it one JSON command per line on
its stdin. For each run of a trial the supervisor forks a *keeper*, a copy of
itself that:

* marks itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so every
  descendant of the trial, including ones that call ``setsid`` or
  double-fork, stays its descendant and can be found and signalled;
* starts the trial with ``posix_spawn`` in a new session;
* on SIGTERM from the supervisor, sends SIGTERM to every process group of
  the tree and SIGKILLs what is left after the grace period;
* reaps every descendant, so no zombie is left and no PID of the tree can be
  reused while the keeper might still signal it;
* when the whole tree is gone, writes the exit status to the trial folder and
  one JSON line to the event pipe that the driver reads.

Because the keeper is the parent or subreaper of everything it signals, and
reaps in the same thread that signals, a PID it signals is always one of its
own processes, never a stranger that reused the number.

The supervisor notices the driver's death by end-of-file on its stdin, which
needs no cooperation from the driver (SIGKILL and OOM included), and then
ends every trial tree within about a second. Keepers get ``PR_SET_PDEATHSIG``
so that they do the same if the supervisor itself is killed.

This module imports only the standard library and psutil, and nothing runs at
import time.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import sys
import time
from collections import deque
from typing import Any

# Grace period used when the driver has died: trees must be gone within ~2 s.
ORPHAN_GRACE_SECONDS = 0.8
# How long the supervisor waits for keepers after telling them to stop fast.
SHUTDOWN_WAIT_SECONDS = 3.0

_KEEPER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGUSR1})
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
# Messages up to PIPE_BUF bytes are written to a pipe atomically, so lines
# from several keepers never interleave.
_PIPE_BUF = 4096


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def _write_event(fd: int, event: dict[str, Any]) -> None:
    line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    if len(line) > _PIPE_BUF and "error" in event:
        event = dict(event, error=str(event["error"])[:1000])
        line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    view = memoryview(line)
    while view:
        try:
            written = os.write(fd, view)
        except BrokenPipeError:
            return  # the driver is gone; nobody is listening any more
        view = view[written:]


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _atomic_write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(obj, out)
        os.replace(tmp, path)
    except OSError:
        # The trial folder may have been removed by hand; the event still
        # carries the exit status to the driver.
        try:
            os.unlink(tmp)
        except OSError:
            pass


class _Keeper:
    """Runs one trial's process tree to its end (inside the forked keeper)."""

    def __init__(self, spec: dict[str, Any], event_fd: int) -> None:
        self.spec = spec
        self.event_fd = event_fd
        self.grace = float(spec["grace"])
        self.leader = 0
        self.terminating = False
        # Why the tree is being ended: "request" (pause or stop), "driver_lost"
        # (the driver died), "leftovers" (the main process had already exited).
        self.terminated_by: str | None = None
        self.kill_at = float("inf")

    # -- signalling ---------------------------------------------------------

    def _descendants(self) -> list[int]:
        import psutil

        try:
            return [p.pid for p in psutil.Process().children(recursive=True)]
        except psutil.Error:
            return []

    def _signal_groups(self, signum: int) -> None:
        groups = {self.leader} if self.leader else set()
        for pid in self._descendants():
            try:
                groups.add(os.getpgid(pid))
            except OSError:
                pass
        for group in groups:
            try:
                os.killpg(group, signum)
            except OSError:
                pass

    def _kill_everything(self) -> None:
        # New processes may be forked while we kill; a few rounds catch them.
        for _ in range(5):
            pids = self._descendants()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def begin_termination(self, grace: float, why: str) -> None:
        deadline = time.monotonic() + max(grace, 0.0)
        first = not self.terminating
        self.terminating = True
        if self.terminated_by is None or why == "driver_lost":
            self.terminated_by = why
        if first:
            self._signal_groups(signal.SIGTERM)
        if deadline < self.kill_at:
            self.kill_at = deadline
            signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))

    def _on_alarm(self, signum: int, frame: object) -> None:
        self._kill_everything()
        # Retry in case a process was in the middle of forking.
        signal.setitimer(signal.ITIMER_REAL, 0.5)

    # -- lifecycle ----------------------------------------------------------

    def run(self, supervisor_pid: int) -> None:
        spec = self.spec
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1)
        signal.signal(signal.SIGTERM, lambda s, f: self.begin_termination(self.grace, "request"))
        fast_grace = min(self.grace, ORPHAN_GRACE_SECONDS)
        signal.signal(
            signal.SIGUSR1, lambda s, f: self.begin_termination(fast_grace, "driver_lost")
        )
        signal.signal(signal.SIGALRM, self._on_alarm)
        if os.getppid() != supervisor_pid:
            return  # the supervisor died before we could be told to stop
        # The supervisor forked us with these signals blocked: a stop that
        # arrives before the trial's PID is known is handled once it is, so
        # that SIGTERM always reaches the trial.
        deferred = _KEEPER_SIGNALS
        try:
            self.leader = self._spawn()
        except OSError as err:
            _write_event(
                self.event_fd,
                {
                    "ev": "spawn_failed",
                    "trial": spec["trial"],
                    "run": spec["run"],
                    "errno": err.errno,
                    "error": f"{type(err).__name__}: {err}",
                },
            )
            return
        import psutil

        create_time = keeper_create_time = 0.0
        try:
            keeper_create_time = psutil.Process().create_time()
            create_time = psutil.Process(self.leader).create_time()
        except psutil.Error:  # the leader may already be gone; the time is informative only
            pass
        _write_event(
            self.event_fd,
            {
                "ev": "started",
                "trial": spec["trial"],
                "run": spec["run"],
                "pid": self.leader,
                "create_time": create_time,
                "keeper": os.getpid(),
                "keeper_create_time": keeper_create_time,
            },
        )
        signal.pthread_sigmask(signal.SIG_UNBLOCK, deferred)
        status = self._reap_all()
        code = os.waitstatus_to_exitcode(status)
        exit_status = {
            "trial": spec["trial"],
            "run": spec["run"],
            "returncode": code if code >= 0 else None,
            "signal": signal.Signals(-code).name if code < 0 else None,
            "terminated_by": self.terminated_by,
            "time": time.time(),
            "offsets": {
                "results": _file_size(spec["results"]),
                "stdout": _file_size(spec["stdout"]),
                "stderr": _file_size(spec["stderr"]),
            },
        }
        _atomic_write_json(spec["exit_file"], exit_status)
        _write_event(self.event_fd, {"ev": "exited", **exit_status})

    def _spawn(self) -> int:
        spec = self.spec
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(spec["stdout"], flags, 0o600)
        err = os.open(spec["stderr"], flags, 0o600)
        try:
            os.chdir(spec["cwd"])
            default_signals = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
            return os.posix_spawn(
                spec["executable"],
                spec["argv"],
                spec["env"],
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=default_signals,
            )
        finally:
            os.close(out)
            os.close(err)

    def _reap_all(self) -> int:
        leader_status = 0
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == self.leader:
                leader_status = status
                if not self.terminating and self._descendants():
                    # The trial's main process is done; what it left behind
                    # must not outlive it (and hold a GPU).
                    self.begin_termination(self.grace, "leftovers")
        signal.setitimer(signal.ITIMER_REAL, 0)
        return leader_status


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
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def serve(self) -> None:
        # Imported before any keeper is forked: a keeper must never import
        # inside a signal handler, where the import lock could deadlock.
        import psutil  # noqa: F401

        os.set_inheritable(self.event_fd, False)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGTERM, lambda s, f: None)
        signal.set_wakeup_fd(self.wake_w)
        buffer = b""
        stdin = sys.stdin.fileno()
        while True:
            try:
                readable, _, _ = select.select([stdin, self.wake_r], [], [])
            except InterruptedError:
                readable = []
            if self.wake_r in readable:
                self._drain_wakeups()
            self._reap()
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
                    if line.strip() and self._handle(json.loads(line)):
                        return

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
                    _write_event(self.event_fd, {"ev": "cancelled", "trial": trial, "run": run})
                    return
        keeper = self.active.get(trial)
        if keeper is not None and keeper[1] == run:
            try:
                os.kill(keeper[0], signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _fork_keeper(self, spec: dict[str, Any]) -> None:
        supervisor_pid = os.getpid()
        # A stop may be sent the moment the keeper exists. Until the keeper
        # has its own handlers, the signal must wait, not reach the handlers
        # it inherits from the supervisor.
        signal.pthread_sigmask(signal.SIG_BLOCK, _KEEPER_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _KEEPER_SIGNALS)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _KEEPER_SIGNALS)
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
                _Keeper(spec, self.event_fd).run(supervisor_pid)
            except BaseException as err:  # report, never fall back into the supervisor loop
                code = 70
                try:
                    sys.stderr.write(f"localbackend keeper error: {err!r}\n")
                except Exception:
                    pass
            finally:
                os._exit(code)
        trial, run = int(spec["trial"]), int(spec["run"])
        self.keepers[pid] = (trial, run)
        self.active[trial] = (pid, run)

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
                _write_event(
                    self.event_fd,
                    {"ev": "keeper_died", "trial": trial, "run": run, "status": status},
                )
            queue = self.pending.get(trial)
            if queue:
                self._fork_keeper(queue.popleft())

    def _outlive_driver(self) -> None:
        """Detach mode: keep the running trials, start no queued ones, exit after the last."""
        for queue in self.pending.values():
            for spec in queue:
                _write_event(
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
        import psutil

        keepers = set(self.keepers)
        for child in psutil.Process().children():
            if child.pid in keepers:
                continue
            try:
                for proc in [child, *child.children(recursive=True)]:
                    proc.kill()
            except psutil.Error:
                pass

    def _shutdown(self, fast: bool) -> None:
        for queue in self.pending.values():
            for spec in queue:
                _write_event(
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

"""The keeper: the process that runs one trial's process tree to its end.

The supervisor forks one keeper per run of a trial (see ``_supervisor``). The
keeper marks itself a child subreaper, so every descendant of the trial stays
its descendant whatever it does (``setsid``, double fork); starts the trial
in a new session with ``posix_spawn``; ends the tree on request (SIGTERM to
every process group, SIGKILL after the grace period); reaps everything; and
reports the exit on the event pipe and in the trial folder.

Because the keeper is the parent or subreaper of everything it signals, and
reaps in the same thread that signals, a PID it signals is always one of its
own processes, never a stranger that reused the number.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from typing import Any

from ..._files import (
    atomic_write_bytes,
    count_lines,
    delete_folder,
    file_size,
    read_json_object,
)
from ..._protocol import ENV_ITERATION_START, ENV_WARM_IMPORTS
from ._monitor import Monitor
from ._proctable import create_time, descendants

# Grace period used when the driver has died: trees must be gone within ~2 s.
ORPHAN_GRACE_SECONDS = 0.8
# Signals that start the end of the tree: a stop request, or the driver's loss.
KEEPER_SIGNALS = frozenset({signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2})
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# What a spawned trial's signals are reset to, built once in the supervisor:
# valid_signals() makes enum members, 0.2 ms of page faults in a fresh keeper.
_SPAWN_DEFAULT_SIGNALS = frozenset(map(int, signal.valid_signals())) - {
    signal.SIGKILL, signal.SIGSTOP,
}
# Messages up to PIPE_BUF bytes are written to a pipe atomically, so lines
# from several keepers never interleave.
_PIPE_BUF = 4096


_libc: ctypes.CDLL | None = None


def prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:  # loaded once in the supervisor; keepers inherit it
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def write_event(fd: int, event: dict[str, Any]) -> None:
    """One JSON line to the driver's event pipe, written atomically."""
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


def _write_json(path: str, obj: Any) -> None:
    """Publish a small JSON file atomically; a trial folder removed by hand is not an error."""
    try:
        atomic_write_bytes(path, json.dumps(obj).encode())
    except OSError:
        pass  # the event still carries the news to the driver


class Keeper:
    """Runs one trial's process tree to its end (inside the forked keeper)."""

    def __init__(self, spec: dict[str, Any], event_fd: int, boot_time: float) -> None:
        self.spec = spec
        self.event_fd = event_fd
        self.boot_time = boot_time
        self.grace = float(spec["grace"])
        self.leader = 0
        self.terminating = False
        # Why the tree is being ended: "request" (pause or stop), "driver_lost"
        # (the driver died), "leftovers" (the main process had already exited).
        self.terminated_by: str | None = None
        self.kill_at = float("inf")
        # Sizes of the results file and stdout log when this run started:
        # everything before them belongs to earlier runs.
        self.start_offsets: dict[str, int] = {}
        self.spawned_at = time.monotonic()
        self.monitor = Monitor(
            _limits_now(spec), [spec["results"], spec["stdout"], spec["stderr"]], os.getpid(),
        )

    # -- signalling ---------------------------------------------------------

    def _descendants(self) -> list[int]:
        return descendants(os.getpid())

    def _has_children(self) -> bool:
        """True while any descendant is left (as subreaper, they are all our children)."""
        try:
            os.waitpid(-1, os.WNOHANG)  # may reap one; the caller's loop reaps the rest
        except ChildProcessError:
            return False
        return True

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
        if self.terminated_by is None or why in ("driver_lost", "supervisor_lost"):
            self.terminated_by = why
        if first and grace > 0:
            self._signal_groups(signal.SIGTERM)
        elif first:
            # No grace (the memory limit, grace_period=0): no SIGTERM either,
            # whose handler would run in a tree that must end now.
            self._kill_everything()
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
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        # SIGUSR2 comes from the kernel when the supervisor dies.
        prctl(PR_SET_PDEATHSIG, signal.SIGUSR2)
        if os.getppid() != supervisor_pid:
            return  # the supervisor died before we could be told to stop
        # The supervisor forked us with these signals blocked: a stop that
        # arrives before the trial's PID is known is handled once it is, so
        # that SIGTERM always reaches the trial. Their handlers are installed
        # just before they are unblocked, after the spawn: not on its way.
        deferred = KEEPER_SIGNALS
        try:
            self._confine()
            self._write_command()
            self.leader = self._spawn()
        except OSError as err:
            self.monitor.close()  # a cgroup made for the run goes with it
            write_event(
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
        self.spawned_at = time.monotonic()
        self.monitor.started_now()
        leader_created = keeper_created = 0.0
        try:
            keeper_created = create_time(os.getpid(), self.boot_time)
            leader_created = create_time(self.leader, self.boot_time)
        except OSError:  # the leader may already be gone; the time is informative only
            pass
        # Written before the driver hears of the run, so that a driver that
        # dies now can still be followed by a restore that finds this run.
        _write_json(
            spec["run_file"],
            {
                "trial": spec["trial"], "run": spec["run"], "pid": self.leader,
                "create_time": leader_created, "keeper": os.getpid(),
                "keeper_create_time": keeper_created, "start_offsets": self.start_offsets,
            },
        )
        write_event(
            self.event_fd,
            {
                "ev": "started",
                "trial": spec["trial"],
                "run": spec["run"],
                "pid": self.leader,
                "create_time": leader_created,
                "keeper": os.getpid(),
                "keeper_create_time": keeper_created,
            },
        )
        self._install_handlers()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, deferred)
        status = self._reap_all() if self.monitor.active else self._reap_all_blocking()
        if self.monitor.oom_killed() and self.terminated_by in (None, "leftovers"):
            self.terminated_by = "memory_limit"  # the kernel enforced it, not the keeper
        self.monitor.close()
        code = os.waitstatus_to_exitcode(status)
        exit_status = {
            "trial": spec["trial"],
            "run": spec["run"],
            "returncode": code if code >= 0 else None,
            "signal": signal.Signals(-code).name if code < 0 else None,
            "terminated_by": self.terminated_by,
            "time": time.time(),
            "running_time": time.monotonic() - self.spawned_at,
            **{k: v for k, v in self.monitor.report().items() if k != "running_time"},
            "offsets": {
                "results": file_size(spec["results"]),
                "stdout": file_size(spec["stdout"]),
                "stderr": file_size(spec["stderr"]),
            },
        }
        _write_json(spec["exit_file"], exit_status)
        # The tree is gone: only now may its checkpoints go, and the keeper
        # is the one process sure to be here at that moment (the driver may
        # not poll again, or may have exited right after stop_all()).
        self._settle_checkpoints(code)
        write_event(self.event_fd, {"ev": "exited", **exit_status})

    def _install_handlers(self) -> None:
        """SIGUSR1 (the driver died) and SIGUSR2 (the supervisor died) end the tree fast."""
        fast = min(self.grace, ORPHAN_GRACE_SECONDS)
        signal.signal(signal.SIGTERM, lambda s, f: self.begin_termination(self.grace, "request"))
        signal.signal(signal.SIGUSR1, lambda s, f: self.begin_termination(fast, "driver_lost"))
        signal.signal(signal.SIGUSR2, lambda s, f: self.begin_termination(fast, "supervisor_lost"))
        signal.signal(signal.SIGALRM, self._on_alarm)

    def _settle_checkpoints(self, code: int) -> None:
        """Delete the run's checkpoints if the driver asked for it, or on completion.

        The driver writes its request before it reads ``exit.json``, and this
        keeper reads the request after writing ``exit.json``: so either the
        driver sees that the run has ended and acts itself, or the keeper sees
        the request. A ``keep`` request (a pause) overrides the deletion on
        completion, which applies only to a run that ended on its own with
        exit code 0.
        """
        spec = self.spec
        folder = spec.get("checkpoints")
        if not folder:
            return
        request = read_json_object(spec.get("checkpoint_request", ""))
        asked_for = request.get("run") if request else None
        action = request.get("action") if request and asked_for == spec["run"] else None
        if isinstance(asked_for, int) and asked_for > int(spec["run"]):
            # A later run was launched, so this one was paused, not completed.
            action = "keep"
        if action is None and spec.get("delete_on_completion"):
            ended_alone = self.terminated_by in (None, "leftovers")
            action = "delete" if code == 0 and ended_alone else None
        if action == "delete":
            try:
                delete_folder(folder)
            except OSError as err:
                # The run's end must still be reported; the driver deletes
                # again when it hears of it.
                _stderr_note(f"localbackend keeper: could not delete {folder}: {err}")

    def _confine(self) -> None:
        """Before the spawn: the cores and the cgroup the tree inherits from the keeper."""
        cpus = (self.spec.get("limits") or {}).get("cpus")
        if cpus:
            os.sched_setaffinity(0, [int(cpu) for cpu in cpus])
        self.monitor.prepare(f"localbackend-{os.getpid()}")

    def _write_command(self) -> None:
        """Publish the run's ``command.json``: what runs, and how its memory limit is enforced.

        A run that cannot record what it runs does not start (the error is
        the spawn's): the file is the one exact account of the command.
        """
        path, text = self.spec.get("command_file"), self.spec.get("command_text")
        if not path or text is None:
            return
        if self.monitor.mechanism is not None:  # known only here, after the cgroup's making
            command = dict(json.loads(text), memory_limit={
                "bytes": self.monitor.memory_limit, "mechanism": self.monitor.mechanism,
            })
            text = json.dumps(command, indent=2)
        atomic_write_bytes(path, text.encode())

    def _spawn(self) -> int:
        spec = self.spec
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(spec["stdout"], flags, 0o600)
        err = os.open(spec["stderr"], flags, 0o600)
        # The driver watches the results file from the run's start on.
        os.close(os.open(spec["results"], flags, 0o600))
        try:
            os.chdir(spec["cwd"])
            if spec.get("warm"):  # the supervisor preloaded modules: fork the trial
                from ._warm_child import fork_trial

                return fork_trial(
                    spec, self._environment(), out, err,
                    imports_folder=spec["env"].get(ENV_WARM_IMPORTS),
                )
            return os.posix_spawn(
                spec["executable"],
                spec["argv"],
                self._environment(),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=_SPAWN_DEFAULT_SIGNALS,
            )
        finally:
            os.close(out)
            os.close(err)

    def _environment(self) -> dict[str, str]:
        """The trial's environment, with the iteration counter's start made exact.

        ``ENV_WARM_IMPORTS`` is left out: it is for a check's warm child, which
        the keeper hands it to, not for the script. The driver counted the
        results of earlier runs when the resume was asked for; a paused run
        may have written more before it ended. Every earlier run is gone by
        now, so the results file can be counted.
        """
        env: dict[str, str] = self.spec["env"]
        if ENV_WARM_IMPORTS in env:
            env = {name: value for name, value in env.items() if name != ENV_WARM_IMPORTS}
        self.start_offsets = {
            "results": file_size(self.spec["results"]),
            "stdout": file_size(self.spec["stdout"]),
        }
        if int(self.spec["run"]) == 0:
            return env
        written = count_lines(self.spec["results"])
        if written > int(env.get(ENV_ITERATION_START, "0") or 0):
            env = dict(env, **{ENV_ITERATION_START: str(written)})
        return env

    def _reap_all_blocking(self) -> int:
        """Reap until no descendant is left; for a run without limits to watch."""
        leader_status = 0
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == self.leader:
                leader_status = status
                self._leader_gone()
        signal.setitimer(signal.ITIMER_REAL, 0)
        return leader_status

    def _reap_all(self) -> int:
        """Reap until no descendant is left, checking the run's limits in between.

        SIGCHLD is blocked and waited for with a timeout, so a child's end
        wakes the loop at once and the limits are checked on time.
        """
        leader_status = 0
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == self.leader:
                leader_status = status
                self._leader_gone()
            if pid:
                continue
            now = time.monotonic()
            if not self.terminating:
                verdict = self.monitor.check(now)
                if verdict is not None:
                    grace = self.grace if verdict.grace is None else verdict.grace
                    self.begin_termination(grace, verdict.kind)
                    continue
            # Once ending, the alarm kills what is left; only SIGCHLD matters.
            wait = 0.5 if self.terminating else self.monitor.timeout(now)
            signal.sigtimedwait({signal.SIGCHLD}, wait)
        signal.setitimer(signal.ITIMER_REAL, 0)
        return leader_status

    def _leader_gone(self) -> None:
        if not self.terminating and self._has_children():
            # The trial's main process is done; what it left behind
            # must not outlive it (and hold a GPU).
            self.begin_termination(self.grace, "leftovers")


def _limits_now(spec: dict[str, Any]) -> dict[str, Any]:
    """The run's limits, less the running time of an earlier run the driver had not counted.

    The keeper starts only once every earlier run of the trial has ended, so
    the ``exit.json`` of the run still ending at launch is there to read.
    """
    limits = dict(spec.get("limits") or {})
    uncounted = limits.get("uncounted_run")
    if limits.get("time_limit") and isinstance(uncounted, int):
        ended = read_json_object(spec["exit_file"])
        if ended is not None and ended.get("run") == uncounted:
            used = ended.get("running_time")
            if isinstance(used, (int, float)):
                limits["time_limit"] = max(float(limits["time_limit"]) - used, 0.01)
    return limits


def _stderr_note(text: str) -> None:
    """A line on the keeper's stderr (the supervisor's, which is the driver's)."""
    try:
        os.write(2, (text + "\n").encode(errors="replace"))
    except OSError:
        pass

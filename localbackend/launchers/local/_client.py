"""The driver's side of the supervisor: start it, send commands, read events.

See ``_supervisor`` for what the supervisor and its keepers do. Commands go
to the supervisor's stdin as JSON lines; events come back on a pipe as JSON
lines. Both pipes are close-on-exec in the driver, so a process the driver
starts for other reasons never keeps them open.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Optional

from ..._errors import SupervisorError
from ..._files import wait_readable
from ._first_import import FirstImport
from ._proctable import boot_time, create_time

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(2)); "
    "from localbackend.launchers.local._supervisor import main; main()"
)


# Events after which the supervisor no longer owns a run.
_RUN_ENDS = frozenset({"exited", "spawn_failed", "cancelled", "keeper_died"})


def _start_time(pid: int) -> float:
    try:
        return create_time(pid, boot_time())
    except OSError:
        return 0.0


def _forget_in_child(client_ref: weakref.ref[SupervisorClient]) -> None:
    """In a process forked from the driver: let go of the supervisor's pipes.

    The descriptors are pointed at /dev/null rather than closed, so that the
    file objects that still wrap them close something harmless later.
    """
    client = client_ref()
    if client is None:
        return
    numbers = [client._events_fd]
    if client._stdin is not None:
        try:
            numbers.append(client._stdin.fileno())
        except ValueError:
            pass
    if client._finalizer is not None:
        client._finalizer.detach()  # the supervisor is the parent's to end, not ours
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in numbers:
            if fd >= 0:
                os.dup2(null, fd)
    finally:
        os.close(null)
    client.forked_away = True


# How long a dropped backend waits for its supervisor to end its trees before
# it kills the supervisor (whose keepers then end them on PR_SET_PDEATHSIG).
_RELEASE_WAIT_SECONDS = 10.0


def _release_supervisor(
    process: subprocess.Popen[bytes], stdin: IO[bytes] | None, events_fd: int, detach: bool
) -> None:
    """Let go of a supervisor (on ``close()``, or when its backend is dropped) and reap it.

    End-of-file on its stdin is the supervisor's signal that the driver is
    gone: it ends every trial tree (or, in detach mode, waits for them) and
    exits. The process is always reaped, so no zombie is left and Popen has
    nothing to warn about.
    """
    if stdin is not None:
        try:
            stdin.close()
        except OSError:
            pass
    if events_fd >= 0:
        # Keepers that still report get EPIPE, which they ignore.
        os.close(events_fd)
    if detach:
        # Its trials may run for hours: reap it whenever it ends, off this
        # thread. At interpreter exit no thread can start, and none is needed.
        try:
            threading.Thread(target=process.wait, name="localbackend-reaper", daemon=True).start()
        except RuntimeError:
            pass
        return
    try:
        process.wait(timeout=_RELEASE_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


class SupervisorClient:
    """Owns the supervisor process for one backend.

    If the backend is dropped or left open at interpreter exit, a finalizer
    ends the supervisor and reaps it (see ``_release_supervisor``).
    """

    def __init__(
        self, detach: bool = False, on_start: Callable[[int, float], None] | None = None
    ) -> None:
        self.detach = detach
        # Called with the new supervisor's PID and start time, for the journal.
        self.on_start = on_start
        # Runs handed to the current supervisor whose end has not been heard of.
        self._spawned: set[tuple[int, int]] = set()
        self._pending: list[dict[str, Any]] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._stdin: IO[bytes] | None = None
        self._events_fd = -1
        self._buffer = b""
        self._lock = threading.Lock()
        self._fork_hook_registered = False
        self._finalizer: weakref.finalize[..., Any] | None = None
        # True in a child forked from the driver: this copy must not be used.
        self.forked_away = False
        # How each run asked to start warm started: None (warm) or why it started cold.
        self.start_modes: dict[tuple[int, int], Optional[str]] = {}
        # The supervisor's import of the preload modules (see ``_first_import``),
        # the runs a supervisor died importing for, to send to the next, and
        # whether the driver is letting go (then nothing is sent again).
        self.first_import = FirstImport()
        self._again: list[dict[str, Any]] = []
        self._closing = False

    @property
    def alive(self) -> bool:
        """Whether the current supervisor process is running."""
        return self._process is not None and self._process.poll() is None

    @property
    def events_fd(self) -> int:
        """The fd to wait on for events (-1 before the supervisor starts)."""
        return self._events_fd

    def ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        if self._process is not None:
            # The supervisor died under us. Its keepers are ending their trees
            # now; collect what they report before the pipe goes, so that no
            # run is left waiting for an exit that was already sent.
            self._pending.extend(self._drain_until_eof(deadline=time.monotonic() + 5.0))
        read_fd, write_fd = os.pipe()
        # The folder that holds the localbackend package, for the bootstrap.
        package_parent = str(Path(__file__).resolve().parents[3])
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable, "-c", _BOOTSTRAP, str(write_fd), package_parent,
                    "detach" if self.detach else "attach",
                ],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                # Its own session: a Ctrl-C in the driver's terminal is the
                # driver's to handle, not a signal to every trial at once.
                start_new_session=True,
            )
        except OSError as err:
            os.close(read_fd)
            raise SupervisorError(
                f"cannot start the supervisor process ({sys.executable}): {err}. "
                "Check that the interpreter runs and that the process limit is not reached."
            ) from err
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._events_fd = read_fd
        self._stdin = self._process.stdin
        self._buffer = b""
        self._finalizer = weakref.finalize(
            self, _release_supervisor, self._process, self._stdin, read_fd, self.detach
        )
        if not self._fork_hook_registered:
            # A child forked from the driver (multiprocessing's default) must
            # not hold the supervisor's stdin open, or the supervisor would not
            # see the driver die.
            forget = functools.partial(_forget_in_child, weakref.ref(self))
            os.register_at_fork(after_in_child=forget)
            self._fork_hook_registered = True
        if self.on_start is not None:
            self.on_start(self._process.pid, _start_time(self._process.pid))
        self.first_import.started()
        again, self._again = self._again, []
        for command in again:
            self._write(command)

    def _send(self, command: dict[str, Any]) -> None:
        self._check_owner()
        self.ensure_started()
        self._write(command)

    def _check_owner(self) -> None:
        if self.forked_away:
            raise SupervisorError(
                "this backend belongs to the process that created it, not to a forked child. "
                "Create a new LocalBackend in the child, or use the 'spawn' start method."
            )

    def _write(self, command: dict[str, Any]) -> None:
        line = json.dumps(command, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            stdin = self._stdin
            if stdin is None:
                raise SupervisorError("the supervisor is not running")
            try:
                stdin.write(line)
                stdin.flush()
            except (BrokenPipeError, ValueError) as err:
                raise SupervisorError(
                    "the supervisor process has exited; its trials were ended with it. "
                    "Create a new backend or restore this experiment."
                ) from err

    def spawn(self, command: dict[str, Any]) -> None:
        """Hand one ``spawn_command`` to the supervisor (cold, once preloading failed)."""
        self._check_owner()
        self.ensure_started()
        key = (int(command["trial"]), int(command["run"]))
        sent = self.first_import.command(command)
        if sent is not command:
            self.start_modes[key] = self.first_import.failure
        self._write(sent)
        self._spawned.add(key)

    def terminate(self, trial_id: int, run: int) -> None:
        """Ask for the end of a run's tree; at once, and never by starting a supervisor.

        A dead supervisor's keepers are already ending their trees (on
        ``PR_SET_PDEATHSIG``), and the end of each run is reported when the
        event pipe is drained.
        """
        self.first_import.cancelled(trial_id, run)
        if not self.alive or self.forked_away:
            return
        try:
            self._send({"op": "terminate", "trial": trial_id, "run": run})
        except SupervisorError:
            pass  # it died just now; see above

    def close_commands(self) -> None:
        """Close the supervisor's stdin, as its driver's death would.

        It then ends every tree fast (in detach mode, it outlives them) and
        exits; the ends of the runs still come on the event pipe until it closes.
        """
        self._closing = True
        with self._lock:
            stdin, self._stdin = self._stdin, None
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass

    def read_events(self) -> list[dict[str, Any]]:
        """Every event that has arrived, without blocking."""
        events, self._pending = self._pending, []
        if self._events_fd < 0:
            return events
        chunks = [self._buffer]
        eof = False
        while True:
            try:
                chunk = os.read(self._events_fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        events.extend(self._parse(b"".join(chunks)))
        if eof:
            events.extend(self._lost_runs())
            self.close_pipes()
            if self._again:  # to a new supervisor, cold: the old one died importing
                try:
                    self.ensure_started()
                except SupervisorError:
                    again, self._again = self._again, []
                    events.extend({"ev": "run_lost", "trial": c["trial"], "run": c["run"]}
                                  for c in again)
        return events

    def _parse(self, data: bytes) -> list[dict[str, Any]]:
        *lines, self._buffer = data.split(b"\n")
        events = [json.loads(line) for line in lines if line.strip()]
        events = [event for event in events if not self._took_start_mode(event)]
        for event in events:
            if event["ev"] in _RUN_ENDS:
                self._spawned.discard((int(event["trial"]), int(event["run"])))
        return events

    def _took_start_mode(self, event: dict[str, Any]) -> bool:
        """Keep a ``start_mode`` event (warm or cold, see ``_zygote``); warn once per reason."""
        if event["ev"] != "start_mode":
            return False
        self.first_import.answered()
        reason = event.get("reason")
        self.start_modes[(int(event["trial"]), int(event["run"]))] = reason
        if reason and event.get("first"):
            _warn_cold(event["trial"], reason)
        return True

    def _lost_runs(self) -> list[dict[str, Any]]:
        """One ``run_lost`` event for every run the dead supervisor never reported ended.

        Except for the runs it died importing the preload modules for, which
        it never started: they go to the next supervisor, cold.
        """
        if not self._closing and self.first_import.importing:
            again = self.first_import.died(self._returncode())
            reason = self.first_import.failure
            if reason is not None:
                _warn_cold(min((c["trial"] for c in again), default="-"), reason)
            for command in again:
                key = (int(command["trial"]), int(command["run"]))
                self.start_modes[key] = reason
                self._spawned.discard(key)
            self._again.extend(again)
        lost = [{"ev": "run_lost", "trial": t, "run": r} for t, r in sorted(self._spawned)]
        self._spawned.clear()
        return lost

    def _returncode(self) -> Optional[int]:
        """How the supervisor whose event pipe just closed ended (None if it has not)."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            return None

    def _drain_until_eof(self, deadline: float) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self._events_fd >= 0:
            while time.monotonic() < deadline:
                wait_readable([self._events_fd], deadline - time.monotonic())
                try:
                    chunk = os.read(self._events_fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                events.extend(self._parse(self._buffer + chunk))
        events.extend(self._lost_runs())
        self.close_pipes()
        return events

    def shutdown(self) -> None:
        """Stop every trial (with its grace period) and wait for the supervisor."""
        if self._process is None:
            return
        self._closing = True
        try:
            self._send({"op": "shutdown"})
        except SupervisorError:
            pass
        self._pending.extend(self.read_events())
        if self.first_import.importing and not self.detach and self._process is not None:
            # Still importing the preload modules, it has no keeper: its runs
            # were never started, and its import may never end.
            self._process.kill()
        # Keep reading events while the trees end: a keeper blocked on a full
        # event pipe would never exit, and neither would the supervisor.
        while self._process is not None and self._process.poll() is None:
            if self._events_fd < 0:
                self._process.wait()
                break
            wait_readable([self._events_fd], 0.1)
            self._pending.extend(self.read_events())
        self.close_pipes()

    def close_pipes(self) -> None:
        """Let go of the supervisor: close both pipes and reap it (see ``_release_supervisor``)."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        process, self._process = self._process, None
        stdin, self._stdin = self._stdin, None
        events_fd, self._events_fd = self._events_fd, -1
        if process is not None:
            _release_supervisor(process, stdin, events_fd, self.detach)
        else:
            if stdin is not None:
                stdin.close()
            if events_fd >= 0:
                os.close(events_fd)


def _warn_cold(trial: object, reason: str) -> None:
    from ._zygote import ColdStartWarning

    warnings.warn(
        ColdStartWarning(
            f"trial {trial} starts cold, and so will every run for the same reason: {reason}"
        ),
        stacklevel=3,
    )

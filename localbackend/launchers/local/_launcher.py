"""``LocalLauncher``: trials on this machine, through the supervisor and its keepers.

The driver's side of the local launcher. It owns the supervisor process
(``_client``), turns the supervisor's JSON events into typed run events,
resolves what belongs to this host (the program to run, the inherited
environment, the GPUs), and follows the runs that an earlier driver left
running in detach mode, whose keepers are not this supervisor's children.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

from ..._errors import LocalBackendError
from ..._files import read_json_object, which
from ..._paths import TrialPaths
from .._base import (
    Launcher,
    LauncherCapabilities,
    RunEvent,
    RunExited,
    RunHandle,
    RunLost,
    RunNotStarted,
    RunSpec,
    RunStarted,
)
from ._client import SupervisorClient
from ._gpus import detect_gpus
from ._spawn_command import spawn_command

_CAPABILITIES = LauncherCapabilities(detach=True, local_files=True, host_gpus=True)
_KEEPER_DIED = "the process supervising this trial died"


class LocalLauncher(Launcher):
    """Runs every trial as a process tree on this machine.

    One supervisor process, started with the first run, forks a keeper for
    each run; the keeper is a child subreaper that starts the trial in a new
    session, ends its whole tree on request (SIGTERM, then SIGKILL after the
    grace period) and reaps every descendant. If the driver dies, every tree
    ends within about a second, unless the backend runs in detach mode.
    """

    def __init__(self) -> None:
        self._client: SupervisorClient | None = None
        self._host = os.uname().nodename  # socket.gethostname(), without importing socket
        # Runs of an earlier driver that this one follows, by (trial, run).
        self._attached: dict[tuple[int, int], tuple[RunHandle, TrialPaths]] = {}

    @property
    def capabilities(self) -> LauncherCapabilities:
        return _CAPABILITIES

    @property
    def client(self) -> SupervisorClient:
        """The supervisor's client (after ``open``)."""
        if self._client is None:
            raise LocalBackendError("this launcher is not open: call open() first "
                                    "(LocalBackend opens the launcher it is given)")
        return self._client

    def open(self, *, detach: bool, on_session: Callable[[dict[str, Any]], None]) -> None:
        def started(pid: int, create_time: float) -> None:
            on_session({"pid": pid, "create_time": create_time})

        self._client = SupervisorClient(detach=detach, on_start=started)

    def start(self, spec: RunSpec) -> None:
        self.client.spawn(spawn_command(
            spec, executable=resolve_program(spec.argv[0]), env=spec.environment(os.environ),
        ))

    def ensure_ready(self) -> None:
        """Start the supervisor now, so that a failure shows before a trial exists."""
        self.client.ensure_started()

    def terminate(self, trial_id: int, run: int) -> None:
        attached = self._attached.get((trial_id, run))
        if attached is not None:
            _ask_keeper_to_end(attached[0])
        elif self._client is not None:
            self._client.terminate(trial_id, run)

    def events(self) -> list[RunEvent]:
        events = [] if self._client is None else [
            typed_event(event, self._host) for event in self._client.read_events()
        ]
        for (trial_id, run), (handle, paths) in list(self._attached.items()):
            # Only once the keeper is gone: after exit.json it still settles the
            # checkpoints, and a resumed run must not start before that.
            if self.is_alive(handle):
                continue
            del self._attached[(trial_id, run)]
            events.append(attached_run_end(trial_id, run, paths))
        return events

    def fileno(self) -> Optional[int]:
        if self._client is None or self._client.events_fd < 0:
            return None
        return self._client.events_fd

    @property
    def needs_polling(self) -> bool:
        """Runs of an earlier driver are followed by polling their files."""
        return bool(self._attached)

    def is_alive(self, handle: RunHandle) -> bool:
        return process_matches(handle.keeper, handle.keeper_create_time)

    def attach(self, handle: RunHandle, paths: TrialPaths) -> None:
        self._attached[(handle.trial_id, handle.run)] = (handle, paths)

    def wait_for_run_end(self, handle: RunHandle, timeout: float) -> None:
        _wait_for_exit(handle.keeper, handle.keeper_create_time, timeout, whole_tree=True)

    def wait_for_session_end(self, session: Mapping[str, Any], timeout: float) -> None:
        if "lease" in session:
            # The earlier driver ran its trials elsewhere (DaskLauncher): they
            # end once its lease has gone.
            from ..dask._lease import wait_for_lease_end

            wait_for_lease_end(str(session["lease"]), float(session["lease_timeout"]), timeout)
            return
        # The supervisor ends every trial tree, then exits, once its driver is gone.
        _wait_for_exit(int(session["pid"]), float(session["create_time"]), timeout)

    def gpu_devices(self, env: Mapping[str, str]) -> list[str]:
        inherited = dict(os.environ)
        inherited.update(env)
        return detect_gpus(inherited)

    def cpu_devices(self) -> list[str]:
        return [str(cpu) for cpu in sorted(os.sched_getaffinity(0))]

    def unstarted(self, trial_id: int, runs: Iterable[int]) -> bool:
        client = self._client
        return client is not None and all(client.first_import.holds(trial_id, r) for r in runs)

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.shutdown()
        self._attached.clear()

    def let_go(self) -> None:
        if self._client is not None:
            self._client.close_pipes()
        self._attached.clear()


def attached_run_end(trial_id: int, run: int, paths: TrialPaths) -> RunEvent:
    """The end of a followed run whose keeper is gone: what its ``exit.json`` says, or lost."""
    exit_status = read_json_object(paths.exit_status)
    if exit_status is not None and exit_status.get("run") == run:
        return RunExited.from_record(exit_status)
    return RunLost(trial_id, run, _KEEPER_DIED)


def resolve_program(program: str) -> str:
    """The absolute path of a program on this host, as ``posix_spawn`` needs it."""
    if os.sep in program:
        return os.path.abspath(program)
    return which(program) or program


def typed_event(event: Mapping[str, Any], host: str) -> RunEvent:
    """The typed form of one of the supervisor's JSON events (a keeper on ``host``)."""
    kind = event["ev"]
    trial_id, run = int(event["trial"]), int(event["run"])
    if kind == "started":
        return RunStarted(trial_id, run, RunHandle.of_start(trial_id, run, event, host))
    if kind == "exited":
        return RunExited.from_record(event)
    if kind == "spawn_failed":
        return RunNotStarted(
            trial_id, run, f"the process could not be started: {event.get('error')}"
        )
    if kind == "cancelled":
        return RunNotStarted(trial_id, run, "cancelled before it started", cancelled=True)
    if kind == "keeper_died":
        return RunLost(trial_id, run, _KEEPER_DIED)
    return RunLost(trial_id, run, "the supervisor process ended unexpectedly")


def process_matches(pid: int, create_time: float) -> bool:
    """True if ``pid`` is alive and is the process that started at ``create_time``."""
    import psutil

    try:
        process = psutil.Process(pid)
        same = abs(float(process.create_time()) - create_time) < 0.01
        return same and bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _ask_keeper_to_end(handle: RunHandle) -> None:
    """SIGTERM the keeper of an earlier driver's run: it ends its tree within the grace period.

    A keeper already ending its tree keeps its first deadline.
    """
    if process_matches(handle.keeper, handle.keeper_create_time):
        try:
            os.kill(handle.keeper, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _wait_for_exit(pid: int, created: float, timeout: float, *, whole_tree: bool = False) -> None:
    """Wait for a dead driver's supervisor or keeper to finish ending its trees.

    After ``timeout`` it is killed: a supervisor's keepers then get SIGUSR2
    from the kernel and end their trees, but a keeper's own tree would be
    orphaned, so with ``whole_tree`` every descendant is killed first.
    """
    import psutil

    deadline = time.monotonic() + timeout
    while process_matches(pid, created) and time.monotonic() < deadline:
        time.sleep(0.02)
    if not process_matches(pid, created):
        return
    victims = []
    if whole_tree:
        try:
            victims = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            victims = []
    try:
        os.kill(pid, signal.SIGSTOP if whole_tree else signal.SIGKILL)
    except ProcessLookupError:
        return
    if not whole_tree:
        _wait_until_dead(pid, created)
        return
    # Stopped, the keeper reaps nothing, so no PID below it can be reused
    # while its tree is killed; a few rounds catch what was forking. Then
    # the keeper goes too.
    for _ in range(5):
        try:
            victims = psutil.Process(pid).children(recursive=True) or victims
        except psutil.Error:
            pass
        if not victims:
            break
        for victim in victims:
            try:
                victim.kill()
            except psutil.Error:
                pass
        victims = []
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_until_dead(pid, created)


# A SIGKILLed process is gone within moments; this bounds the wait for it.
_DEATH_WAIT_SECONDS = 5.0


def _wait_until_dead(pid: int, created: float) -> None:
    """Wait until a process just sent SIGKILL is gone or a zombie: callers rely on it."""
    deadline = time.monotonic() + _DEATH_WAIT_SECONDS
    while process_matches(pid, created) and time.monotonic() < deadline:
        time.sleep(0.005)

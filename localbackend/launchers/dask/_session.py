"""On a Dask worker: one supervisor per driver, shared by that driver's runs there.

The runs of one driver (one ``DaskLauncher``, named by its token) on one
worker process share a supervisor, started with the first of them, exactly
as ``LocalLauncher`` starts one for its driver. A reader thread takes the
supervisor's events and hands each to the task that waits for its run, and
watches the driver's lease: when it goes stale or is closed, the
supervisor's stdin is closed, as a local driver's death would close it, and
the supervisor ends every tree fast; in detach mode the trees run on, and
the session ends once they have.

The supervisor's stdin is held by the worker process, so if the worker dies
(even by SIGKILL), the supervisor sees end-of-file and ends the trees: a
keeper never outlives its worker. Nothing here uses ``PR_SET_PDEATHSIG`` on
the supervisor, which would fire when the task's thread, not the worker,
ends.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..._files import wait_readable
from ..local._client import SupervisorClient
from ._lease import FRESH, LeaseWatch

# Events after which the supervisor no longer owns a run.
RUN_ENDS = frozenset({"exited", "spawn_failed", "cancelled", "keeper_died", "run_lost"})
# How often the reader looks at the lease.
LEASE_CHECK_SECONDS = 0.25

_SESSIONS: dict[str, Session] = {}
_SESSIONS_LOCK = threading.Lock()


class Session:
    """One driver's supervisor on this worker, and the runs waiting on its events."""

    def __init__(self, token: str, detach: bool, lease: LeaseWatch) -> None:
        self.token = token
        # The supervisor always runs attached: its stdin closes when the worker
        # process dies, and then every tree must end, detached or not. Detach
        # mode only means that a stale lease (the driver's loss) ends nothing.
        self.client = SupervisorClient(detach=False, on_start=self._supervisor_started)
        self.detach = detach
        self.supervisor: tuple[int, float] | None = None
        self.lease = lease
        self.condition = threading.Condition()
        self.mailboxes: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.ending = False
        self.ended = False
        self._reader: threading.Thread | None = None

    def spawn(self, command: dict[str, Any]) -> tuple[int, int]:
        """Hand a run to the supervisor; its events then collect under the returned key."""
        key = (int(command["trial"]), int(command["run"]))
        with self.condition:
            if self.ending:
                raise RuntimeError("the driver of this run is gone")
            self.mailboxes[key] = []
            try:
                self.client.spawn(command)
            except BaseException:
                del self.mailboxes[key]
                raise
            if self._reader is None:
                self._reader = threading.Thread(
                    target=self._read, name=f"localbackend-session-{self.token}", daemon=True
                )
                self._reader.start()
            self.condition.notify_all()
        return key

    def next_events(self, key: tuple[int, int], timeout: float) -> list[dict[str, Any]]:
        """The events of one run that have come, waiting up to ``timeout`` for one."""
        with self.condition:
            box = self.mailboxes[key]
            if not box:
                self.condition.wait(timeout)
            events, box[:] = list(box), []
            if any(event["ev"] in RUN_ENDS for event in events):
                del self.mailboxes[key]
            return events

    def terminate(self, trial_id: int, run: int) -> None:
        with self.condition:
            self.client.terminate(trial_id, run)

    def end(self) -> None:
        """End every tree now, as a lost driver would (the reader collects their ends)."""
        with self.condition:
            self.ending = True
            self.client.close_commands()
            self.condition.notify_all()

    def _supervisor_started(self, pid: int, create_time: float) -> None:
        self.supervisor = (pid, create_time)

    def _read(self) -> None:
        checked = 0.0
        while True:
            fd = self.client.events_fd
            if fd >= 0:
                wait_readable([fd], LEASE_CHECK_SECONDS)
            with self.condition:
                for event in self.client.read_events():
                    box = self.mailboxes.get((int(event["trial"]), int(event["run"])))
                    if box is not None:
                        box.append(event)
                self.condition.notify_all()
                if self.client.events_fd < 0:
                    if self.ending or not self.mailboxes:
                        # The supervisor is gone and reaped: so is this session.
                        self.ended = True
                        _forget(self)
                        return
                    self.condition.wait(LEASE_CHECK_SECONDS)
            now = time.monotonic()
            if not self.ending and now - checked >= LEASE_CHECK_SECONDS:
                checked = now
                # Detached runs outlive their driver: the session ends once they have.
                if self.lease.verdict() != FRESH and (not self.detach or not self.mailboxes):
                    self.end()


def session_for(token: str, detach: bool, lease: LeaseWatch) -> Session:
    """The session of driver ``token`` on this worker, started if there is none."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(token)
        if session is None or session.ending:
            session = _SESSIONS[token] = Session(token, detach, lease)
        return session


def existing(token: str) -> Session | None:
    with _SESSIONS_LOCK:
        return _SESSIONS.get(token)


def _forget(session: Session) -> None:
    with _SESSIONS_LOCK:
        if _SESSIONS.get(session.token) is session:
            del _SESSIONS[session.token]

"""``DaskLauncher``: each run of a trial is a long-running task on a Dask worker.

The driver's side. ``start`` submits the run's task (``_task``) under a key
unique to this launcher, trial and run, with ``retries=0`` and
``pure=False``; a later run of a trial whose earlier run still ends is held
here until that run's task has returned, so it can never run beside it,
even on another worker. Starts arrive as Dask events (``log_event``), ends
as task completions; both wake ``fileno()``. Stops go to the worker that
runs the tree with ``Client.run`` from a thread of their own, so that
``terminate`` returns at once. The lease (``_lease``) ends the trees if this
driver dies.

A task can end while its tree still runs: cancelled, lost by a scheduler
that restarted, or with a worker that dies or closes. Its end is then told
only once the tree is gone (``_followed``), so that no retry or next run
comes beside it. A task computed again after its outcome was lost with its
worker finds that its run started (``_task``) and does not start it again.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..._errors import SupervisorError
from ..._log import LazyLogger
from ..._paths import ExperimentPaths, TrialPaths
from .._base import (
    Launcher,
    LauncherCapabilities,
    RunEvent,
    RunHandle,
    RunLost,
    RunNotStarted,
    RunSpec,
)
from ..local._launcher import LocalLauncher, attached_run_end
from . import _task as task
from ._calls import CALL_SECONDS, WorkerCalls
from ._connect import check_options, connect, unreachable_scheduler
from ._followed import FollowedRuns, started_run
from ._lease import LeaseWriter
from ._outcomes import end_event, failure_event, started_event, worker_died
from ._shared import check_shared_folder
from ._submission import Submitter

# Beyond the grace period, how long shutdown waits for the runs' tasks to return.
_SHUTDOWN_MARGIN = 10.0
logger = LazyLogger(__name__)
# The statuses of a future whose task is being computed (again).
_NOT_DONE = ("pending", "lost")


@dataclass
class _Run:
    spec: RunSpec
    future: Any
    address: str = ""
    started: bool = False
    stop_wanted: bool = False
    handle: Optional[RunHandle] = None


class DaskLauncher(Launcher):
    """Runs every trial as a process tree on a worker of a Dask cluster.

    ``scheduler`` is a scheduler address (``"tcp://host:8786"``,
    ``"tls://host:8786"``), ``"local:N"`` for a ``LocalCluster`` of N worker
    processes started here (and ended by ``shutdown``), or a
    ``distributed.Client``, which stays the caller's. ``security`` is a
    ``distributed.security.Security`` for TLS. A scheduler that cannot be
    reached within ``connect_timeout`` seconds raises at once.

    The experiment folder must be on a filesystem that the driver and every
    worker see at the same path; it is checked before the first run.
    ``gpus_per_trial`` GPUs are asked of the worker as its ``GPU`` resource
    (when the cluster has one), and ``CUDA_VISIBLE_DEVICES`` is set from that
    worker's GPUs, least used first. Results are read from the shared folder
    every ``poll_interval`` seconds at most. If this driver dies, its trials
    end within about ``lease_timeout`` seconds, unless the backend is in
    detach mode.
    """

    def __init__(
        self,
        scheduler: Any,
        *,
        security: Any = None,
        connect_timeout: float = 10.0,
        gpus_per_trial: int = 0,
        poll_interval: float = 0.05,
        lease_timeout: float = 10.0,
    ) -> None:
        check_options(connect_timeout=connect_timeout, poll_interval=poll_interval,
                      lease_timeout=lease_timeout, gpus_per_trial=gpus_per_trial)
        self._connection = connect(scheduler, security, float(connect_timeout))
        self._capabilities = LauncherCapabilities(
            detach=True, local_files=False, host_gpus=False, poll_interval=float(poll_interval)
        )
        self._lease_timeout = float(lease_timeout)
        self._token = os.urandom(8).hex()
        self._topic = f"localbackend-{self._token}"
        self._submitter = Submitter(self.dask_client, token=self._token, topic=self._topic,
                                    lease_timeout=self._lease_timeout,
                                    gpus_per_trial=gpus_per_trial)
        self._detach = self._opened = False
        self._on_session: Callable[[dict[str, Any]], None] = lambda session: None
        self._lock = threading.RLock()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._runs: dict[tuple[int, int], _Run] = {}
        self._queued: dict[int, deque[RunSpec]] = {}
        self._ready: list[RunEvent] = []
        self._followed = FollowedRuns()
        # Runs whose task's outcome was lost with its worker, computed again.
        self._recomputing: set[tuple[int, int]] = set()
        self._lease: LeaseWriter | None = None
        self._worker_calls = WorkerCalls(self.dask_client)
        self._closed = False

    @property
    def capabilities(self) -> LauncherCapabilities:
        return self._capabilities

    @property
    def dask_client(self) -> Any:
        """The ``distributed.Client`` the runs are submitted with."""
        return self._connection.client

    def open(self, *, detach: bool, on_session: Callable[[dict[str, Any]], None]) -> None:
        self._detach, self._on_session, self._opened = detach, on_session, True
        self.dask_client.subscribe_topic(self._topic, self._on_topic)

    # -- starting runs ---------------------------------------------------------------

    def start(self, spec: RunSpec) -> None:
        with self._lock:
            if self._closed or not self._opened:
                raise SupervisorError("this DaskLauncher was shut down; create a new one"
                                      if self._closed else "this DaskLauncher is not open")
            if self._lease is None:
                self._begin(spec.paths.root.parent)
            if (any(t == spec.trial_id for t, _ in self._runs)
                    or self._followed.has_trial(spec.trial_id) or self._queued.get(spec.trial_id)):
                # Its earlier run is still ending: never beside it, on any worker.
                self._queued.setdefault(spec.trial_id, deque()).append(spec)
                return
            self._submit(spec)

    def _begin(self, root: Path) -> None:
        """Before the first run: check the shared folder, take the lease, record the session."""
        check_shared_folder(self.dask_client, root, self._token)
        lease = ExperimentPaths(root).driver_lease(self._token)
        self._lease = LeaseWriter(lease, self._lease_timeout / 4)
        self._on_session({"launcher": "dask", "token": self._token, "lease": str(lease),
                          "lease_timeout": self._lease_timeout})

    def _submit(self, spec: RunSpec) -> None:
        lease = self._lease.path if self._lease is not None else ""
        try:
            future = self._submitter.submit(spec, lease=str(lease), detach=self._detach)
        except Exception as err:
            scheduler = unreachable_scheduler(self._connection)
            if scheduler is None:
                raise SupervisorError(f"Dask did not take the run: {err!r}") from err
            # It fails as a run that the lost scheduler failed does.
            self._ready.append(failure_event(spec.trial_id, spec.run, err, None, False,
                                             scheduler=scheduler))
            self._post("wake", None)
            return
        self._runs[(spec.trial_id, spec.run)] = _Run(spec, future)
        future.add_done_callback(functools.partial(self._on_done, (spec.trial_id, spec.run)))

    # -- what comes back -------------------------------------------------------------

    def _on_topic(self, event: tuple[float, Any]) -> None:
        self._post("started", event[1])

    def _on_done(self, key: tuple[int, int], future: Any) -> None:
        self._post("done", key)

    def _post(self, kind: str, payload: Any) -> None:
        self._inbox.append((kind, payload))
        # Not self._lock: this runs on the client's threads, which the holder
        # of self._lock may be waiting for (a task's result).
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"!")
                except BlockingIOError:
                    pass  # already readable

    def events(self) -> list[RunEvent]:
        with self._wake_lock:
            try:
                while self._wake_r >= 0 and os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        with self._lock:
            out, self._ready = self._ready, []
            while self._inbox:
                kind, payload = self._inbox.popleft()
                if kind == "started":
                    self._started(payload, out)
                elif kind == "done":
                    self._ended(payload, out)
            for key in [k for k in self._recomputing
                        if k not in self._runs or self._runs[k].future.status not in _NOT_DONE]:
                self._recomputing.discard(key)
                self._ended(key, out)
            for end in self._followed.ends(self.is_alive):
                out.append(end)
                self._submit_next(end.trial_id, out)
            return out

    def _started(self, message: Mapping[str, Any], out: list[RunEvent]) -> None:
        key = (int(message["trial"]), int(message["run"]))
        run = self._runs.get(key)
        if run is None:
            # A start heard after its task was given up on (cancelled before
            # its start came): nothing follows that tree, so it is ended.
            if message.get("host") and key not in self._followed:
                self._worker_calls.send(task.terminate_run, self._token, *key,
                                        workers=[str(message["host"])])
            return
        if run.started:
            return
        run.started, run.address = True, str(message.get("host") or "")
        event = started_event(message)
        run.handle = event.handle
        out.append(event)
        if run.stop_wanted:
            self._worker_calls.send(task.terminate_run, self._token, run.spec.trial_id,
                                    run.spec.run, workers=[run.address])

    def _ended(self, key: tuple[int, int], out: list[RunEvent]) -> None:
        run = self._runs.get(key)
        if run is None:
            return
        future, (trial_id, number) = run.future, key
        if future.status in _NOT_DONE:
            # Its outcome was lost with the worker that held it, and Dask
            # computes the task again: ``events`` looks again once it is done.
            self._recomputing.add(key)
            return
        del self._runs[key]
        if run.stop_wanted and self._lease is not None:
            self._lease.forget(trial_id, number)
        if future.status == "finished":
            try:
                outcome = future.result(timeout=30)
            except Exception as err:
                outcome = {"ev": "run_lost", "host": run.address, "error": str(err)}
            if outcome.get("ev") == task.RAN_BEFORE:
                # Computed again after its outcome was lost: the run started
                # before. Its end is what its keeper wrote, once it is gone
                # (a worker that closed gracefully may still be ending it).
                handle = run.handle or started_run(trial_id, number, run.spec.paths)
                if handle is not None:
                    self._followed.attach(handle, run.spec.paths, run.spec.grace_period)
                    return
                out.append(attached_run_end(trial_id, number, run.spec.paths))
                self._submit_next(trial_id, out)
                return
            if not run.started and outcome.get("started"):
                run.started, run.address = True, str(outcome.get("host") or "")
                out.append(started_event(outcome["started"]))
            out.append(end_event(trial_id, number, outcome))
        else:
            error: Optional[BaseException]
            try:
                error = future.exception(timeout=30)  # None once cancelled
            except Exception as err:  # cancelled, or the scheduler is gone
                error = err
            event = failure_event(trial_id, number, error, run.address, run.started,
                                  scheduler=unreachable_scheduler(self._connection))
            handle = run.handle or started_run(trial_id, number, run.spec.paths)
            if not worker_died(error):
                # The task is gone, not its worker: the tree may run on there,
                # or start, if the task is still on its way to starting it.
                if self._lease is not None:
                    self._lease.cancel(trial_id, number)
                if handle is not None:
                    self._worker_calls.send(task.terminate_run, self._token, trial_id, number,
                                            workers=[handle.host] if handle.host else None)
            if handle is not None:
                # A worker that died or closes has its supervisor end its trees:
                # the end is told once the keeper wrote it (or patience ran out).
                self._followed.orphan(handle, run.spec.paths, event, run.spec.grace_period)
                return
            out.append(event)
        self._submit_next(trial_id, out)

    def _submit_next(self, trial_id: int, out: list[RunEvent]) -> None:
        """The trial's previous run is gone: submit the run that waited for it."""
        queue = self._queued.get(trial_id)
        if queue:
            spec = queue.popleft()
            try:
                self._submit(spec)
            except Exception as err:  # the client is gone: that run cannot start
                out.append(RunNotStarted(trial_id, spec.run, f"could not be submitted to "
                                         f"the Dask scheduler: {type(err).__name__}: {err}"))

    def fileno(self) -> Optional[int]:
        return None if self._closed else self._wake_r

    # -- ending runs -----------------------------------------------------------------

    def terminate(self, trial_id: int, run: int) -> None:
        with self._lock:
            queue = self._queued.get(trial_id)
            for spec in list(queue or ()):
                if spec.run == run:
                    queue.remove(spec)  # type: ignore[union-attr]
                    self._ready.append(RunNotStarted(trial_id, run, "cancelled before it started",
                                                     cancelled=True))
                    self._post("wake", None)
                    return
            current = self._runs.get((trial_id, run))
            if current is not None:
                if current.address:
                    self._worker_calls.send(task.terminate_run, self._token, trial_id, run,
                                            workers=[current.address])
                else:
                    # Not started yet: its task, still waiting for a worker
                    # thread, reads the lease before it starts the run. A run
                    # that started meanwhile is sent the stop once its start
                    # is heard of.
                    current.stop_wanted = True
                    if self._lease is not None:
                        self._lease.cancel(trial_id, run)
                return
            handle = self._followed.handle(trial_id, run)
            if handle is not None:
                self._worker_calls.send(task.signal_keeper, handle.keeper,
                                        handle.keeper_create_time,
                                        workers=[handle.host] if handle.host else None)

    # -- runs of an earlier driver ----------------------------------------------------

    def is_alive(self, handle: RunHandle) -> bool:
        if self._closed:
            return False
        answers = self._worker_calls.ask(task.keeper_alive, handle.host, handle.keeper,
                                         handle.keeper_create_time)
        return any(answer is True for answer in answers.values())

    def attach(self, handle: RunHandle, paths: TrialPaths) -> None:
        with self._lock:
            self._followed.attach(handle, paths)

    def wait_for_run_end(self, handle: RunHandle, timeout: float) -> None:
        self._worker_calls.ask(task.wait_for_keeper, handle.host, handle.keeper,
                               handle.keeper_create_time, float(timeout), wait=float(timeout))

    def wait_for_session_end(self, session: Mapping[str, Any], timeout: float) -> None:
        if "token" not in session:
            # The earlier driver ran its trials on its own machine (LocalLauncher).
            LocalLauncher().wait_for_session_end(session, timeout)
            return
        try:
            self.dask_client.run(task.wait_for_session, str(session["token"]), float(timeout),
                                 on_error="ignore", callback_timeout=float(timeout) + CALL_SECONDS)
        except Exception:
            pass  # no worker, no session left to wait for

    def gpu_devices(self, env: Mapping[str, str]) -> list[str]:
        return []  # each run's worker picks among its own GPUs

    # -- the end ---------------------------------------------------------------------

    def shutdown(self) -> None:
        if self._closed:
            return
        with self._lock:
            for trial_id, queue in self._queued.items():
                self._ready.extend(RunNotStarted(trial_id, spec.run, "cancelled before it "
                                                 "started", cancelled=True) for spec in queue)
            self._queued.clear()
            for (trial_id, run) in list(self._runs):
                self.terminate(trial_id, run)
            grace = max((r.spec.grace_period for r in self._runs.values()), default=0.0)
        deadline = time.monotonic() + grace + _SHUTDOWN_MARGIN
        while self._runs and time.monotonic() < deadline:
            from ..._files import wait_readable

            wait_readable([self._wake_r], 0.1)
            self._ready.extend(self.events())
        with self._lock:
            for (trial_id, run), left in self._runs.items():
                try:
                    left.future.cancel()
                except Exception:  # the client closed: nothing is left to cancel there
                    pass
                self._ready.append(RunLost(trial_id, run, "still running when the launcher "
                                           "shut down; ended with its session"))
            self._runs.clear()
            self._recomputing.clear()
            self._ready.extend(self._followed.clear())
        self._release(end_sessions=True)

    def let_go(self) -> None:
        if not self._detach:
            self.shutdown()
            return
        if self._closed:
            return
        self._release(end_sessions=False)

    def _release(self, *, end_sessions: bool) -> None:
        client = self.dask_client
        self._worker_calls.close()
        self._closed = True
        if self._lease is not None:
            if end_sessions:
                self._lease.close()
            else:
                self._lease.abandon()
        try:
            if end_sessions and self._lease is not None:
                client.run(task.end_session, self._token, on_error="ignore",
                           callback_timeout=CALL_SECONDS)
                # Every session of this driver has ended: nobody reads it again.
                self._lease.path.unlink(missing_ok=True)
            client.unsubscribe_topic(self._topic)
        except Exception as err:  # the scheduler is gone, and the client closed itself
            # No worker can be reached: the lease, marked closed, stays for
            # any worker that still runs a tree of this driver.
            logger.warning("could not reach the Dask scheduler to end this driver's sessions "
                           "(%s: %s); the workers end them when they read the closed lease %s",
                           type(err).__name__, err, self._lease.path if self._lease else "")
        finally:
            self._connection.close()
            with self._wake_lock:
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1

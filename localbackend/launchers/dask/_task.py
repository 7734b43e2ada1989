"""What runs on a Dask worker: the task of one run, and the calls the driver makes there.

``run_on_worker`` is the Dask task of one run. It checks that the trial
folder is there (the experiment folder must be shared), picks the run's
GPUs among the worker's, builds the keeper's command with the same
``spawn_command`` as ``LocalLauncher``, hands it to its driver's session
(``_session``), publishes the start as a Dask event, and returns how the run
ended, or that it had started before (the task is computed again). The
other functions are called through ``Client.run`` on one worker:
they act at once and never wait on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

from ..._files import read_json_object
from ...core._gpus import GpuAllocator
from .._base import RunSpec
from ..local._gpus import detect_gpus
from ..local._launcher import _wait_for_exit, process_matches, resolve_program
from ..local._spawn_command import spawn_command
from . import _session as sessions
from ._lease import CLOSED, LeaseWatch

# What a task computed again says (its run had started before): see ``run_on_worker``.
RAN_BEFORE = "ran_before"
# A session told to end has its trees gone within the supervisor's fast shutdown.
_SESSION_END_SECONDS = 10.0
# How long a task waits for its run's events before it looks again.
_WAIT_SECONDS = 1.0
# The states of a worker that is going away (``distributed.core.Status`` names).
_CLOSING = frozenset({"closing", "closed", "failed"})

_gpu_lock = threading.Lock()
_gpu_holders: dict[int, list[str]] = {}
_gpu_assigned: dict[str, int] = {}
_next_holder = [0]


def run_on_worker(
    spec: RunSpec, *, token: str, topic: str, lease: str, lease_timeout: float, detach: bool,
    gpus_per_trial: int,
) -> dict[str, Any]:
    """Run one run of a trial on this worker; how it ended, as the supervisor reports it."""
    from distributed import get_worker

    worker = get_worker()
    address = str(worker.address)
    watch = LeaseWatch(lease, lease_timeout)
    if watch.verdict() == CLOSED:
        return {"ev": "cancelled", "host": address}
    root = spec.paths.root
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        return {
            "ev": "spawn_failed", "host": address,
            "error": f"the trial folder {root} cannot be written on Dask worker {address}: "
            "the experiment folder must be on a filesystem that the driver and every "
            "worker see at the same path, and the workers must run as the folder's owner",
        }
    holder, gpus = _take_gpus(worker.state.total_resources, gpus_per_trial)
    started: dict[str, Any] | None = None
    try:
        env = spec.environment(os.environ, gpus)  # the GPUs of this worker's resources
        command = spawn_command(spec, executable=resolve_program(spec.argv[0]), env=env)
        session = sessions.session_for(token, detach, watch)
        if _ran_before(spec):  # first: a run stopped after it started is named as well
            return {"ev": RAN_BEFORE, "host": address}
        if watch.cancelled(spec.trial_id, spec.run):
            return {"ev": "cancelled", "host": address}  # stopped while it waited for a worker
        try:
            key = session.spawn(command)
        except Exception as err:  # SupervisorError, OSError, or a driver just gone
            return {"ev": "spawn_failed", "host": address, "error": str(err)}
        ending = False
        while True:
            for event in session.next_events(key, _WAIT_SECONDS):
                if event["ev"] == "started":
                    started = dict(event, host=address, gpus=gpus)
                    worker.log_event(topic, started)
                elif event["ev"] in sessions.RUN_ENDS:
                    return dict(event, host=address, started=started)
            if not ending and getattr(worker.status, "name", "") in _CLOSING:
                # The worker closes (SIGTERM, or told to): the scheduler has
                # given up on this task, so the tree is ended now, not when
                # the worker's process is gone.
                ending = True
                session.terminate(spec.trial_id, spec.run)
    finally:
        _give_back_gpus(holder)


def _ran_before(spec: RunSpec) -> bool:
    """Whether a keeper already started this run: this task is being computed again.

    Dask computes a task again when its outcome is lost with the worker that
    held it before the driver collected it. The run must not start twice; its
    keeper's ``run.json`` says whether it started (a later run of the trial
    starts only once this run's task was collected).
    """
    record = read_json_object(spec.paths.run_record)
    run = None if record is None else record.get("run")
    return isinstance(run, int) and run >= spec.run


def _take_gpus(resources: Mapping[str, float], per_trial: int) -> tuple[int, list[str]]:
    """The least-used GPUs of this worker for one run, as the local backend picks them.

    The worker's GPUs are those its environment shows (``CUDA_VISIBLE_DEVICES``,
    else ``nvidia-smi``), or else as many as its ``GPU`` resource counts.
    """
    if per_trial <= 0:
        return 0, []
    devices = detect_gpus(os.environ) or [str(i) for i in range(int(resources.get("GPU", 0)))]
    if not devices:
        return 0, []
    with _gpu_lock:
        _next_holder[0] += 1
        holder = _next_holder[0]
        allocator = GpuAllocator(devices, None, min(per_trial, len(devices)))
        allocator.holders = _gpu_holders
        allocator.times_assigned = _gpu_assigned
        return holder, allocator.allocate(holder)


def _give_back_gpus(holder: int) -> None:
    with _gpu_lock:
        _gpu_holders.pop(holder, None)


# -- called through Client.run on one worker ------------------------------------------


def terminate_run(token: str, trial_id: int, run: int) -> None:
    """SIGTERM the run's tree now (SIGKILL after its grace period), if it runs here."""
    session = sessions.existing(token)
    if session is not None:
        session.terminate(trial_id, run)


async def end_session(token: str) -> None:
    """End every tree of driver ``token`` on this worker, as its death would, and wait."""
    session = sessions.existing(token)
    if session is None:
        return
    session.end()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SESSION_END_SECONDS
    while not session.ended and loop.time() < deadline:
        await asyncio.sleep(0.02)


def keeper_alive(keeper: int, created: float) -> bool:
    return process_matches(keeper, created)


def signal_keeper(keeper: int, created: float) -> None:
    """SIGTERM a keeper of an earlier driver: it ends its tree within the grace period."""
    if process_matches(keeper, created):
        try:
            os.kill(keeper, signal.SIGTERM)
        except ProcessLookupError:
            pass


async def wait_for_keeper(keeper: int, created: float, timeout: float) -> None:
    """Wait for an earlier driver's keeper on this worker; end its whole tree after ``timeout``."""
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: _wait_for_exit(keeper, created, timeout, whole_tree=True)
    )


async def wait_for_session(token: str, timeout: float) -> None:
    """Wait until driver ``token``'s session here has ended; end it by force after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    session = sessions.existing(token)
    while session is not None and not session.ended and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if session is not None and not session.ended:
        # A lost driver's end: the supervisor, attached, ends every tree fast
        # (the trials come back Paused), detach mode or not.
        session.end()
        while not session.ended and loop.time() < deadline + _SESSION_END_SECONDS:
            await asyncio.sleep(0.02)

"""What the backend needs from wherever trials run: the ``Launcher`` interface.

The backend decides what runs (which trial, which config, which GPUs, when
to stop it) and keeps the trial table; a launcher makes runs happen on some
host and reports how they go. Everything crosses this seam as data: a
``RunSpec`` describes a run to start, and typed ``RunEvent`` values come back
(started, exited, could not start, lost). The backend never sees a PID or a
pipe; those are the launcher's business.

A launcher is single-use: one backend opens it, and ``shutdown`` ends it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .._errors import BackendConfigurationError
from .._paths import TrialPaths


@dataclass(frozen=True)
class RunLimits:
    """What the keeper enforces on one run's whole tree (``None``: no limit).

    ``time_limit`` is the running time this run may still use, in seconds
    (the trial's limit less what its earlier runs used). ``memory_limit`` is
    in bytes, for every process of the tree together. ``heartbeat_timeout``
    is how long the tree may write nothing to its results, stdout or stderr
    before it counts as hung. ``cpus`` are the cores the trial is pinned to
    (empty: not pinned); ``cpus_per_trial`` is the count asked for, for a
    launcher that picks the cores on its own host.
    """

    time_limit: Optional[float] = None
    memory_limit: Optional[int] = None
    heartbeat_timeout: Optional[float] = None
    cpus: tuple[int, ...] = ()
    cpus_per_trial: Optional[int] = None
    # A run of the trial that was still ending when this one was launched:
    # its running time was not yet known, and the keeper, which starts only
    # once it has ended, takes it off ``time_limit`` from its ``exit.json``.
    uncounted_run: Optional[int] = None

    def as_record(self) -> dict[str, Any]:
        """The form the keeper reads from its spawn command."""
        return {
            "time_limit": self.time_limit, "memory_limit": self.memory_limit,
            "heartbeat_timeout": self.heartbeat_timeout, "cpus": list(self.cpus),
            "cpus_per_trial": self.cpus_per_trial, "uncounted_run": self.uncounted_run,
        }


@dataclass(frozen=True)
class RunSpec:
    """One run of a trial, as data.

    ``argv`` is the template of the command: its first word is a program
    name or path that the launcher resolves on the host that runs it (an
    empty binary makes it the entry point itself). ``env`` holds only what
    localbackend sets, over the environment the host's launcher inherits;
    ``env_defaults`` apply only where that environment lacks them.
    ``gpus`` are the device ids the backend chose among ``gpu_devices()``.
    """

    trial_id: int
    run: int
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    paths: TrialPaths
    grace_period: float
    gpus: tuple[str, ...] = ()
    # Variables set only where the host's environment lacks them.
    env_defaults: Mapping[str, str] = field(default_factory=dict)
    # The keeper deletes the checkpoints of a run that completes on its own
    # (exit 0, no stop asked for): ``delete_checkpoints=True``.
    delete_checkpoints_on_completion: bool = False
    limits: RunLimits = field(default_factory=RunLimits)
    # Modules to import once in a zygote and start the run from by fork
    # (warm start); a launcher that cannot falls back to a cold start.
    preload: tuple[str, ...] = ()

    def environment(
        self, host: Mapping[str, str], gpus: Optional[Iterable[str]] = None
    ) -> dict[str, str]:
        """The run's whole environment on a host whose own is ``host``.

        ``env_defaults`` under ``host`` under ``env``; the GPUs (``gpus``, or
        else the spec's own) as ``CUDA_VISIBLE_DEVICES``. Every launcher
        builds a run's environment here.
        """
        env = {**self.env_defaults, **host, **self.env}
        chosen = tuple(self.gpus if gpus is None else gpus)
        if chosen:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(chosen)
        return env


@dataclass(frozen=True)
class RunHandle:
    """How to find a run again, from another driver after a restore.

    ``pid`` and ``create_time`` name the trial's main process; ``keeper``
    and ``keeper_create_time`` the process that supervises its tree. A PID
    is only trusted together with its start time, so a reused one is never
    taken for the run.
    """

    trial_id: int
    run: int
    pid: int
    create_time: float
    keeper: int
    keeper_create_time: float
    host: str = ""

    @classmethod
    def of_start(
        cls, trial_id: int, run: int, start: Mapping[str, Any], host: str = ""
    ) -> RunHandle:
        """The handle in a keeper's record of a start: its ``started`` event, or ``run.json``."""
        return cls(
            trial_id, run, pid=int(start.get("pid") or 0),
            create_time=float(start.get("create_time") or 0.0), keeper=int(start["keeper"]),
            keeper_create_time=float(start.get("keeper_create_time") or 0.0), host=host,
        )


@dataclass(frozen=True)
class RunStarted:
    """The run's main process is running."""

    trial_id: int
    run: int
    handle: RunHandle


@dataclass(frozen=True)
class RunExited:
    """The run's whole process tree is gone.

    ``offsets`` are the sizes of ``results``, ``stdout`` and ``stderr`` when
    the tree was gone: everything the run wrote lies before them.
    ``terminated_by`` says why the tree was ended: ``None`` (it ended on its
    own), ``"request"`` (pause or stop), ``"leftovers"`` (the main process
    had exited and left descendants), ``"driver_lost"`` or
    ``"supervisor_lost"``; or a limit of ``RunLimits`` the keeper enforced:
    ``"time_limit"``, ``"memory_limit"`` or ``"hang"`` (no output for
    ``heartbeat_timeout`` seconds). ``running_time`` is how long the tree
    ran, in seconds; ``peak_memory`` the most memory it was seen to use,
    in bytes, when it had a memory limit.
    """

    trial_id: int
    run: int
    returncode: Optional[int]
    signal: Optional[str]
    terminated_by: Optional[str]
    time: float
    offsets: Mapping[str, int] = field(default_factory=dict)
    running_time: Optional[float] = None
    peak_memory: Optional[int] = None

    def as_record(self) -> dict[str, Any]:
        """The form written to ``exit.json`` and the journal."""
        return {
            "trial": self.trial_id, "run": self.run, "returncode": self.returncode,
            "signal": self.signal, "terminated_by": self.terminated_by, "time": self.time,
            "offsets": dict(self.offsets), "running_time": self.running_time,
            "peak_memory": self.peak_memory,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunExited:
        return cls(
            trial_id=int(record["trial"]), run=int(record["run"]),
            returncode=record.get("returncode"), signal=record.get("signal"),
            terminated_by=record.get("terminated_by"), time=float(record.get("time") or 0.0),
            offsets={k: int(v) for k, v in (record.get("offsets") or {}).items()},
            running_time=_optional_float(record.get("running_time")),
            peak_memory=_optional_int(record.get("peak_memory")),
        )


def _optional_float(value: object) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _optional_int(value: object) -> Optional[int]:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RunNotStarted:
    """The run never started: its process could not be started, or it was cancelled.

    ``cancelled`` runs were queued behind an earlier run of the trial and
    dropped by a stop; they are not failures.
    """

    trial_id: int
    run: int
    reason: str
    cancelled: bool = False


@dataclass(frozen=True)
class RunLost:
    """What supervised the run is gone; its tree has been or is being killed."""

    trial_id: int
    run: int
    reason: str
    signal: Optional[str] = "SIGKILL"


RunEvent = Union[RunStarted, RunExited, RunNotStarted, RunLost]


@dataclass(frozen=True)
class LauncherCapabilities:
    """What a launcher can do, which decides how the backend uses it.

    ``detach``: runs can outlive the driver and be re-attached after a
    restore. ``local_files``: the trials write to a filesystem of this host,
    so inotify and the ``stat`` shortcut of the result readers are reliable;
    otherwise results are read in poll mode. ``host_gpus``: ``gpu_devices()``
    lists the GPUs of the host that runs the trials, for the backend to hand
    out. ``poll_interval``: in poll mode, the longest time in seconds between
    two reads of the trials' files (``None``: the backend's default).
    """

    detach: bool
    local_files: bool
    host_gpus: bool
    poll_interval: Optional[float] = None


class Launcher(ABC):
    """Starts, ends and watches the runs of trials on behalf of one backend."""

    @property
    @abstractmethod
    def capabilities(self) -> LauncherCapabilities:
        """What this launcher can do."""

    @abstractmethod
    def open(self, *, detach: bool, on_session: Callable[[dict[str, Any]], None]) -> None:
        """Get ready to start runs (lazily: nothing may start before the first ``start``).

        ``on_session`` is called with a JSON-able description of each new
        session (for the local launcher, each supervisor process), which the
        backend journals so that a restore can wait for it to end.
        """

    def ensure_ready(self) -> None:
        """Make sure runs can be started now (the local launcher starts its supervisor).

        Called before a trial is recorded, so that a launcher that cannot work
        fails the ``start_trial`` cleanly. The default does nothing.
        """
        return None

    @abstractmethod
    def start(self, spec: RunSpec) -> None:
        """Start a run, or queue it behind a run of the same trial still ending.

        Returns at once. Raises ``OSError`` or a ``LocalBackendError`` if the
        request could not be handed over; then nothing was started.
        """

    @abstractmethod
    def terminate(self, trial_id: int, run: int) -> None:
        """End a run's whole tree: SIGTERM now, SIGKILL after its grace period.

        Returns at once and never blocks; a run that has already ended, or
        is unknown, is ignored.
        """

    def unstarted(self, trial_id: int, runs: Iterable[int]) -> bool:
        """Whether no process of these runs exists yet, nor will once they are terminated.

        For a launcher that holds runs before it starts any (the local one,
        while its supervisor imports the preload modules): a stop need not
        wait for them.
        """
        return False

    @abstractmethod
    def events(self) -> list[RunEvent]:
        """Every event that has arrived since the last call, without blocking."""

    @abstractmethod
    def fileno(self) -> Optional[int]:
        """A descriptor that becomes readable when events may be waiting, or None to poll."""

    @abstractmethod
    def is_alive(self, handle: RunHandle) -> bool:
        """Whether the run's supervising process still runs (its tree may too)."""

    @abstractmethod
    def attach(self, handle: RunHandle, paths: TrialPaths) -> None:
        """Follow a run started by an earlier driver (detach mode, after a restore).

        Its end is reported by ``events`` like any other, and ``terminate``
        reaches it.
        """

    @abstractmethod
    def wait_for_run_end(self, handle: RunHandle, timeout: float) -> None:
        """Wait until an earlier driver's run has ended; end it by force after ``timeout``."""

    @abstractmethod
    def wait_for_session_end(self, session: Mapping[str, Any], timeout: float) -> None:
        """Wait until an earlier driver's session (see ``open``) has ended its runs.

        After ``timeout`` seconds the session is ended by force.
        """

    @abstractmethod
    def gpu_devices(self, env: Mapping[str, str]) -> list[str]:
        """The GPUs of the host that runs the trials (with ``env`` over its environment)."""

    def cpu_devices(self) -> list[str]:
        """The cores of the host that runs the trials, for ``cpus_per_trial`` to hand out.

        Empty (the default) where the launcher picks the cores on its hosts
        itself, from ``RunLimits.cpus_per_trial``.
        """
        return []

    @abstractmethod
    def shutdown(self) -> None:
        """End every run (with its grace period) and release everything held."""

    def let_go(self) -> None:
        """Release the launcher's resources but leave detached runs running."""
        self.shutdown()


def check_launcher(launcher: object) -> Launcher:
    """``launcher`` if it is a ``Launcher`` instance, else our error naming it."""
    if not isinstance(launcher, Launcher):
        what = "a class, not an instance" if isinstance(launcher, type) else "not a Launcher"
        raise BackendConfigurationError(
            "launcher", launcher, f"is {what}",
            "Pass an instance of localbackend.launchers.Launcher, for example "
            "launcher=LocalLauncher() or launcher=DaskLauncher('tcp://host:8786').",
        )
    return launcher


__all__ = [
    "check_launcher",
    "Launcher",
    "LauncherCapabilities",
    "RunEvent",
    "RunExited",
    "RunHandle",
    "RunLimits",
    "RunLost",
    "RunNotStarted",
    "RunSpec",
    "RunStarted",
]

"""``LocalBackend``: run the trials of a tuning experiment as local processes."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .._errors import (
    BackendConfigurationError,
    ExperimentMovedError,
    InvalidTransitionError,
    LocalBackendError,
    SupervisorError,
    TrialLaunchError,
    TrialNotFoundError,
)
from .._paths import ExperimentPaths, default_experiment_dir
from .._types import FINISHED_STATUSES, Status, Trial, TrialResult
from ..launchers._base import Launcher
from . import _checkpoints as checkpoints
from . import _launching as launching
from . import _waiting as waiting
from ._command import (
    check_entry_point,
    normalize_config,
)
from ._experiment import ExperimentFolder
from ._gpus import GpuAllocator
from ._journal import Journal, load_state
from ._lock import ExperimentLock
from ._notify import FileWatcher
from ._options import BackendOptions, check_experiment_dir
from ._restore import Rebuild, rebuild_table
from ._results import read_log_text
from ._storage import (
    atomic_write_json,
    has_checkpoint,
)
from ._table import TrialTable
from ._trials import TrialRecord

logger = logging.getLogger(__name__)

# ``stop_all`` waits this long beyond the grace period for processes to go.
_STOP_ALL_MARGIN = 10.0

_LOG_STREAMS = ("stdout", "stderr")


class LocalBackend:
    """Runs trials as local processes, with pause and resume through checkpoints.

    The methods, arguments, return shapes and status strings are those of
    Syne Tune's ``TrialBackend``, so any tuner written against it can drive
    this backend. See the README for the protocol a trial script follows.

    Args:
        entry_point: The trial script.
        experiment_dir: Folder for the trials' files. Defaults to a new,
            unique folder under ``./localbackend-runs/``, created when the
            first trial starts.
        binary: Program that runs the script, as a list of argv words or a
            string split as a shell splits words. Defaults to this Python.
        pass_args_as_json: Pass the config as ``--st_config_json_filename``
            instead of ``--key value`` options.
        delete_checkpoints: Delete a trial's checkpoints once it is stopped or
            completed, and all checkpoints in ``stop_all``.
        grace_period: Seconds between SIGTERM and SIGKILL on pause and stop.
        env: Variables merged over the inherited environment for the trials.
        num_gpus: GPU count; None detects it.
        num_gpus_per_trial: GPUs given to each trial.
        gpus_to_use: Indices of the GPUs the trials may use.
        detach: Let trials keep running when the driver dies (by default
            every trial's process tree ends within about a second of the
            driver's death); ``restore`` re-attaches to them.
        launcher: Where the trials run: a ``localbackend.launchers.Launcher``.
            Defaults to a ``LocalLauncher``, which runs them on this machine.
    """

    def __init__(
        self,
        entry_point: str | os.PathLike[str],
        *,
        experiment_dir: str | os.PathLike[str] | None = None,
        binary: str | Sequence[str] | None = None,
        pass_args_as_json: bool = False,
        delete_checkpoints: bool = False,
        grace_period: float = 10.0,
        env: Mapping[str, str] | None = None,
        num_gpus: int | None = None,
        num_gpus_per_trial: int = 1,
        gpus_to_use: Sequence[int] | None = None,
        detach: bool = False,
        launcher: Launcher | None = None,
    ) -> None:
        self._configure(BackendOptions.check(
            entry_point=entry_point, binary=binary, pass_args_as_json=pass_args_as_json,
            delete_checkpoints=delete_checkpoints, grace_period=grace_period, env=env,
            num_gpus=num_gpus, num_gpus_per_trial=num_gpus_per_trial, gpus_to_use=gpus_to_use,
            detach=detach, cwd=Path.cwd(),
        ))
        if experiment_dir is not None:
            root = Path(experiment_dir).expanduser().absolute()
            check_experiment_dir(root)
        else:
            root = default_experiment_dir()
        self._folder = ExperimentFolder(root, created=False)
        self._setup_runtime(launcher)

    def _configure(self, options: BackendOptions) -> None:
        """Take checked options (``restore`` passes the stored ones)."""
        self._o = options
        self._gpus: GpuAllocator | None = None
        if options.num_gpus is not None:
            self._gpus = self._make_allocator()

    def _setup_runtime(self, launcher: Launcher | None) -> None:
        """The parts that live only as long as this driver process."""
        if launcher is None:
            from ..launchers.local._launcher import LocalLauncher

            launcher = LocalLauncher()
        if self._o.detach and not launcher.capabilities.detach:
            raise BackendConfigurationError(
                "detach", True, f"is not supported by {type(launcher).__name__}",
                "Use detach=False with this launcher.",
            )
        self._launcher = launcher
        launcher.open(detach=self._o.detach, on_session=self._session_started)
        self._watcher: FileWatcher | None = None
        self._table = TrialTable(launcher, self._allocator, self._file_watcher)
        self._table.delete_checkpoints = self.delete_checkpoints
        self._lock = _BackendLock(self._folder)

    def _session_started(self, session: dict[str, Any]) -> None:
        # A restore waits for this session to end before it trusts the folder.
        self._folder.append("supervisor", **session)

    @property
    def _paths(self) -> ExperimentPaths:
        return self._folder.paths

    @property
    def _journal(self) -> Journal | None:
        return self._folder.journal

    @property
    def _experiment_lock(self) -> ExperimentLock:
        return self._folder.lock

    def _journal_or_fail(self) -> Journal:
        if self._folder.journal is None:
            raise RuntimeError("the experiment's journal is not open")
        return self._folder.journal

    @property
    def _supervisor(self) -> Any:
        """The local launcher's supervisor client, for debugging; None for other launchers."""
        return getattr(self._launcher, "client", None)

    def _options(self) -> dict[str, Any]:
        """Constructor arguments, as stored in the experiment folder for ``restore``."""
        return self._o.saved()

    @property
    def pass_args_as_json(self) -> bool:
        """Pass the config as ``--st_config_json_filename`` (Syne Tune's adapter may set it)."""
        return self._o.pass_args_as_json

    @pass_args_as_json.setter
    def pass_args_as_json(self, value: bool) -> None:
        self._o.pass_args_as_json = bool(value)

    # -- properties and paths ------------------------------------------------

    @property
    def experiment_dir(self) -> Path:
        """The folder holding one sub-folder per trial."""
        return self._paths.root

    @property
    def grace_period(self) -> float:
        return self._o.grace_period

    def trial_dir(self, trial_id: int) -> Path:
        """The folder of one trial (see the README for its files)."""
        return self._paths.trial(self._record(trial_id).trial_id).root

    def entrypoint_path(self) -> Path:
        return self._o.entry_point

    def set_entrypoint(self, entry_point: str | os.PathLike[str]) -> None:
        """Run ``entry_point`` for the runs launched from now on.

        The change is recorded in the experiment folder, so that ``restore``
        and unpickling keep it.
        """
        checked = check_entry_point(entry_point, must_be_executable=not self._o.binary)
        with self._lock:
            self._o.entry_point = checked
            self._folder.append("options", options=self._options())

    @property
    def delete_checkpoints(self) -> bool:
        """Delete a trial's checkpoints once it is stopped or completed, as Syne Tune does.

        Syne Tune's ``TrialBackend`` (and so the adapter) may set it after
        construction; the change is recorded in the experiment folder, so that
        ``restore`` and unpickling keep it.
        """
        return self._o.delete_checkpoints

    @delete_checkpoints.setter
    def delete_checkpoints(self, value: bool) -> None:
        with self._lock:
            changed = bool(value) != self._o.delete_checkpoints
            self._o.delete_checkpoints = bool(value)
            self._table.delete_checkpoints = self._o.delete_checkpoints
            if changed:
                self._folder.append("options", options=self._options())
            if changed and not self._o.delete_checkpoints:
                # Keepers of running trials were told to delete on completion.
                for record in self._table.live_records():
                    if record.status == Status.in_progress and not record.delete_checkpoint_on_exit:
                        checkpoints.request(record, "keep")

    def _check_entry_point_still_there(self) -> None:
        check_entry_point(self._o.entry_point, must_be_executable=not self._o.binary)

    def set_path(self, results_root: str | None = None, tuner_name: str | None = None) -> None:
        """Move the experiment to ``results_root``; only before a trial has started."""
        if results_root is None:
            return
        with self._lock:
            if self._table.records:
                raise LocalBackendError(
                    f"cannot move the experiment to {results_root!r}: {len(self._table.records)} "
                    f"trial(s) already run in {self.experiment_dir}. "
                    "Call set_path before the first start_trial."
                )
            new_root = Path(results_root).expanduser().absolute()
            self._folder.move_to(new_root)
            if self._table.records or (new_root.exists() and any(
                entry.is_dir() for entry in new_root.iterdir()
            )):
                self._ensure_experiment_dir()

    # -- starting and resuming ----------------------------------------------

    def new_trial_id(self) -> int:
        """The id the next ``start_trial`` will use."""
        return len(self._table.records)

    def start_trial(
        self, config: Mapping[str, Any], checkpoint_trial_id: Optional[int] = None
    ) -> TrialResult:
        """Start a trial with ``config``, from a copy of another trial's checkpoint if given."""
        with self._lock:
            clean = normalize_config(config)
            if checkpoint_trial_id is not None:
                source = self._record(checkpoint_trial_id)
                if not has_checkpoint(source.paths):
                    raise checkpoints.no_checkpoint_error(
                        self._paths, source.trial_id, self.new_trial_id()
                    )
            self._check_entry_point_still_there()
            self._allocator()  # GPU settings are checked before anything changes
            self._ensure_experiment_dir()
            trial_id = self.new_trial_id()
            paths = self._paths.trial(trial_id)
            existed = paths.root.exists()
            try:
                paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
                if checkpoint_trial_id is not None:
                    checkpoints.copy(self._paths, int(checkpoint_trial_id), trial_id)
                atomic_write_json(paths.config, clean)
                launching.prepare_files(paths)
                self._launcher.ensure_ready()
            except (OSError, LocalBackendError) as err:
                # Leave no half-made trial behind: the id is not used.
                if not existed:
                    launching.remove_unstarted(paths)
                if isinstance(err, LocalBackendError) and not isinstance(err, SupervisorError):
                    raise
                raise self._launch_error(trial_id, err) from err
            record = TrialRecord.new(
                trial_id, clean, paths, self._journal,
                poll=not self._launcher.capabilities.local_files,
            )
            self._table.records.append(record)
            record.log(
                "trial", config=clean, time=record.creation_time.timestamp(),
                checkpoint_trial_id=checkpoint_trial_id,
            )
            try:
                self._launch(record, reason="start_trial")
            except TrialLaunchError:
                # A failed call changes nothing: the record, its journal entry
                # and its folder go, and the id is used by the next start.
                self._table.records.pop()
                self._table.live.discard(trial_id)
                record.log("forget")
                if not existed:
                    launching.remove_unstarted(paths)
                raise
            return self._trial_result(record)

    def resume_trial(
        self, trial_id: int, new_config: Optional[Mapping[str, Any]] = None
    ) -> TrialResult:
        """Start a paused trial again, in its folder, from its latest checkpoint."""
        with self._lock:
            record = self._record(trial_id)
            self._table.pump()
            if record.status != Status.paused:
                raise InvalidTransitionError(
                    record.trial_id, record.status, "resume",
                    "Only a Paused trial can be resumed; start a new trial instead.",
                )
            clean = normalize_config(new_config) if new_config is not None else None
            self._check_entry_point_still_there()
            if record.delete_checkpoint_on_exit and record.alive_runs:
                # A delete waits for the paused run to end; the resumed run
                # must not start from the checkpoint that was asked away.
                self._wait_for_runs_to_end(record)
            previous_config = record.config
            try:
                if clean is not None:
                    atomic_write_json(record.paths.config, clean)
                launching.prepare_files(record.paths)
                if clean is not None:
                    record.config = clean
                self._launch(record, reason="resume_trial")
            except (OSError, TrialLaunchError) as err:
                # The trial stays Paused, with its config as it was.
                record.config = previous_config
                if clean is not None:
                    try:
                        atomic_write_json(record.paths.config, previous_config)
                    except OSError:
                        pass
                if isinstance(err, TrialLaunchError):
                    raise
                raise self._launch_error(record.trial_id, err) from err
            if clean is not None:
                record.log("config", config=clean)
            return self._trial_result(record)

    def _wait_for_runs_to_end(self, record: TrialRecord) -> None:
        deadline = time.monotonic() + self._o.grace_period + _STOP_ALL_MARGIN
        while record.alive_runs and time.monotonic() < deadline:
            self._sleep_until_event(deadline - time.monotonic())
            self._table.pump()

    def _launch(self, record: TrialRecord, *, reason: str) -> None:
        """Start the next run of ``record``; on failure, raise ``TrialLaunchError``."""
        if record.attached:
            # A run that outlived the previous driver is not the launcher's
            # to queue behind; wait here until its tree is gone.
            self._wait_for_runs_to_end(record)
        launching.launch(
            record, launching.RunTemplate(
                binary=self._o.binary, entry_point=self._o.entry_point,
                pass_args_as_json=self.pass_args_as_json, env=self._o.env, cwd=self._o.cwd,
                grace_period=self._o.grace_period, delete_checkpoints=self.delete_checkpoints,
            ),
            launcher=self._launcher, allocator=self._allocator(), table=self._table,
            watcher=self._file_watcher,
        )
        record.set_status(Status.in_progress, reason=reason)

    def _launch_error(self, trial_id: int, err: BaseException) -> TrialLaunchError:
        return launching.launch_error(trial_id, [*self._o.binary, str(self._o.entry_point)], err)

    # -- pausing and stopping -----------------------------------------------

    def pause_trial(self, trial_id: int, result: Optional[Mapping[str, Any]] = None) -> None:
        """Pause a running trial: SIGTERM now, SIGKILL after the grace period.

        Returns at once; the status is ``Paused`` when it returns. Results the
        trial wrote before this call are still delivered; later ones are not.
        A trial that has already finished keeps its status.
        """
        self._interrupt(trial_id, Status.paused, "pause_trial")

    def stop_trial(self, trial_id: int, result: Optional[Mapping[str, Any]] = None) -> None:
        """Stop a running or paused trial for good; returns at once."""
        with self._lock:
            record = self._record(trial_id)
            self._interrupt(trial_id, Status.stopped, "stop_trial")
            if self.delete_checkpoints and record.status == Status.stopped:
                self.delete_checkpoint(trial_id)

    def _interrupt(self, trial_id: int, status: str, reason: str) -> None:
        with self._lock:
            record = self._record(trial_id)
            self._table.pump()
            if record.status == Status.in_progress and self.delete_checkpoints:
                # Its keeper deletes the checkpoints of a run that completes;
                # this run is being interrupted, and its checkpoint is kept.
                checkpoints.request(
                    record, "delete" if record.delete_checkpoint_on_exit else "keep"
                )
            # A run that has just ended counts as ended, even if its event is
            # still on its way: a pause of a finished trial does nothing.
            self._table.take_in_exit(record)
            if record.status in FINISHED_STATUSES:
                return
            if record.status == Status.paused and status == Status.stopped:
                record.set_status(status, reason=reason)
                return
            if record.status == status:
                return
            self._table.stop_accepting(record)
            record.set_status(status, reason=reason)
            current = record.runs - 1
            if current in record.alive_runs:
                self._launcher.terminate(record.trial_id, current)

    def stop_all(self) -> None:
        """Stop every running trial and wait until all their processes are gone."""
        with self._lock:
            for record in self._table.records:
                if record.status == Status.in_progress:
                    self.stop_trial(record.trial_id)
            if self.delete_checkpoints:
                for record in self._table.records:
                    self.delete_checkpoint(record.trial_id)
            self._wait_for_every_run()

    def _wait_for_every_run(self) -> None:
        """Wait (grace period plus a margin at most) until no trial process is left."""
        deadline = time.monotonic() + self._o.grace_period + _STOP_ALL_MARGIN
        while (
            any(r.alive_runs for r in self._table.live_records())
            and time.monotonic() < deadline
        ):
            self._sleep_until_event(deadline - time.monotonic())
            self._table.pump()

    def close(self) -> None:
        """Stop every trial, wait for its processes to end, and release the supervisor.

        A backend whose experiment a restore in this process took over has
        already let go of everything: closing it does nothing.
        """
        if self._lock.moved:
            return
        with self._lock:
            self.stop_all()
            self._release_runtime()

    def _release_runtime(self) -> None:
        """End the supervisor, then fold the journal into the snapshot and free the folder."""
        self._launcher.shutdown()
        self._table.pump()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        self._folder.close(compact=True)

    def _take_over_callback(self) -> Callable[[], None]:
        """What a backend restored in this process calls to make this one let go (weakly)."""
        let_go = weakref.WeakMethod(self._let_go)

        def on_take_over() -> None:
            method = let_go()
            if method is not None:
                method()

        return on_take_over

    def _let_go(self) -> None:
        """Hand the experiment to a backend being restored from it in this process.

        Running trials are paused (in detach mode they keep running, for the
        restored backend to re-attach to), their processes are waited for,
        and every later call on this backend raises ``ExperimentMovedError``.
        """
        with self._lock:
            if not self._o.detach:
                for record in self._table.records:
                    if record.status == Status.in_progress:
                        self._interrupt(
                            record.trial_id, Status.paused, "the experiment moved to a "
                            "backend restored from it in this process",
                        )
                self._wait_for_every_run()
                self._release_runtime()
            else:
                self._launcher.let_go()
                if self._watcher is not None:
                    self._watcher.close()
                    self._watcher = None
                self._folder.close(compact=True)
            self._lock.moved = True

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- results and status --------------------------------------------------

    def fetch_status_results(
        self, trial_ids: Iterable[int]
    ) -> tuple[dict[int, tuple[Trial, str]], list[tuple[int, dict[str, Any]]]]:
        """Statuses of ``trial_ids`` and their results not fetched before.

        Each result is delivered exactly once, in the order the trial wrote
        it; results of different trials are merged by worker timestamp.
        """
        with self._lock:
            records = [self._record(trial_id) for trial_id in trial_ids]
            self._table.pump()
            return self._table.deliver(records)

    def busy_trial_ids(self) -> list[tuple[int, str]]:
        """Trials running (``InProgress``) or winding down after a pause or stop (``Stopping``)."""
        with self._lock:
            self._table.pump()
            busy: list[tuple[int, str]] = []
            for record in self._table.live_records():
                if record.status == Status.in_progress:
                    busy.append((record.trial_id, Status.in_progress))
                elif record.alive_runs:
                    busy.append((record.trial_id, Status.stopping))
            return busy

    def wait(self, timeout: float | None = None) -> list[int]:
        """Block until some trial has a result or status change not yet fetched.

        Level-triggered: returns at once if something is already waiting.
        Returns the ids of those trials, or ``[]`` when ``timeout`` seconds
        pass first, or at once when no trial is running (nothing could
        change).
        """
        deadline = waiting.deadline_of(timeout)
        while True:
            with self._lock:
                ready, running = waiting.news(self._table)
            if ready:
                return ready
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                return []
            self._sleep_until_event(remaining)

    def _sleep_until_event(self, seconds: float) -> None:
        waiting.sleep_until_news(self._launcher, self._watcher, seconds)

    def stdout(self, trial_id: int) -> list[str]:
        """Every line the trial printed on stdout, across all its runs."""
        return self._log_lines(trial_id, "stdout")

    def stderr(self, trial_id: int) -> list[str]:
        """Every line the trial printed on stderr, across all its runs."""
        return self._log_lines(trial_id, "stderr")

    def _log_lines(self, trial_id: int, stream: str) -> list[str]:
        paths = self._record(trial_id).paths
        try:
            with open(paths.log(stream), encoding="utf-8", errors="replace") as log:
                return log.readlines()
        except FileNotFoundError:
            return []

    def read_log(self, trial_id: int, stream: str = "stdout", offset: int = 0) -> tuple[str, int]:
        """Log text from byte ``offset`` on, and the offset to pass next time."""
        record = self._record(trial_id)
        if stream not in _LOG_STREAMS:
            raise BackendConfigurationError(
                "stream", stream, "is not a log stream", "Use 'stdout' or 'stderr'."
            )
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BackendConfigurationError(
                "offset", offset, "must be a byte offset >= 0",
                "Pass 0, or the offset returned by the previous read_log call.",
            )
        return read_log_text(record.paths.log(stream), offset)

    # -- checkpoints -------------------------------------------------------

    def copy_checkpoint(self, src_trial_id: int, tgt_trial_id: int) -> None:
        """Copy one trial's checkpoint to another, atomically.

        The target may be ``new_trial_id()`` (a trial about to start) or a
        trial whose processes have ended; its checkpoint is replaced.
        """
        with self._lock:
            self._table.pump()
            source = self._record(src_trial_id)
            target_id = self._checkpoint_target(tgt_trial_id)
            checkpoints.check_copy(self._table, self._paths, source, target_id)
            self._ensure_experiment_dir()
            checkpoints.copy(self._paths, source.trial_id, target_id)

    def delete_checkpoint(self, trial_id: int) -> None:
        """Delete a trial's checkpoints: now, or as soon as its processes are gone.

        A trial whose processes are still ending (a pause or stop within its
        grace period) has its checkpoints deleted by its keeper the moment
        its tree is gone, whether or not this driver calls anything again.
        """
        with self._lock:
            checkpoints.delete(self._table, self._paths, self._checkpoint_target(trial_id))

    def _checkpoint_target(self, trial_id: int) -> int:
        if (
            isinstance(trial_id, int)
            and not isinstance(trial_id, bool)
            and trial_id == self.new_trial_id()
        ):
            return trial_id
        return self._record(trial_id).trial_id

    # -- persistence ---------------------------------------------------------

    def on_tuner_save(self) -> None:
        """Write the trial table snapshot (called by Syne Tune's Tuner on save)."""
        with self._lock:
            self._folder.compact()

    def _ensure_experiment_dir(self) -> None:
        if not self._folder.created:
            self._folder.create(self._options(), self._take_over_callback())

    # -- restore and pickling ------------------------------------------------

    @classmethod
    def restore(
        cls, experiment_dir: str | os.PathLike[str], *, launcher: Launcher | None = None
    ) -> LocalBackend:
        """Rebuild the backend of an experiment whose driver ended, even by SIGKILL.

        Every trial comes back with its status and config. Results the old
        driver delivered are not delivered again; results written but not
        delivered are delivered once by the next ``fetch_status_results``.
        Trials that were running come back ``Paused`` and resume from their
        latest checkpoint, unless the experiment runs in detach mode, where
        trials still running are re-attached and keep streaming. ``launcher``
        is where the trials run, as for the constructor (a ``LocalLauncher``
        by default).
        """
        root = Path(experiment_dir).expanduser().absolute()
        options: dict[str, Any] = load_state(root)["options"]
        backend = cls.__new__(cls)
        backend._configure(BackendOptions.from_saved(options))
        backend._folder = ExperimentFolder(root, created=True)
        backend._setup_runtime(launcher)
        backend._folder.lock.acquire(backend._take_over_callback(), take_over=True)
        try:
            # Re-read under the lock: the old driver may have written until now,
            # and may have changed the options it journals (delete_checkpoints,
            # set_entrypoint) since the first read.
            state = load_state(root, owner=True)
            backend.delete_checkpoints = bool(state["options"].get("delete_checkpoints"))
            backend._o.entry_point = Path(state["options"]["entry_point"])
            backend._folder.open_journal(state["seq"])
            rebuild_table(Rebuild(
                paths=backend._paths, table=backend._table, launcher=backend._launcher,
                allocator=backend._allocator, watcher=backend._file_watcher,
                journal=backend._journal_or_fail(), detach=backend._o.detach,
                grace_period=backend._o.grace_period,
            ), state)
        except BaseException:
            backend._folder.close()
            raise
        return backend

    def __getstate__(self) -> dict[str, Any]:
        # A pickle (Syne Tune's Tuner saves itself with dill) carries only the
        # folder; unpickling restores the experiment from it.
        self.on_tuner_save()
        return {"experiment_dir": str(self._paths.root), "created": self._folder.created,
                "options": self._options()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("created"):
            restored = type(self).restore(state["experiment_dir"])
            self.__dict__.update(restored.__dict__)
            return
        options = dict(state["options"])
        cwd = options.pop("cwd", None)
        fresh = type(self)(experiment_dir=state["experiment_dir"], **options)
        if cwd is not None:
            # Trials run in the working folder of the driver that made the
            # backend, as they do after a restore, not in the unpickler's.
            fresh._o.cwd = Path(cwd)
        self.__dict__.update(fresh.__dict__)

    # -- internals ---------------------------------------------------------

    def _record(self, trial_id: object) -> TrialRecord:
        records = self._table.records
        if (
            isinstance(trial_id, bool)
            or not isinstance(trial_id, int)
            or not 0 <= trial_id < len(records)
        ):
            raise TrialNotFoundError(trial_id, len(records))
        return records[trial_id]

    def _trial_result(self, record: TrialRecord) -> TrialResult:
        return record.as_trial().add_results([], record.status, record.training_end_time)

    def _make_allocator(self) -> GpuAllocator:
        if self._o.num_gpus is not None:
            devices = [str(index) for index in range(self._o.num_gpus)]
        else:
            devices = self._launcher.gpu_devices(self._o.env)
        return GpuAllocator(devices, self._o.gpus_to_use, self._o.num_gpus_per_trial)

    def _allocator(self) -> GpuAllocator:
        if self._gpus is None:
            self._gpus = self._make_allocator()
        return self._gpus

    def _file_watcher(self) -> FileWatcher:
        if self._watcher is None:
            self._watcher = FileWatcher()
        return self._watcher

class _BackendLock:
    """The backend's re-entrant lock, which refuses entry once the experiment has moved.

    Every public method takes it, so a backend whose experiment was taken
    over by a restore in the same process raises on any later call.
    """

    def __init__(self, folder: ExperimentFolder) -> None:
        self._lock = threading.RLock()
        self._folder = folder
        self.moved = False

    def __enter__(self) -> None:
        self._lock.acquire()
        if self.moved:
            self._lock.release()
            raise ExperimentMovedError(str(self._folder.paths.root))

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

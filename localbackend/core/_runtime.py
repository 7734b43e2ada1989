"""The machinery behind ``LocalBackend``: its state, and the operations its methods share.

``LocalBackend`` (in ``_backend``) is the public surface: each method checks
its arguments and takes the backend's lock. What those methods have in
common lives here: the options, the experiment folder, the launcher, the
trial table, GPUs and file watching, launching and interrupting a run,
waiting for runs to end, and letting go of the experiment, on ``close()`` or
when a restore in this process takes it over.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._errors import (
    BackendConfigurationError,
    ExperimentMovedError,
    LocalBackendError,
    SupervisorError,
    TrialLaunchError,
    experiment_folder_gone,
)
from .._paths import ExperimentPaths, TrialPaths
from .._types import FINISHED_STATUSES, Status, TrialResult
from ..launchers._base import Launcher, check_launcher
from . import _checkpoints as checkpoints
from . import _launching as launching
from . import _waiting as waiting
from ._command import check_entry_point
from ._experiment import ExperimentFolder
from ._gpus import GpuAllocator
from ._journal import Journal, load_state
from ._limits import check_cpus_per_trial
from ._notify import FileWatcher
from ._options import BackendOptions
from ._policy import RetentionPolicy, Retries
from ._storage import atomic_write_json
from ._table import TrialTable
from ._trials import TrialRecord

# Runs are waited for this long beyond the grace period before giving up.
WAIT_MARGIN = 10.0


class BackendCore:
    """The state of one backend and its private operations (see the module docstring)."""

    _o: BackendOptions
    _folder: ExperimentFolder
    _launcher: Launcher
    _table: TrialTable
    _watcher: FileWatcher | None
    _gpus: GpuAllocator | None
    _lock: BackendLock

    def _configure(self, options: BackendOptions) -> None:
        """Take checked options (``restore`` passes the stored ones)."""
        self._o = options
        self._gpus: GpuAllocator | None = None
        if options.num_gpus is not None:
            self._gpus = self._make_allocator()

    def _reopen(self, root: Path, launcher: Launcher | None, saved: Mapping[str, Any]) -> None:
        """Set up a new instance on an experiment folder, whose options ``saved`` holds."""
        try:
            self._configure(BackendOptions.from_saved(saved))
            self._folder = ExperimentFolder(root, created=True)
            self._setup_runtime(launcher)
            self._folder.lock.acquire(self._take_over_callback(), take_over=True)
        except BaseException:
            if isinstance(launcher, Launcher):
                launcher.let_go()  # not left connected (a Dask client, a cluster)
            raise
        try:
            # Re-read under the lock: the old driver may have written until now,
            # and may have changed the options it journals (delete_checkpoints,
            # set_entrypoint) since the first read.
            state = load_state(root, owner=True)
            self._o.delete_checkpoints = bool(state["options"].get("delete_checkpoints"))
            self._table.delete_checkpoints = self._o.delete_checkpoints
            self._o.entry_point = Path(state["options"]["entry_point"])
            self._folder.open_journal(state["seq"])
            # A run that failed while no driver ran is concluded as Failed:
            # nothing is launched while the table is being rebuilt.
            retries, self._table.on_failure = self._table.on_failure, None
            from ._restore import Rebuild, rebuild_table  # a restore only

            rebuild_table(Rebuild(
                paths=self._paths, table=self._table, launcher=self._launcher,
                allocator=self._allocator, cores=self._cpu_allocator,
                journal=self._journal_or_fail(), detach=self._o.detach,
                grace_period=self._o.grace_period, limits=self._o.limits,
            ), state)
            self._table.on_failure = retries
            self._table.settle_failures()
            self._cpu_allocator()
        except BaseException:
            self._folder.close()
            self._launcher.let_go()  # runs it follows in detach mode run on
            raise

    def _setup_runtime(self, launcher: Launcher | None) -> None:
        """The parts that live only as long as this driver process."""
        if launcher is None:
            from ..launchers.local._launcher import LocalLauncher

            launcher = LocalLauncher()
        check_launcher(launcher)
        if self._o.detach and not launcher.capabilities.detach:
            raise BackendConfigurationError(
                "detach", True, f"is not supported by {type(launcher).__name__}",
                "Use detach=False with this launcher.",
            )
        self._launcher = launcher
        launcher.open(detach=self._o.detach, on_session=self._session_started)
        self._watcher = None
        self._table = TrialTable(launcher, self._allocator, self._file_watcher)
        self._table.delete_checkpoints = self._o.delete_checkpoints
        self._lock = BackendLock(self._folder)
        self._cpus: GpuAllocator | None = None
        # The entry point's identity when it last passed check_entry_point.
        self._entry_point_seen: tuple[int, int, int, int] | None = None
        self._retention = RetentionPolicy(self._o.retention, self._table)
        if self._o.retention.active:
            self._table.on_runs_ended = self._retention.after_run
            self._table.metric = self._o.retention.metric
        self._table.on_failure = Retries(self._table, self._retry)

    def _session_started(self, session: dict[str, Any]) -> None:
        # A restore waits for this session to end before it trusts the folder.
        self._folder.append("supervisor", **session)

    @property
    def _paths(self) -> ExperimentPaths:
        return self._folder.paths

    @property
    def _journal(self) -> Journal | None:
        return self._folder.journal

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
        return {**self._o.saved(), "made_by": f"{type(self).__module__}:{type(self).__qualname__}"}

    def _check_entry_point_still_there(self) -> None:
        """Our error if the entry point went away; one stat while it is unchanged."""
        try:
            st = os.stat(self._o.entry_point)
            seen: tuple[int, int, int, int] | None = (
                st.st_dev, st.st_ino, st.st_mode, st.st_ctime_ns,
            )
        except OSError:
            seen = None
        if seen is None or seen != self._entry_point_seen:
            check_entry_point(self._o.entry_point, must_be_executable=not self._o.binary)
            self._entry_point_seen = seen

    def _wait_for_runs_to_end(self, record: TrialRecord) -> None:
        deadline = time.monotonic() + self._o.grace_period + WAIT_MARGIN
        while record.alive_runs and time.monotonic() < deadline:
            self._sleep_until_event(deadline - time.monotonic())
            self._table.pump()

    def _new_record(
        self, clean: dict[str, Any], checkpoint_trial_id: int | None,
        limits: Mapping[str, Any] | None = None,
    ) -> TrialRecord:
        """Create, journal and launch a new trial; a failure leaves no trace of it."""
        trial_id = len(self._table.records)
        paths = self._paths.trial(trial_id)
        existed = paths.root.exists()
        try:
            paths.root.mkdir(exist_ok=True, mode=0o700)  # no parents: a deleted folder stays gone
            if checkpoint_trial_id is not None:
                checkpoints.copy(self._paths, int(checkpoint_trial_id), trial_id)
                self._retention.copied(trial_id)
            atomic_write_json(paths.config, clean)
            self._write_trial_files(paths)
            launching.create_output_files(
                paths, logs_too=not self._launcher.capabilities.local_files,
            )
            self._launcher.ensure_ready()
        except (OSError, LocalBackendError) as err:
            # Leave no half-made trial behind: the id is not used.
            if not existed:
                launching.remove_unstarted(paths)
            if isinstance(err, LocalBackendError) and not isinstance(err, SupervisorError):
                raise
            if isinstance(err, FileNotFoundError) and not self._paths.root.is_dir():
                raise experiment_folder_gone(str(self._paths.root)) from err
            raise self._launch_error(trial_id, err) from err
        record = TrialRecord.new(
            trial_id, clean, paths, self._journal,
            poll=not self._launcher.capabilities.local_files,
        )
        record.limits = self._o.limits.override(limits or {})
        self._table.records.append(record)
        record.log(
            "trial", config=clean, time=record.creation_time.timestamp(),
            checkpoint_trial_id=checkpoint_trial_id,
            limits={k: getattr(record.limits, k) for k, v in (limits or {}).items()
                    if v is not None} or None,
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
        return record

    def _write_trial_files(self, paths: TrialPaths) -> None:
        """Files a subclass adds to a new trial's folder before its first run (none here)."""

    def _relaunch(self, record: TrialRecord, clean: dict[str, Any] | None) -> None:
        """Launch the next run of a paused trial; a failure leaves it paused, as it was."""
        previous_config = record.config
        try:
            if clean is not None:
                atomic_write_json(record.paths.config, clean)
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

    def _retry(self, record: TrialRecord, reason: str, number: int, ran_for: float) -> None:
        """Run a failed trial again from its latest checkpoint (see ``_policy.Retries``)."""
        self._launch(record, reason=reason, retry=number, ran_for=round(ran_for, 3))

    def _cpu_allocator(self) -> GpuAllocator | None:
        """Cores for ``cpus_per_trial``, handed out least-used first as GPUs are."""
        if self._o.cpus_per_trial is None:
            return None
        if self._cpus is None:
            cores = self._launcher.cpu_devices()
            if not cores:
                raise BackendConfigurationError(
                    "cpus_per_trial", self._o.cpus_per_trial,
                    f"is not supported by {type(self._launcher).__name__}, which has no cores "
                    "to pin trials to", "Leave it unset, and set OMP_NUM_THREADS through env.",
                )
            check_cpus_per_trial(self._o.cpus_per_trial, len(cores))
            self._cpus = GpuAllocator(cores, None, self._o.cpus_per_trial)
            self._table.cpus = self._cpus
        return self._cpus

    def _launch(self, record: TrialRecord, *, reason: str, **details: Any) -> None:
        """Start the next run of ``record``; on failure, raise ``TrialLaunchError``."""
        if record.attached:
            # A run that outlived the previous driver is not the launcher's
            # to queue behind; wait here until its tree is gone.
            self._wait_for_runs_to_end(record)
        launching.launch(
            record, launching.RunTemplate(
                binary=self._o.binary, entry_point=self._o.entry_point,
                pass_args_as_json=self._o.pass_args_as_json, env=self._o.env, cwd=self._o.cwd,
                grace_period=self._o.grace_period, delete_checkpoints=self._o.delete_checkpoints,
                preload=self._o.preload,
                keep_checkpoints=self._o.retention.keep_checkpoints,
                cpus_per_trial=self._o.cpus_per_trial, threads_per_trial=self._o.threads_per_trial,
            ),
            launcher=self._launcher, allocator=self._allocator(), table=self._table,
            cpus=self._cpu_allocator(),
        )
        self._retention.forget(record.trial_id)
        record.set_status(Status.in_progress, reason=reason, **details)

    def _launch_error(self, trial_id: int, err: BaseException) -> TrialLaunchError:
        return launching.launch_error(trial_id, [*self._o.binary, str(self._o.entry_point)], err)

    def _interrupt(self, trial_id: int, status: str, reason: str) -> None:
        with self._lock:
            record = self._record(trial_id)
            self._table.pump()
            if record.status == Status.in_progress and self._o.delete_checkpoints:
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
                if not record.alive_runs and self._table.on_runs_ended is not None:
                    self._table.on_runs_ended(record)  # now finished: retention applies
                return
            if record.status == status:
                return
            self._table.stop_accepting(record)
            record.set_status(status, reason=reason)
            current = record.runs - 1
            if current in record.alive_runs:
                self._launcher.terminate(record.trial_id, current)

    def _wait_for_every_run(self) -> None:
        """Wait (grace period plus a margin at most) until no trial process is left."""
        deadline = time.monotonic() + self._o.grace_period + WAIT_MARGIN
        while (
            any(r.alive_runs and not self._launcher.unstarted(r.trial_id, r.alive_runs)
                for r in self._table.live_records())
            and time.monotonic() < deadline
        ):
            self._sleep_until_event(deadline - time.monotonic())
            self._table.pump()

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
                for record in self._table.live_records():  # every running trial is live
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

    def _sleep_until_event(self, seconds: float) -> None:
        waiting.sleep_until_news(self._launcher, self._watcher, seconds)

    def _checkpoint_target(self, trial_id: int) -> int:
        if (
            isinstance(trial_id, int)
            and not isinstance(trial_id, bool)
            and trial_id == len(self._table.records)
        ):
            return trial_id
        return self._record(trial_id).trial_id

    def _ensure_experiment_dir(self) -> None:
        if not self._folder.created:
            self._folder.create(self._options(), self._take_over_callback())

    def _record(self, trial_id: object) -> TrialRecord:
        return self._table.records[self._table.records.checked(trial_id)]

    def _trial_paths(self, trial_id: object) -> TrialPaths:
        """Without the lock: only looks up, so a record stays packed (see ``_compact``)."""
        return self._table.records.paths(self._table.records.checked(trial_id))

    def _trial_result(self, record: TrialRecord) -> TrialResult:
        return record.as_trial().add_results([], record.status, record.training_end_time)

    def _make_allocator(self) -> GpuAllocator:
        if self._o.num_gpus is not None:
            devices = [str(index) for index in range(self._o.num_gpus)]
        else:
            devices = self._launcher.gpu_devices(self._o.env)
        return GpuAllocator(devices, self._o.gpus_to_use, self._o.num_gpus_per_trial,
                            rotate=self._o.rotate_gpus)

    def _allocator(self) -> GpuAllocator:
        if self._gpus is None:
            self._gpus = self._make_allocator()
        return self._gpus

    def _file_watcher(self) -> FileWatcher:
        if self._watcher is None:
            self._watcher = FileWatcher()
        return self._watcher


class BackendLock:
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

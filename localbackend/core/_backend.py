"""``LocalBackend``: run the trials of a tuning experiment as local processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .._errors import InvalidTransitionError, LocalBackendError, close_under
from .._paths import default_experiment_dir
from .._types import Status, Trial, TrialResult
from ..launchers._base import Launcher
from . import _checkpoints as checkpoints
from . import _waiting as waiting
from ._command import check_entry_point, normalize_config
from ._experiment import ExperimentFolder
from ._journal import load_state
from ._limits import Retention, TrialLimits
from ._logs import TrialLogs
from ._options import BackendOptions, check_experiment_dir, made_by
from ._runtime import BackendCore
from ._storage import has_checkpoint


class LocalBackend(BackendCore, TrialLogs):
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
        rotate_gpus: As in Syne Tune: give each trial its own GPUs, free ones
            first, then those assigned least often. False lets every trial
            see every GPU.
        detach: Let trials keep running when the driver dies (by default
            every trial's process tree ends within about a second of the
            driver's death); ``restore`` re-attaches to them.
        launcher: Where the trials run: a ``localbackend.launchers.Launcher``.
            Defaults to a ``LocalLauncher``, which runs them on this machine.
        preload: Modules imported once, so that runs start warm, by fork
            (README, "Warm starts"); any doubt starts a run cold and warns once.
        time_limit, memory_limit, cpus_per_trial, heartbeat_timeout,
        max_failures: What every trial may use, enforced on its whole tree:
            running time in seconds (paused time does not count), memory in
            bytes or a size such as ``"2GiB"``, cores of its own, seconds
            without output before it counts as hung, and how often a failed
            trial is retried from its latest checkpoint. A trial ended at a
            limit is ``Failed``, with ``failure_reason`` saying why.
        threads_per_trial: Set as ``OMP_NUM_THREADS`` and the like for each
            trial; a hint to its numeric libraries, not a limit.
        keep_checkpoints, keep_best, metric, mode, checkpoint_budget: Which
            checkpoints are kept: the newest K of each trial; those of the K
            best trials by the last reported ``metric`` (``mode`` "min" or
            "max"); within a byte budget for the experiment. See the README's
            "Limits, retries and checkpoint retention".
    """

    def __init__(
        self,
        entry_point: str | os.PathLike[str],
        *,
        experiment_dir: str | os.PathLike[str] | None = None,
        binary: str | Sequence[str] | None = None,
        pass_args_as_json: bool = False, delete_checkpoints: bool = False,
        grace_period: float = 10.0,
        env: Mapping[str, str] | None = None,
        num_gpus: int | None = None, num_gpus_per_trial: int = 1,
        gpus_to_use: Sequence[int] | None = None,
        rotate_gpus: bool = True, detach: bool = False,
        launcher: Launcher | None = None, preload: Sequence[str] | None = None,
        time_limit: float | None = None, memory_limit: int | str | None = None,
        cpus_per_trial: int | None = None, threads_per_trial: int | None = None,
        heartbeat_timeout: float | None = None, max_failures: int = 0,
        keep_checkpoints: int | None = None, keep_best: int | None = None,
        metric: str | None = None, mode: str = "min",
        checkpoint_budget: int | str | None = None,
    ) -> None:
        try:
            self._configure(BackendOptions.check(
                entry_point=entry_point, binary=binary, pass_args_as_json=pass_args_as_json,
                delete_checkpoints=delete_checkpoints, grace_period=grace_period, env=env,
                num_gpus=num_gpus, num_gpus_per_trial=num_gpus_per_trial, gpus_to_use=gpus_to_use,
                detach=detach, cwd=Path.cwd(), rotate_gpus=rotate_gpus, preload=preload,
                limits=TrialLimits.check(
                    time_limit=time_limit, memory_limit=memory_limit,
                    heartbeat_timeout=heartbeat_timeout, max_failures=max_failures,
                ),
                retention=Retention.check(
                    keep_checkpoints=keep_checkpoints, keep_best=keep_best, metric=metric,
                    mode=mode, checkpoint_budget=checkpoint_budget,
                ),
                cpus_per_trial=cpus_per_trial, threads_per_trial=threads_per_trial,
            ))
            if experiment_dir is not None:
                root = Path(experiment_dir).expanduser().absolute()
                check_experiment_dir(root)
            else:
                root = default_experiment_dir()
            self._folder = ExperimentFolder(root, created=False)
            self._setup_runtime(launcher)
            self._cpu_allocator()  # cpus_per_trial is checked against the cores here
        except BaseException:
            # A launcher handed in (a Dask client, a cluster) is not left connected.
            if isinstance(launcher, Launcher):
                launcher.let_go()
            raise

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
        return self._paths.trial(self._table.records.checked(trial_id)).root

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
        self, config: Mapping[str, Any], checkpoint_trial_id: Optional[int] = None,
        *, limits: Optional[Mapping[str, Any]] = None,
    ) -> TrialResult:
        """Start a trial with ``config``, from a copy of another trial's checkpoint if given.

        ``limits`` overrides the backend's ``time_limit``, ``memory_limit``,
        ``heartbeat_timeout`` or ``max_failures`` for this trial only.
        """
        with self._lock:
            clean = normalize_config(config)
            if limits is not None:
                self._o.limits.override(limits)  # checked before anything changes
            if checkpoint_trial_id is not None:
                source = self._record(checkpoint_trial_id)
                if not has_checkpoint(source.paths):
                    raise checkpoints.no_checkpoint_error(
                        self._paths, source.trial_id, self.new_trial_id()
                    )
            self._check_entry_point_still_there()
            self._allocator()  # GPU settings are checked before anything changes
            self._ensure_experiment_dir()
            record = self._new_record(clean, checkpoint_trial_id, limits)
            return self._trial_result(record)

    def resume_trial(
        self, trial_id: int, new_config: Optional[Mapping[str, Any]] = None,
        *, completed: bool = False,
    ) -> TrialResult:
        """Start a paused trial again, in its folder, from its latest checkpoint.

        With ``completed=True`` a Completed trial is run again the same way
        (Syne Tune's adapter does so for a trial paused after its script
        ended, as promotion schedulers expect).
        """
        with self._lock:
            record = self._record(trial_id)
            self._table.pump()
            if record.status != Status.paused and not (
                completed and record.status == Status.completed
            ):
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
                # If it is still ending, its keeper deletes them, and the new run
                # is queued behind that keeper: the flag must not outlive the run.
                record.delete_checkpoint_on_exit = False
            self._relaunch(record, clean)
            if clean is not None:
                record.log("config", config=clean)
            return self._trial_result(record)

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

    def stop_all(self) -> None:
        """Stop every running trial and wait until all their processes are gone."""
        with self._lock:
            for record in self._table.live_records():  # every running trial is live
                if record.status == Status.in_progress:
                    self.stop_trial(record.trial_id)
            if self.delete_checkpoints:
                for trial_id in range(len(self._table.records)):
                    self.delete_checkpoint(trial_id)
            self._wait_for_every_run()

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

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        close_under(self.close, exc)

    # -- results and status --------------------------------------------------

    def fetch_status_results(
        self, trial_ids: Iterable[int]
    ) -> tuple[dict[int, tuple[Trial, str]], list[tuple[int, dict[str, Any]]]]:
        """Statuses of ``trial_ids`` and their results not fetched before.

        Each result is delivered exactly once, in the order the trial wrote
        it; results of different trials are merged by worker timestamp.
        """
        with self._lock:
            checked = [self._table.records.checked(trial_id) for trial_id in trial_ids]
            self._table.pump()
            return self._table.deliver(checked)

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
            self._retention.copied(target_id)

    def delete_checkpoint(self, trial_id: int) -> None:
        """Delete a trial's checkpoints: now, or as soon as its processes are gone.

        A trial whose processes are still ending (a pause or stop within its grace
        period) has them deleted by its keeper the moment its tree is gone.
        """
        with self._lock:
            target_id = self._checkpoint_target(trial_id)
            checkpoints.delete(self._table, self._paths, target_id)
            self._retention.forget(target_id)

    # -- persistence ---------------------------------------------------------

    def on_tuner_save(self) -> None:
        """Write the trial table snapshot (called by Syne Tune's Tuner on save)."""
        with self._lock:
            self._folder.compact()

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
        by default). It comes back as the class that made it, when that is
        a subclass of this one (a ``FunctionBackend``'s as a ``FunctionBackend``).
        """
        root = Path(experiment_dir).expanduser().absolute()
        saved = load_state(root)["options"]
        backend = cls.__new__(made_by(saved, cls))
        backend._reopen(root, launcher, saved)
        return backend

    def __getstate__(self) -> dict[str, Any]:
        # A pickle (Syne Tune's Tuner saves itself with dill) carries only the
        # folder; unpickling restores the experiment from it.
        self.on_tuner_save()
        return {"experiment_dir": str(self._paths.root), "created": self._folder.created,
                "options": self._options()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Set up this very object: callbacks handed out during set-up (the
        # launcher's, the table's, the take-over's) must reach it, not a copy.
        if state.get("created"):
            root = Path(state["experiment_dir"]).expanduser().absolute()
            self._reopen(root, None, load_state(root)["options"])
            return
        options = dict(state["options"])
        cwd = options.pop("cwd", None)
        options.pop("made_by", None)  # pickle has rebuilt that very class
        for group in ("limits", "retention"):  # stored grouped, passed one by one
            options.update(options.pop(group, None) or {})
        # The base class's own: a subclass may take other constructor arguments.
        LocalBackend.__init__(self, experiment_dir=state["experiment_dir"], **options)
        if cwd is not None:
            # Trials run in the working folder of the driver that made the
            # backend, as they do after a restore, not in the unpickler's.
            self._o.cwd = Path(cwd)

    # -- internals ---------------------------------------------------------

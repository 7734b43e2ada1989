"""``LocalBackend``: run the trials of a tuning experiment as local processes."""

from __future__ import annotations

import datetime
import heapq
import logging
import math
import os
import select
import shutil
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from . import _protocol as proto
from ._errors import (
    BackendConfigurationError,
    CheckpointCopyError,
    InvalidTransitionError,
    LocalBackendError,
    TrialNotFoundError,
)
from ._gpus import GpuAllocator, detect_gpus
from ._launch import (
    build_launch_spec,
    check_entry_point,
    normalize_config,
    parse_binary,
)
from ._notify import FileWatcher
from ._paths import ExperimentPaths, default_experiment_dir
from ._processes import SupervisorClient
from ._results import read_log_text
from ._storage import (
    atomic_write_json,
    copy_checkpoint_folder,
    delete_checkpoint_folder,
    has_checkpoint,
)
from ._trials import TrialRecord
from ._types import FINISHED_STATUSES, Status, Trial, TrialResult

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Longest ``wait()`` sleeps between checks even without a notification; it
# bounds the delay when a file was replaced and lost its inotify watch.
_MAX_SLEEP_WITH_NOTIFY = 0.5
_MAX_SLEEP_POLLING = 0.02
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
    ) -> None:
        self._entry_point = check_entry_point(entry_point)
        self._binary = parse_binary(binary)
        self._executable = _resolve_program(self._binary[0])
        if (
            isinstance(grace_period, bool)
            or not isinstance(grace_period, (int, float))
            or not math.isfinite(grace_period)
            or grace_period < 0
        ):
            raise BackendConfigurationError(
                "grace_period", grace_period, "must be a finite number of seconds >= 0",
                "Use for example grace_period=10.0.",
            )
        self._grace_period = float(grace_period)
        self._env = _check_env(env)
        if num_gpus is not None and (
            isinstance(num_gpus, bool) or not isinstance(num_gpus, int) or num_gpus < 0
        ):
            raise BackendConfigurationError(
                "num_gpus", num_gpus, "must be a whole number >= 0 or None",
                "Leave it unset to detect the GPUs.",
            )
        if isinstance(num_gpus_per_trial, bool) or not isinstance(num_gpus_per_trial, int) or (
            num_gpus_per_trial < 1
        ):
            raise BackendConfigurationError(
                "num_gpus_per_trial", num_gpus_per_trial, "must be a whole number >= 1",
                "Use for example num_gpus_per_trial=1.",
            )
        self._num_gpus = num_gpus
        self._num_gpus_per_trial = num_gpus_per_trial
        self._gpus_to_use = list(gpus_to_use) if gpus_to_use is not None else None
        self._gpus: GpuAllocator | None = None
        if num_gpus is not None:
            self._gpus = self._make_allocator()
        self.pass_args_as_json = bool(pass_args_as_json)
        self.delete_checkpoints = bool(delete_checkpoints)

        if experiment_dir is not None:
            root = Path(experiment_dir).expanduser().absolute()
            _check_experiment_dir(root)
        else:
            root = default_experiment_dir()
        self._paths = ExperimentPaths(root)
        self._created = False
        self._cwd = Path.cwd()
        self._trials: list[TrialRecord] = []
        self._supervisor = SupervisorClient()
        self._watcher: FileWatcher | None = None
        self._lock = threading.RLock()

    # -- properties and paths ------------------------------------------------

    @property
    def experiment_dir(self) -> Path:
        """The folder holding one sub-folder per trial."""
        return self._paths.root

    @property
    def grace_period(self) -> float:
        return self._grace_period

    def trial_dir(self, trial_id: int) -> Path:
        """The folder of one trial (see the README for its files)."""
        return self._paths.trial(self._record(trial_id).trial_id).root

    def entrypoint_path(self) -> Path:
        return self._entry_point

    def set_entrypoint(self, entry_point: str | os.PathLike[str]) -> None:
        self._entry_point = check_entry_point(entry_point)

    def set_path(self, results_root: str | None = None, tuner_name: str | None = None) -> None:
        """Move the experiment to ``results_root``; only before a trial has started."""
        if results_root is None:
            return
        with self._lock:
            if self._trials:
                raise LocalBackendError(
                    f"cannot move the experiment to {results_root!r}: {len(self._trials)} "
                    f"trial(s) already run in {self.experiment_dir}. "
                    "Call set_path before the first start_trial."
                )
            new_root = Path(results_root).expanduser().absolute()
            _check_experiment_dir(new_root)
            if self._created and new_root != self._paths.root:
                new_root.mkdir(parents=True, exist_ok=True, mode=0o700)
                for entry in self._paths.root.iterdir():
                    shutil.move(str(entry), str(new_root / entry.name))
                self._paths.root.rmdir()
            self._paths = ExperimentPaths(new_root)
            if self._created:
                self._write_metadata()

    # -- starting and resuming ----------------------------------------------

    def new_trial_id(self) -> int:
        """The id the next ``start_trial`` will use."""
        return len(self._trials)

    def start_trial(
        self, config: Mapping[str, Any], checkpoint_trial_id: Optional[int] = None
    ) -> TrialResult:
        """Start a trial with ``config``, from a copy of another trial's checkpoint if given."""
        with self._lock:
            clean = normalize_config(config)
            if checkpoint_trial_id is not None:
                source = self._record(checkpoint_trial_id)
                if not has_checkpoint(source.paths):
                    raise self._no_checkpoint_error(source.trial_id, self.new_trial_id())
            self._ensure_experiment_dir()
            trial_id = self.new_trial_id()
            paths = self._paths.trial(trial_id)
            paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if checkpoint_trial_id is not None:
                self._copy_checkpoint(int(checkpoint_trial_id), trial_id)
            atomic_write_json(paths.config, clean)
            record = TrialRecord.new(trial_id, clean, paths)
            self._trials.append(record)
            self._launch(record, reason="start_trial")
            return self._trial_result(record)

    def resume_trial(
        self, trial_id: int, new_config: Optional[Mapping[str, Any]] = None
    ) -> TrialResult:
        """Start a paused trial again, in its folder, from its latest checkpoint."""
        with self._lock:
            record = self._record(trial_id)
            self._pump()
            if record.status != Status.paused:
                raise InvalidTransitionError(
                    record.trial_id, record.status, "resume",
                    "Only a Paused trial can be resumed; start a new trial instead.",
                )
            clean = normalize_config(new_config) if new_config is not None else None
            check_entry_point(self._entry_point)
            if clean is not None:
                atomic_write_json(record.paths.config, clean)
                record.config = clean
            self._launch(record, reason="resume_trial")
            return self._trial_result(record)

    def _launch(self, record: TrialRecord, *, reason: str) -> None:
        paths = record.paths
        for path in (paths.results, paths.stdout, paths.stderr):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.close(fd)
        gpus = self._allocator().allocate(record.trial_id)
        record.gpus = gpus
        run_start = time.time()
        spec = build_launch_spec(
            trial_id=record.trial_id,
            paths=paths,
            binary=self._binary,
            entry_point=self._entry_point,
            config=record.config,
            pass_args_as_json=self.pass_args_as_json,
            inherited_env=os.environ,
            env_overrides=self._env,
            gpus=gpus,
            iteration_start=record.iterations,
            run_start_time=run_start,
            cwd=self._cwd,
        )
        shown_env = {
            key: value
            for key, value in spec.env.items()
            if key.startswith("LOCALBACKEND_") or key in self._env or key == "CUDA_VISIBLE_DEVICES"
        }
        atomic_write_json(
            paths.command,
            {"run": record.runs, "argv": list(spec.argv), "cwd": str(spec.cwd), "env": shown_env},
        )
        watcher = self._file_watcher()
        watcher.watch(paths.results)
        watcher.watch(paths.stdout)
        run = record.runs
        self._supervisor.spawn(
            record.trial_id, run, spec, self._executable, paths, self._grace_period
        )
        record.runs += 1
        record.alive_runs.add(run)
        record.accepting = True
        record.run_start_time = run_start
        record.exit_code = record.exit_signal = None
        record.stderr_tail = ""
        record.training_end_time = None
        record.set_status(Status.in_progress, reason=reason)

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
            self._pump()
            if record.status in FINISHED_STATUSES:
                return
            if record.status == status:
                return
            if record.status == Status.in_progress:
                self._ingest(record)
            record.accepting = False
            record.set_status(status, reason=reason)
            current = record.runs - 1
            if current in record.alive_runs:
                self._supervisor.terminate(record.trial_id, current)

    def stop_all(self) -> None:
        """Stop every running trial and wait until all their processes are gone."""
        with self._lock:
            for record in self._trials:
                if record.status == Status.in_progress:
                    self.stop_trial(record.trial_id)
            if self.delete_checkpoints:
                for record in self._trials:
                    self.delete_checkpoint(record.trial_id)
            deadline = time.monotonic() + self._grace_period + _STOP_ALL_MARGIN
            while any(r.alive_runs for r in self._trials) and time.monotonic() < deadline:
                self._sleep_until_event(deadline - time.monotonic())
                self._pump()

    def close(self) -> None:
        """Stop every trial, wait for its processes to end, and release the supervisor."""
        with self._lock:
            self.stop_all()
            self._supervisor.shutdown()
            self._pump()
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
            if self._created:
                self._write_metadata()

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
            self._pump()
            streams: list[list[tuple[int, dict[str, Any]]]] = []
            statuses: dict[int, tuple[Trial, str]] = {}
            for record in records:
                self._ingest(record)
                for queue in (record.from_results_file, record.from_stdout):
                    if queue:
                        streams.append([(record.trial_id, result) for result in queue])
                        queue.clear()
                record.status_unfetched = False
                statuses[record.trial_id] = (record.as_trial(), record.status)
            if len(streams) == 1:
                return statuses, streams[0]
            merged = list(
                heapq.merge(*streams, key=lambda item: item[1].get(proto.ST_WORKER_TIMESTAMP, 0.0))
            )
            return statuses, merged

    def busy_trial_ids(self) -> list[tuple[int, str]]:
        """Trials running (``InProgress``) or winding down after a pause or stop (``Stopping``)."""
        with self._lock:
            self._pump()
            busy: list[tuple[int, str]] = []
            for record in self._trials:
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
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
            raise BackendConfigurationError(
                "timeout", timeout, "must be None or a number of seconds >= 0",
                "Use for example wait(timeout=1.0).",
            )
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                self._pump()
                ready = []
                running = False
                for record in self._trials:
                    if record.status == Status.in_progress:
                        self._ingest(record)
                        running = True
                    if record.has_news:
                        ready.append(record.trial_id)
                    if record.alive_runs:
                        running = True
            if ready:
                return ready
            remaining = deadline - time.monotonic()
            if not running or remaining <= 0:
                return []
            self._sleep_until_event(remaining)

    def _sleep_until_event(self, seconds: float) -> None:
        fds = [fd for fd in (self._supervisor.events_fd, self._file_watcher().fileno()) if fd >= 0]
        cap = _MAX_SLEEP_WITH_NOTIFY if self._file_watcher().fileno() >= 0 else _MAX_SLEEP_POLLING
        timeout = max(0.0, min(seconds, cap))
        if fds:
            try:
                select.select(fds, [], [], timeout)
            except InterruptedError:
                pass
        else:
            time.sleep(timeout)
        if self._watcher is not None:
            self._watcher.drain()

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
            self._pump()
            source = self._record(src_trial_id)
            target_id = self._checkpoint_target(tgt_trial_id)
            if target_id == source.trial_id:
                raise CheckpointCopyError(
                    source.trial_id, target_id, "source and target are the same trial",
                    "Copy to a different trial.",
                )
            if target_id < len(self._trials):
                target = self._trials[target_id]
                if target.status == Status.in_progress or target.alive_runs:
                    raise InvalidTransitionError(
                        target_id,
                        target.status if not target.alive_runs or target.status
                        == Status.in_progress else f"{target.status} (process still ending)",
                        "copy a checkpoint onto",
                        "Pause or stop it and wait until busy_trial_ids() no longer lists it.",
                    )
            if not has_checkpoint(source.paths):
                raise self._no_checkpoint_error(source.trial_id, target_id)
            self._ensure_experiment_dir()
            self._copy_checkpoint(source.trial_id, target_id)

    def _copy_checkpoint(self, src_trial_id: int, tgt_trial_id: int) -> None:
        try:
            copy_checkpoint_folder(self._paths.trial(src_trial_id), self._paths.trial(tgt_trial_id))
        except OSError as err:
            raise CheckpointCopyError(
                src_trial_id, tgt_trial_id, f"{type(err).__name__}: {err}",
                "The target checkpoint was left as it was; free disk space or fix "
                "permissions and try again.",
            ) from err

    def _no_checkpoint_error(self, src_trial_id: int, tgt_trial_id: int) -> CheckpointCopyError:
        folder = self._paths.trial(src_trial_id).checkpoints
        return CheckpointCopyError(
            src_trial_id, tgt_trial_id, f"trial {src_trial_id} has no checkpoint in {folder}",
            "Let the source trial save a checkpoint first (see checkpoint.save()).",
        )

    def delete_checkpoint(self, trial_id: int) -> None:
        """Delete a trial's checkpoints (after its processes end, if they still run)."""
        with self._lock:
            target_id = self._checkpoint_target(trial_id)
            if target_id < len(self._trials):
                record = self._trials[target_id]
                if record.alive_runs:
                    record.delete_checkpoint_on_exit = True
                    return
            delete_checkpoint_folder(self._paths.trial(target_id))

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
        """Persist the experiment's metadata (called by Syne Tune's Tuner on save)."""
        with self._lock:
            if self._created:
                self._write_metadata()

    def _ensure_experiment_dir(self) -> None:
        if self._created:
            return
        root = self._paths.root
        _check_experiment_dir(root)
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise BackendConfigurationError(
                "experiment_dir", str(root), f"cannot be created ({err.strerror})",
                "Choose a folder you can write to.",
            ) from err
        self._created = True
        self._write_metadata()

    def _write_metadata(self) -> None:
        atomic_write_json(
            self._paths.metadata,
            {
                "format_version": FORMAT_VERSION,
                "entry_point": str(self._entry_point),
                "binary": list(self._binary),
                "pass_args_as_json": self.pass_args_as_json,
                "grace_period": self._grace_period,
                "trials": [
                    {"trial_id": r.trial_id, "status": r.status, "runs": r.runs}
                    for r in self._trials
                ],
            },
        )

    # -- internals ---------------------------------------------------------

    def _record(self, trial_id: object) -> TrialRecord:
        if (
            isinstance(trial_id, bool)
            or not isinstance(trial_id, int)
            or not 0 <= trial_id < len(self._trials)
        ):
            raise TrialNotFoundError(trial_id, len(self._trials))
        return self._trials[trial_id]

    def _trial_result(self, record: TrialRecord) -> TrialResult:
        return record.as_trial().add_results([], record.status, None)

    def _make_allocator(self) -> GpuAllocator:
        if self._num_gpus is not None:
            devices = [str(index) for index in range(self._num_gpus)]
        else:
            inherited = dict(os.environ)
            inherited.update(self._env)
            devices = detect_gpus(inherited)
        return GpuAllocator(devices, self._gpus_to_use, self._num_gpus_per_trial)

    def _allocator(self) -> GpuAllocator:
        if self._gpus is None:
            self._gpus = self._make_allocator()
        return self._gpus

    def _file_watcher(self) -> FileWatcher:
        if self._watcher is None:
            self._watcher = FileWatcher()
        return self._watcher

    def _pump(self) -> None:
        """Apply every event the supervisor has sent."""
        for event in self._supervisor.read_events():
            kind = event["ev"]
            if kind == "supervisor_gone":
                self._on_supervisor_gone()
                continue
            trial_id = int(event["trial"])
            if not 0 <= trial_id < len(self._trials):
                continue
            record = self._trials[trial_id]
            run = int(event["run"])
            if kind == "started":
                if run == record.runs - 1:
                    record.pid = int(event["pid"])
                    record.pid_create_time = float(event["create_time"])
            elif kind == "exited":
                self._on_exit(record, run, event)
            elif kind == "spawn_failed":
                self._on_run_failed(record, run, f"the process could not be started: "
                                    f"{event.get('error')}", signal_name=None)
            elif kind in ("keeper_died", "cancelled"):
                if kind == "keeper_died":
                    self._on_run_failed(
                        record, run, "the process supervising this trial died", "SIGKILL"
                    )
                else:
                    self._run_gone(record, run)

    def _run_gone(self, record: TrialRecord, run: int) -> None:
        record.alive_runs.discard(run)
        if not record.alive_runs:
            self._allocator().release(record.trial_id)
            if self._watcher is not None and record.status != Status.in_progress:
                self._watcher.unwatch(record.paths.results)
                self._watcher.unwatch(record.paths.stdout)
            if record.delete_checkpoint_on_exit:
                record.delete_checkpoint_on_exit = False
                delete_checkpoint_folder(record.paths)

    def _on_exit(self, record: TrialRecord, run: int, event: Mapping[str, Any]) -> None:
        offsets = event.get("offsets", {})
        current = run == record.runs - 1
        if current and record.accepting and record.status == Status.in_progress:
            self._ingest(record, limits=offsets, final=True)
            code = event.get("returncode")
            signal_name = event.get("signal")
            record.exit_code = code
            record.exit_signal = signal_name
            record.training_end_time = datetime.datetime.now()
            record.accepting = False
            if code == 0:
                record.set_status(Status.completed, reason="exited", news=True, returncode=0)
                if self.delete_checkpoints:
                    record.delete_checkpoint_on_exit = True
            else:
                record.stderr_tail = record.read_stderr_tail()
                record.set_status(
                    Status.failed, reason="exited", news=True, returncode=code, signal=signal_name
                )
        else:
            # Output of a paused or stopped run, or of a run a resume has
            # superseded: it stays on disk, but is never delivered.
            record.iterations += _count_lines(
                record.paths.results, record.results_reader.offset, offsets.get("results", 0)
            )
            if current:
                record.exit_code = event.get("returncode")
                record.exit_signal = event.get("signal")
                record.training_end_time = datetime.datetime.now()
        record.results_reader.skip_to(int(offsets.get("results", 0)))
        record.stdout_reader.skip_to(int(offsets.get("stdout", 0)))
        self._run_gone(record, run)

    def _on_run_failed(
        self, record: TrialRecord, run: int, reason: str, signal_name: str | None
    ) -> None:
        if run == record.runs - 1 and record.status == Status.in_progress:
            record.accepting = False
            record.exit_signal = signal_name
            record.training_end_time = datetime.datetime.now()
            try:
                with open(record.paths.stderr, "a", encoding="utf-8") as log:
                    log.write(f"localbackend: {reason}\n")
            except OSError:
                pass
            record.stderr_tail = record.read_stderr_tail() or reason
            record.set_status(Status.failed, reason=reason, news=True, signal=signal_name)
        self._run_gone(record, run)

    def _on_supervisor_gone(self) -> None:
        for record in self._trials:
            for run in sorted(record.alive_runs):
                self._on_run_failed(
                    record, run, "the supervisor process ended unexpectedly", "SIGKILL"
                )

    def _ingest(
        self,
        record: TrialRecord,
        limits: Mapping[str, int] | None = None,
        final: bool = False,
    ) -> None:
        """Read new results of the current run into the trial's queues."""
        if not record.accepting:
            return
        if any(run != record.runs - 1 for run in record.alive_runs):
            return  # an earlier run is still ending; its output is not ours to read
        limits = limits or {}
        now = time.time()
        for reader, queue in (
            (record.results_reader, record.from_results_file),
            (record.stdout_reader, record.from_stdout),
        ):
            key = "results" if queue is record.from_results_file else "stdout"
            new = reader.read(limit=limits.get(key), final=final)
            if not new:
                continue
            iteration = record.iterations
            elapsed = now - record.run_start_time
            for result in new:
                if proto.ST_WORKER_TIMESTAMP not in result:
                    result[proto.ST_WORKER_TIMESTAMP] = now
                if proto.ST_WORKER_ITER not in result:
                    result[proto.ST_WORKER_ITER] = iteration
                if proto.ST_WORKER_TIME not in result:
                    result[proto.ST_WORKER_TIME] = elapsed
                iteration += 1
            record.iterations = iteration
            queue.extend(new)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "LocalBackend cannot be pickled yet: it owns live processes. "
            "Keep the experiment folder and create a new backend instead."
        )


def _count_lines(path: Path, start: int, end: int) -> int:
    """Newlines in ``path`` between two byte offsets."""
    if end <= start:
        return 0
    count = 0
    try:
        with open(path, "rb") as results:
            results.seek(start)
            remaining = end - start
            while remaining > 0:
                block = results.read(min(remaining, 1 << 20))
                if not block:
                    break
                count += block.count(b"\n")
                remaining -= len(block)
    except OSError:
        return 0
    return count


def _resolve_program(program: str) -> str:
    if os.sep in program:
        return os.path.abspath(program)
    found = shutil.which(program)
    return found if found is not None else program


def _check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise BackendConfigurationError(
            "env", env, "must be a dict of variable names to strings",
            "Pass e.g. {'OMP_NUM_THREADS': '1'}.",
        )
    clean: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise BackendConfigurationError(
                "env", {key: value}, f"has an invalid variable name {key!r}",
                "Use names without '=' or NUL characters.",
            )
        if not isinstance(value, str) or "\0" in value:
            raise BackendConfigurationError(
                "env", {key: value}, f"sets {key!r} to a value that is not a string",
                "Convert every value to str.",
            )
        clean[key] = value
    return clean


def _check_experiment_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise BackendConfigurationError(
            "experiment_dir", str(root), "exists and is not a folder",
            "Choose a folder path, or remove the file.",
        )
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BackendConfigurationError(
            "experiment_dir", str(root), f"cannot be written ({probe} is not writable)",
            "Choose a folder you can write to.",
        )

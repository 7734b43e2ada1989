"""Launching a run of a trial: from its record to a ``RunSpec`` handed to the launcher.

A launch either happens whole or changes nothing: the GPUs it took are given
back, a journaled launch is marked failed, and the error is a
``TrialLaunchError`` with the cause chained.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._errors import LocalBackendError, TrialLaunchError
from .._paths import TrialPaths
from .._protocol import ENV_KEEP_CHECKPOINTS, THREAD_COUNT_VARIABLES
from ..launchers._base import Launcher, RunLimits, RunSpec
from ._command import ENV_DEFAULTS, build_launch_spec
from ._gpus import GpuAllocator
from ._table import TrialTable
from ._trials import TrialRecord

# A trial resumed with its time limit used up still runs this long, and is
# then ended at the limit like any other.
MIN_RUN_TIME = 0.01


@dataclass(frozen=True)
class RunTemplate:
    """What every run of the experiment shares, as the backend holds it at launch time."""

    binary: tuple[str, ...]
    entry_point: Path
    pass_args_as_json: bool
    env: Mapping[str, str]
    cwd: Path
    grace_period: float
    delete_checkpoints: bool
    # Modules a zygote imports once, to start the runs from by fork.
    preload: tuple[str, ...] = ()
    keep_checkpoints: int | None = None
    cpus_per_trial: int | None = None
    threads_per_trial: int | None = None


def launch(
    record: TrialRecord,
    template: RunTemplate,
    *,
    launcher: Launcher,
    allocator: GpuAllocator,
    table: TrialTable,
    cpus: GpuAllocator | None = None,
) -> None:
    """Start the next run of ``record``; on failure, raise ``TrialLaunchError``.

    ``cpus`` hands out cores for ``cpus_per_trial`` (None: trials are not pinned).
    """
    paths = record.paths
    paths.keep()  # the trial runs again: its folder's Path is kept until it ends
    held_before = allocator.holders.get(record.trial_id)
    # Cores a run still ending holds (a pause in its grace period, a re-attached run).
    cores_before = cpus.holders.get(record.trial_id) if cpus is not None else None
    run = record.runs
    logged = allocated = pinned_now = False
    try:
        gpus = allocator.allocate(record.trial_id)
        allocated = True
        run_start = time.time()
        spec = build_launch_spec(
            trial_id=record.trial_id,
            paths=paths,
            binary=template.binary,
            entry_point=template.entry_point,
            config=record.config,
            pass_args_as_json=template.pass_args_as_json,
            inherited_env={},  # the launcher's host environment goes under it
            env_overrides=template.env,
            gpus=gpus,
            iteration_start=record.iterations,
            run_start_time=run_start,
            cwd=template.cwd,
        )
        overrides = {
            key: value for key, value in spec.env.items()
            if key not in ENV_DEFAULTS or key in template.env
        }
        cores = cpus.allocate(record.trial_id) if cpus is not None else []
        pinned_now = cpus is not None
        limits = run_limits(record, cores, template.cpus_per_trial)
        overrides.update(_policy_env(template, len(cores) or template.cpus_per_trial or 0))
        # Its GPUs and cores go with the run: a restore that re-attaches to it
        # (detach mode) counts them as taken until it ends.
        pinned = {"cpus": cores} if cores else {}
        record.log("launch", run=run, time=run_start, gpus=gpus, **pinned)
        logged = True
        launcher.start(RunSpec(
            trial_id=record.trial_id, run=run, argv=spec.argv, env=overrides,
            cwd=spec.cwd, paths=paths, grace_period=template.grace_period, gpus=tuple(gpus),
            env_defaults=ENV_DEFAULTS, preload=template.preload,
            delete_checkpoints_on_completion=template.delete_checkpoints, limits=limits,
        ))
    except (OSError, LocalBackendError) as err:
        # The GPUs and cores go back, with their counts of assignments, and
        # what a run still ending holds stays held.
        if allocated:
            allocator.undo(record.trial_id, held_before)
        if pinned_now and cpus is not None:
            cpus.undo(record.trial_id, cores_before)
        if logged:
            record.log("launch_failed", run=run)
        raise launch_error(record.trial_id, [*template.binary, str(template.entry_point)],
                           err) from err
    record.launched(run, run_start, gpus)
    record.cpus = cores
    table.live.add(record.trial_id)


def run_limits(
    record: TrialRecord, cores: Sequence[str], cpus_per_trial: int | None = None
) -> RunLimits:
    """What the keeper enforces on the next run: the running time left, and the rest as set.

    ``cores`` are those the backend chose; a launcher that lists none gets
    only the count, ``cpus_per_trial``, to pick cores on its own host.
    """
    limits = record.limits
    remaining = None
    if limits.time_limit is not None:
        # Paused time does not count: only the runs' own running time does.
        remaining = max(limits.time_limit - record.used_time, MIN_RUN_TIME)
    ending = [run for run in record.alive_runs if run not in record.timed_runs]
    return RunLimits(
        uncounted_run=max(ending) if ending and remaining is not None else None,
        time_limit=remaining, memory_limit=limits.memory_limit,
        heartbeat_timeout=limits.heartbeat_timeout, cpus=tuple(int(c) for c in cores),
        cpus_per_trial=len(cores) or cpus_per_trial,
    )


def _policy_env(template: RunTemplate, cores: int) -> dict[str, str]:
    """Variables the backend's policies set: thread counts, checkpoints kept.

    The thread count is ``threads_per_trial`` if set, else the number of
    cores a pinned trial has; the backend's own ``env`` has the last word.
    """
    env = {}
    threads = template.threads_per_trial or cores
    if threads:
        variables = (name for name in THREAD_COUNT_VARIABLES if name not in template.env)
        env.update({name: str(threads) for name in variables})
    if template.keep_checkpoints is not None:
        env[ENV_KEEP_CHECKPOINTS] = str(template.keep_checkpoints)
    return env


def launch_error(trial_id: int, argv: Sequence[str], err: BaseException) -> TrialLaunchError:
    """Our error for a launch that failed, naming the trial, the command and what to do."""
    if isinstance(err, TrialLaunchError):
        return err
    if isinstance(err, OSError):
        problem, hint = f"{type(err).__name__}: {err}", _launch_hint(err)
    else:
        problem = str(err)
        hint = "Create a new backend, or restore this experiment, and start the trial again."
    return TrialLaunchError(trial_id, list(argv), problem, hint)


def create_output_files(paths: TrialPaths, *, logs_too: bool = False) -> None:
    """Create the trial's results file, so that it exists once ``start_trial`` returns.

    The run's keeper creates ``stdout.log`` and ``stderr.log`` before it
    starts the trial; each file created here is a cost on the driver's launch
    path. ``logs_too`` creates them here as well, for a launcher whose keeper
    writes through a shared filesystem: a driver that polls a log before it
    exists could otherwise be told it is missing by a client's cache for
    longer than it waits for a run's last bytes.
    """
    for path in (paths.results, paths.stdout, paths.stderr) if logs_too else (paths.results,):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(fd)


def remove_unstarted(paths: TrialPaths) -> None:
    """Remove the folder of a trial that failed to start, even with no descriptor to spare."""
    import shutil

    shutil.rmtree(paths.root, ignore_errors=True)
    if not paths.root.exists():
        return
    # rmtree needs file descriptors, which may be what ran out; the files
    # start_trial creates are known by name, and unlink needs none.
    for path in (paths.config, paths.function, paths.results, paths.stdout, paths.stderr):
        try:
            path.unlink()
        except OSError:
            pass
    try:
        paths.root.rmdir()
    except OSError:
        pass


def _launch_hint(err: OSError) -> str:
    if err.errno == errno.EMFILE or err.errno == errno.ENFILE:
        return "Too many files are open: close some, or raise the limit (ulimit -n)."
    if err.errno == errno.ENOSPC:
        return "The disk is full: free some space and start the trial again."
    return "Check that the experiment folder is writable and start the trial again."

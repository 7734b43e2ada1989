"""Rebuild a ``LocalBackend`` from its experiment folder after the driver ended."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._files import count_lines, file_size, read_json_object
from ._journal import Journal, load_state, new_trial
from ._paths import ExperimentPaths
from ._table import process_matches
from ._trials import TrialRecord
from ._types import Status

if TYPE_CHECKING:
    from ._backend import LocalBackend

# How long restore waits for the trees of a dead driver's trials to end.
_ORPHAN_WAIT_MARGIN = 5.0


def restore_backend(cls: type[LocalBackend], root: Path) -> LocalBackend:
    state = load_state(root)
    options: dict[str, Any] = state["options"]
    backend = cls.__new__(cls)
    backend._configure(
        entry_point=options["entry_point"],
        binary=options["binary"],
        pass_args_as_json=bool(options.get("pass_args_as_json")),
        delete_checkpoints=bool(options.get("delete_checkpoints")),
        grace_period=options["grace_period"],
        env=options.get("env"),
        num_gpus=options.get("num_gpus"),
        num_gpus_per_trial=int(options.get("num_gpus_per_trial", 1)),
        gpus_to_use=options.get("gpus_to_use"),
        detach=bool(options.get("detach")),
        cwd=Path(options.get("cwd") or os.getcwd()),
        entry_point_must_exist=False,
    )
    backend._paths = ExperimentPaths(root)
    backend._created = True
    backend._setup_runtime()
    backend._acquire_experiment(take_over=True)
    try:
        # Re-read under the lock: the old driver may have written until now.
        state = load_state(root, owner=True)
        journal = Journal(backend._paths, state["seq"])
        journal.open()
        backend._journal = journal
        supervisor = state.get("supervisor")
        if supervisor and not backend._detach:
            # It ends every trial tree and then exits once the driver is gone;
            # until then a trial may still be writing.
            _wait_for_exit(
                int(supervisor["pid"]), float(supervisor["create_time"]), backend._grace_period
            )
        for saved in _every_trial(backend, state["trials"]):
            _restore_trial(backend, saved, journal)
        backend._table.live.update(r.trial_id for r in backend._table.records)
        journal.append("restored", time=time.time(), pid=os.getpid())
    except BaseException:
        backend._experiment_lock.release()
        raise
    return backend


def _every_trial(backend: LocalBackend, trials: dict[str, Any]) -> list[dict[str, Any]]:
    """The saved trials by id, with a stub for any id whose folder exists but whose
    journal entries were all lost, so that ids stay 0, 1, 2, ... without holes."""
    on_disk = [
        int(entry.name) for entry in backend._paths.root.iterdir()
        if entry.name.isdigit() and (entry / "config.json").exists()
    ]
    last = max([int(key) for key in trials] + on_disk, default=-1)
    return [
        trials.get(str(trial_id)) or new_trial(trial_id, None, 0.0)
        for trial_id in range(last + 1)
    ]


def _restore_trial(backend: LocalBackend, saved: dict[str, Any], journal: Journal) -> None:
    table = backend._table
    trial_id = int(saved["trial_id"])
    config = saved["config"]
    if config is None:  # its journal entry was lost; the folder keeps the config
        config = read_json_object(backend._paths.trial(trial_id).config) or {}
    record = TrialRecord.new(
        trial_id,
        config,
        backend._paths.trial(trial_id),
        journal,
        creation_time=datetime.datetime.fromtimestamp(saved["creation_time"]),
    )
    table.records.append(record)
    record.status = saved.get("status") or Status.in_progress
    runs: list[dict[str, Any]] = saved["runs"]
    record.runs = len(runs)
    delivered = saved["delivered"]
    record.results_reader.offset = int(delivered["results"])
    record.stdout_reader.offset = int(delivered["stdout"])
    record.iterations = int(delivered["iterations"])
    if not runs:
        record.accepting = False
        record.set_status(Status.paused, reason="restored: the trial had not been launched")
        return
    last = runs[-1]
    run = int(last["run"])
    record.run_start_time = float(last.get("launched", 0.0))
    # The keeper writes run.json when the run starts, even if the driver
    # died before it heard of the run.
    started = read_json_object(record.paths.run_record)
    if started is not None and started.get("run") != run:
        started = None
    known = last if last.get("state") in ("started", "exited") else started or {}
    record.pid = known.get("pid")
    record.pid_create_time = known.get("create_time")
    ended = last if last.get("state") == "exited" else None
    if ended is None:
        keeper, keeper_created = known.get("keeper"), known.get("keeper_create_time")
        if keeper and process_matches(int(keeper), float(keeper_created or 0.0)):
            if backend._detach:
                _attach(backend, record, run, int(keeper), float(keeper_created or 0.0))
                return
            _wait_for_exit(int(keeper), float(keeper_created or 0.0), backend._grace_period)
        exit_status = read_json_object(record.paths.exit_status)
        if exit_status is not None and exit_status.get("run") == run:
            ended = exit_status

    if record.status == Status.in_progress:
        if len(runs) > 1:
            # An earlier run's results up to its pause are still owed; what it
            # wrote after that, before this run started, never is.
            earlier = runs[-2].get("accept_until")
            if earlier is not None:
                record.accepting = True
                table.ingest(record, limits=earlier)
            if started is not None:
                offsets = started.get("start_offsets") or {}
                record.results_reader.skip_to(int(offsets.get("results", 0)))
                record.stdout_reader.skip_to(int(offsets.get("stdout", 0)))
            elif ended is None:
                _skip_to_end(record)  # the run never started: it wrote nothing
        record.alive_runs.add(run)
        record.accepting = True
        if ended is not None:
            table.run_exited(record, run, ended)
        else:
            # The run's keeper was killed before it could record an exit:
            # everything the trial wrote came before any pause decision.
            table.ingest(record, final=True)
            record.accepting = False
            record.alive_runs.discard(run)
            record.set_status(
                Status.paused, reason="restored: the driver ended while the trial ran",
                news=True,
            )
            _skip_to_end(record)
        return

    # Paused, Stopped, Completed or Failed: deliver what was accepted before
    # the decision and not yet delivered, and nothing after it.
    accept_until = saved.get("accept_until")
    if accept_until is not None:
        record.accepting = True
        table.ingest(record, limits=accept_until, final=ended is not None)
        record.accepting = False
    else:
        record.accepting = False
    if ended is not None:
        record.exit_code = ended.get("returncode")
        record.exit_signal = ended.get("signal")
        offsets = ended.get("offsets") or {}
        record.results_reader.skip_to(int(offsets.get("results", 0)))
        record.stdout_reader.skip_to(int(offsets.get("stdout", 0)))
    _skip_to_end(record)


def _attach(
    backend: LocalBackend, record: TrialRecord, run: int, keeper: int, keeper_created: float
) -> None:
    """Follow a run that outlived the old driver (detach mode)."""
    record.alive_runs.add(run)
    record.attached[run] = (keeper, keeper_created)
    record.accepting = record.status == Status.in_progress
    watcher = backend._file_watcher()
    watcher.watch(record.paths.results)
    watcher.watch(record.paths.stdout)
    if not record.accepting:
        _skip_to_end(record)


def _wait_for_exit(pid: int, created: float, grace: float) -> None:
    """Wait for a dead driver's supervisor or keeper to finish ending trial trees."""
    deadline = time.monotonic() + grace + _ORPHAN_WAIT_MARGIN
    while process_matches(pid, created) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_matches(pid, created):
        import signal

        # Its keepers get SIGUSR2 from the kernel and end their trees.
        os.kill(pid, signal.SIGKILL)


def _skip_to_end(record: TrialRecord) -> None:
    end = file_size(record.paths.results)
    record.iterations += count_lines(record.paths.results, record.results_reader.offset, end)
    record.results_reader.skip_to(end)
    record.stdout_reader.skip_to(file_size(record.paths.stdout))

"""Rebuild the trial table of an experiment from its folder after the driver ended.

The backend restores itself (``LocalBackend.restore``): it takes the
experiment's lock, re-reads the saved state under it, and hands this module
its empty table to fill, trial by trial, from the journal and the files the
keepers wrote.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._errors import BackendConfigurationError
from .._files import count_lines, file_size, read_json_object
from .._paths import ExperimentPaths
from .._types import Status
from ..launchers._base import Launcher, RunExited, RunHandle
from ._gpus import GpuAllocator
from ._journal import Journal, new_trial
from ._limits import TrialLimits
from ._storage import remove_leftovers
from ._table import TrialTable
from ._trials import TrialRecord, with_run

# How long restore waits for the trees of a dead driver's trials to end.
_ORPHAN_WAIT_MARGIN = 5.0


@dataclass(frozen=True)
class Rebuild:
    """What rebuilding the trial table needs from the backend being restored."""

    paths: ExperimentPaths
    table: TrialTable
    launcher: Launcher
    allocator: Callable[[], GpuAllocator]
    # Cores for cpus_per_trial (None where trials are not pinned).
    cores: Callable[[], GpuAllocator | None]
    journal: Journal
    detach: bool
    grace_period: float
    limits: TrialLimits = field(default_factory=TrialLimits)


def rebuild_table(backend: Rebuild, state: dict[str, Any]) -> None:
    """Fill ``backend.table`` from the experiment's saved state and its trial folders.

    Called with the experiment's lock held and ``state`` read under it. In
    attach mode it first waits for the dead driver's session to end every
    trial tree, since until then a trial may still be writing.
    """
    supervisor = state.get("supervisor")
    if supervisor and not backend.detach:
        backend.launcher.wait_for_session_end(
            supervisor, backend.grace_period + _ORPHAN_WAIT_MARGIN
        )
    trials = _every_trial(backend, state["trials"])
    for saved in trials:
        _restore_trial(backend, saved, backend.journal)
    _count_gpu_assignments(backend, trials)
    backend.table.live.update(range(len(backend.table.records)))
    backend.journal.append("restored", time=time.time(), pid=os.getpid())


def _count_gpu_assignments(backend: Rebuild, trials: list[dict[str, Any]]) -> None:
    """Count how often each GPU was handed out, as the old driver had: rotation goes on."""
    handed_out: dict[str, int] = {}
    for saved in trials:
        for run in saved.get("runs") or []:
            for device in run.get("gpus") or []:
                handed_out[str(device)] = handed_out.get(str(device), 0) + 1
    if not handed_out:
        return  # no GPU was ever assigned: leave GPU detection to the first launch
    try:
        counts = backend.allocator().times_assigned
    except BackendConfigurationError:
        # This host lacks GPUs the settings name: the next launch says so, and
        # reading the restored trials must not fail for it.
        return
    for device, times in handed_out.items():
        if device in counts:  # a GPU this machine no longer has counts for nothing
            counts[device] += times


def _every_trial(backend: Rebuild, trials: dict[str, Any]) -> list[dict[str, Any]]:
    """The saved trials by id, with a stub for any id whose folder exists but whose
    journal entries were all lost, so that ids stay 0, 1, 2, ... without holes."""
    paths = backend.paths
    on_disk = [
        int(entry.name) for entry in paths.root.iterdir()
        if entry.name.isdigit() and paths.trial(int(entry.name)).config.exists()
    ]
    last = max([int(key) for key in trials] + on_disk, default=-1)
    return [
        trials.get(str(trial_id)) or new_trial(trial_id, None, 0.0)
        for trial_id in range(last + 1)
    ]




def _restore_trial(backend: Rebuild, saved: dict[str, Any], journal: Journal) -> None:
    trial_id = int(saved["trial_id"])
    config = saved["config"]
    if config is None:  # its journal entry was lost; the folder keeps the config
        config = read_json_object(backend.paths.trial(trial_id).config) or {}
    record = TrialRecord.new(
        trial_id,
        config,
        backend.paths.trial(trial_id),
        journal,
        creation_time=datetime.datetime.fromtimestamp(saved["creation_time"]),
        poll=not backend.launcher.capabilities.local_files,
    )
    backend.table.records.append(record)
    record.limits = backend.limits.override(saved.get("limits") or {})
    for run_entry in saved["runs"]:
        if run_entry.get("running_time"):
            record.used_time += float(run_entry["running_time"])
            record.timed_runs = with_run(record.timed_runs, int(run_entry["run"]))
    record.retries = [
        float(entry.get("ran_for") or 0.0) for entry in saved.get("history", [])
        if entry.get("retry")
    ]
    record.last_metric = saved["delivered"].get("last_metric")
    record.status = saved.get("status") or Status.in_progress
    failed = [entry for entry in saved.get("history", []) if entry.get("failure")]
    if record.status == Status.failed and failed:
        record.failure_reason = str(failed[-1]["failure"])
        record.failure_kind = str(failed[-1].get("failure_kind") or "exit")
    runs: list[dict[str, Any]] = saved["runs"]
    record.runs = len(runs)
    delivered = saved["delivered"]
    record.results_reader.offset = int(delivered["results"])
    record.stdout_reader.offset = int(delivered["stdout"])
    record.iterations = int(delivered["iterations"])
    if not runs:
        remove_leftovers(record.paths)
        record.interrupted()
        record.set_status(Status.paused, reason="restored: the trial had not been launched")
        return
    last = runs[-1]
    run = int(last["run"])
    record.run_start_time = float(last.get("launched", 0.0))
    # The keeper writes run.json when the run starts, even if the driver
    # died before it heard of the run.
    run_file = read_json_object(record.paths.run_record)
    started = run_file if run_file is not None and run_file.get("run") == run else None
    known = _what_is_known(last, run_file)
    record.pid = known.get("pid")
    ended = last if last.get("state") == "exited" else None
    keeper = None
    if ended is None:
        keeper = _live_keeper(backend.launcher, trial_id, run, known)
        if keeper is not None and not backend.detach:
            backend.launcher.wait_for_run_end(keeper, backend.grace_period + _ORPHAN_WAIT_MARGIN)
            keeper = None
        if keeper is None:
            exit_status = read_json_object(record.paths.exit_status)
            if exit_status is not None and exit_status.get("run") == run:
                ended = exit_status
    # In detach mode an earlier run may still be ending too: one paused in its
    # grace period, whose resumed successor the old supervisor dropped when
    # the driver died (a queued run is never started without a driver).
    ending = [
        (entry, found)
        for entry in (runs[:-1] if backend.detach else [])
        if entry.get("state") != "exited"
        and (found := _live_keeper(
            backend.launcher, trial_id, int(entry["run"]), _what_is_known(entry, run_file)
        )) is not None
    ]
    _restore_delivery(backend, record, saved, started, ended, keeper)
    if keeper is None and not ending:
        # What a copy or delete killed with the old driver left, which the
        # trial's next copy or delete would remove, if it ever came.
        remove_leftovers(record.paths)
    # Attached last: their output is never delivered, and while they are
    # alive nothing of the current run is read (see TrialTable.ingest).
    for entry, found in ending:
        _attach(backend, record, int(entry["run"]), found, entry, streaming=False)
    if ended is not None and isinstance(ended.get("time"), (int, float)):
        # When the run ended, not when this restore noticed it.
        record.training_end_time = datetime.datetime.fromtimestamp(float(ended["time"]))


def _restore_delivery(
    backend: Rebuild,
    record: TrialRecord,
    saved: dict[str, Any],
    started: dict[str, Any] | None,
    ended: dict[str, Any] | None,
    keeper: RunHandle | None,
) -> None:
    """Set what is still owed of the trial's output, and follow its last run if it lives.

    The boundaries are the same whether the last run ended or was re-attached
    (detach mode): what a run wrote before its pause or stop is delivered
    once, what it wrote after, never.
    """
    table = backend.table
    runs: list[dict[str, Any]] = saved["runs"]
    skipped: list[dict[str, Any]] = saved.get("skipped") or []
    run = record.runs - 1
    if record.status == Status.in_progress:
        if len(runs) > 1:
            # An earlier run's results up to its pause are still owed; what it
            # wrote after that, before this run started, never is.
            earlier = runs[-2].get("accept_until")
            if earlier is not None:
                _ingest_owed(table, record, earlier, skipped)
            if started is not None:
                table.skip_output(record, started.get("start_offsets"))
            elif ended is None and keeper is None:
                _skip_to_end(table, record)  # the run never started: it wrote nothing
            else:
                # This run started after the earlier one had ended, so its
                # output begins at or after the earlier run's exit offsets.
                table.skip_output(record, runs[-2].get("offsets"))
        if keeper is not None:
            _attach(backend, record, run, keeper, runs[-1], streaming=True)
        elif ended is not None:
            record.following(run, accepted=True)
            # A run's journal entry does not repeat the trial; exit.json does.
            table.run_exited(record, RunExited.from_record({**ended, "trial": record.trial_id}))
        else:
            # The run's keeper was killed before it could record an exit:
            # everything the trial wrote came before any pause decision.
            record.following(run, accepted=True)
            table.ingest(record, final=True)
            record.interrupted()
            record.run_gone(run)
            # Where acceptance ended, so that a second restore still owes
            # what was read here and not yet delivered.
            _log_accept_until(record)
            record.set_status(
                Status.paused, reason="restored: the driver ended while the trial ran",
                news=True,
            )
            _skip_to_end(table, record)
        return

    # Paused, Stopped, Completed or Failed: deliver what was accepted before
    # the decision and not yet delivered, and nothing after it. A run
    # launched after the decision whose start the old driver did not record
    # (it died inside resume_trial) leaves the decision's bound on the run
    # before it.
    accept_until = saved.get("accept_until")
    if accept_until is None and len(runs) > 1 and "accept_until" not in runs[-1]:
        accept_until = runs[-2].get("accept_until")
    if accept_until is not None:
        _ingest_owed(table, record, accept_until, skipped, final=ended is not None)
    record.interrupted()
    if keeper is not None:
        # Still ending after the decision (detach mode). Its later output is
        # counted, not delivered, when its end is noticed (run_exited).
        _attach(backend, record, run, keeper, runs[-1], streaming=False)
        return
    if ended is not None:
        record.exit_code = ended.get("returncode")
        record.exit_signal = ended.get("signal")
    # Everything after the decision is counted (the iteration counter carries
    # on after it) but never delivered.
    _skip_to_end(table, record)


def _what_is_known(entry: dict[str, Any], run_file: dict[str, Any] | None) -> dict[str, Any]:
    """The PIDs of a run, from its journal entry or else from its keeper's run.json."""
    if entry.get("state") in ("started", "exited"):
        return entry
    if run_file is not None and run_file.get("run") == entry.get("run"):
        return run_file
    return {}


def _live_keeper(
    launcher: Launcher, trial_id: int, run: int, known: dict[str, Any]
) -> RunHandle | None:
    """The run, if what supervises it is still the process it was."""
    if not known.get("keeper"):
        return None
    handle = RunHandle.of_start(trial_id, run, known, str(known.get("host") or ""))
    return handle if launcher.is_alive(handle) else None


def _attach(
    backend: Rebuild,
    record: TrialRecord,
    run: int,
    handle: RunHandle,
    launched: dict[str, Any],
    *,
    streaming: bool,
) -> None:
    """Follow a run that outlived the old driver (detach mode).

    ``launched`` is the run's entry in the saved state, with the GPUs and
    cores its launch recorded: they stay taken until the run ends
    (``run_gone`` releases them), so no trial started meanwhile gets them.

    ``streaming``: the run is the trial's current one and still accepted, so
    its results are read as they come. Otherwise its trial was paused or
    stopped, or a later run was launched: it is asked (again) to end, in case
    the old driver died before the request reached its supervisor, so that a
    resume waiting for it waits at most the grace period.
    """
    record.following(run, accepted=streaming, attached=True)
    backend.launcher.attach(handle, record.paths)
    gpus, cpus = launched.get("gpus"), launched.get("cpus") or []
    if gpus:
        backend.allocator().hold(record.trial_id, gpus)
        record.gpus = list(gpus)
    cores = backend.cores() if cpus else None
    if cores is not None:
        cores.hold(record.trial_id, cpus)
        record.cpus = [str(cpu) for cpu in cpus]
    if streaming:
        backend.table.watch(record)
    else:
        # A keeper already ending its tree keeps its first deadline.
        backend.launcher.terminate(record.trial_id, run)


def _log_accept_until(record: TrialRecord) -> None:
    """Journal where acceptance ends: how far the trial's output was read."""
    record.log(
        "accept_until",
        results=record.results_reader.offset,
        stdout=record.stdout_reader.offset,
    )


def _ingest_owed(
    table: TrialTable, record: TrialRecord, limits: dict[str, Any],
    skipped: list[dict[str, Any]], *, final: bool = False,
) -> None:
    """Take in what is owed up to ``limits``, stepping over what a driver skipped for good."""
    for gap in skipped:
        (results_from, results_to), (stdout_from, stdout_to) = gap["results"], gap["stdout"]
        behind = (results_to <= record.results_reader.offset
                  and stdout_to <= record.stdout_reader.offset)
        beyond = results_from >= int(limits["results"]) and stdout_from >= int(limits["stdout"])
        if behind or beyond:
            continue
        table.ingest(record, limits={"results": results_from, "stdout": stdout_from}, owed=True)
        table.skip_output(record, {"results": results_to, "stdout": stdout_to})
    table.ingest(record, limits=limits, final=final, owed=True)


def _skip_to_end(table: TrialTable, record: TrialRecord) -> None:
    end = file_size(record.paths.results)
    record.iterations += count_lines(record.paths.results, record.results_reader.offset, end)
    table.skip_output(record, {"results": end, "stdout": file_size(record.paths.stdout)})

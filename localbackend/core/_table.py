"""The trial table at run time: apply run events, read and deliver results.

``LocalBackend`` validates calls and launches runs; this module owns what
happens afterwards. It applies the launcher's typed run events (a run
started, exited, could not start, was lost), reads new results of running
trials from their byte offsets, and hands each result out exactly once,
recording in the journal how far delivery has gone.
"""

from __future__ import annotations

import datetime
import heapq
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import _protocol as proto
from .._files import count_lines, read_json_object
from .._types import Status, Trial
from ..launchers._base import (
    Launcher,
    RunEvent,
    RunExited,
    RunLost,
    RunNotStarted,
    RunStarted,
)
from ._compact import TrialRecords
from ._gpus import GpuAllocator
from ._limits import limit_reason
from ._notify import FileWatcher
from ._storage import delete_checkpoint_folder
from ._trials import TrialRecord, with_run

# Why a keeper ended a tree at one of the run's limits (``RunExited.terminated_by``).
LIMIT_KINDS = frozenset({"time_limit", "memory_limit", "hang"})


class TrialTable:
    """Every trial of one backend, and how their runs are going."""

    def __init__(
        self,
        launcher: Launcher,
        allocator: Callable[[], GpuAllocator],
        watcher: Callable[[], FileWatcher],
    ) -> None:
        # Looked up by id; those not live are kept packed (see ``_compact``).
        self.records = TrialRecords()
        # Trials that may still change or have something to hand out: running,
        # with a process still ending, or with undelivered news. Only these are
        # looked at on every wait(), so its cost does not grow with the
        # number of finished trials.
        self.live: set[int] = set()
        self.launcher = launcher
        self.allocator = allocator
        self.watcher = watcher
        self.delete_checkpoints = False
        # Trials whose run failed and that may be retried: the backend decides,
        # once the failed run's tree is gone (see ``pump``).
        # Each with its failure (kind, reason) and how long the failed run ran.
        self.failed_runs: list[tuple[TrialRecord, tuple[str, str], float]] = []
        self.on_failure: Callable[[TrialRecord, tuple[str, str], float], None] | None = None
        # Called once every run of a trial has ended (checkpoint retention).
        self.on_runs_ended: Callable[[TrialRecord], None] | None = None
        # Cores handed out for ``cpus_per_trial``, given back as GPUs are.
        self.cpus: GpuAllocator | None = None
        # The metric whose last value each trial reported is kept (keep_best).
        self.metric: str | None = None
        # The watcher that ``watch`` last used: the one whose notifications a
        # pass takes in (a pass never makes one).
        self.notifier: FileWatcher | None = None

    def live_records(self) -> list[TrialRecord]:
        """The live trials, in id order; packs those that can no longer change.

        Records unpacked since the last pass (a caller looked a trial up) are
        packed again too, unless they became live.
        """
        records = []
        for trial_id in sorted(self.live):
            record = self.records[trial_id]
            if record.status == Status.in_progress or record.alive_runs or record.has_news:
                records.append(record)
            else:
                self.live.discard(trial_id)
                self.records.pack(trial_id)
        self.records.pack_again(self.live)
        return records

    # -- events ------------------------------------------------------------

    def pump(self) -> None:
        """Apply every event that has arrived, without blocking."""
        for event in self.launcher.events():
            self.apply_event(event)

    def settle_failures(self) -> None:
        """Conclude the failures of runs whose trees are gone: retried, or Failed.

        Called once a failed run is gone, so that a retry never starts while
        a process of the failed run is alive, and its GPUs are free again.
        """
        while self.failed_runs:
            record, failure, ran_for = self.failed_runs.pop(0)
            if self.on_failure is None:
                # Being rebuilt by a restore: the retry is decided once it is done.
                self.failed_runs.insert(0, (record, failure, ran_for))
                return
            if record.alive_runs:
                self.fail(record, failure)
            else:
                self.on_failure(record, failure, ran_for)
            if not record.alive_runs and self.on_runs_ended is not None:
                self.on_runs_ended(record)

    def fail(self, record: TrialRecord, failure: tuple[str, str]) -> None:
        """The trial ends ``Failed`` with ``failure`` (its kind and reason)."""
        record.set_status(
            Status.failed, reason=failure[1], news=True, returncode=record.exit_code,
            signal=record.exit_signal, failure=failure,
        )

    def apply_event(self, event: RunEvent) -> None:
        trial_id = event.trial_id
        if not 0 <= trial_id < len(self.records):
            return
        record = self.records[trial_id]
        run = event.run
        if run not in record.alive_runs:
            return  # its end was already taken in from exit.json (see take_in_exit)
        if isinstance(event, RunStarted):
            handle = event.handle
            record.log(
                "started", run=run, pid=handle.pid, create_time=handle.create_time,
                keeper=handle.keeper, keeper_create_time=handle.keeper_create_time,
                host=handle.host,
            )
            if run == record.runs - 1:
                record.pid = handle.pid
                self.watch(record)
        elif isinstance(event, RunExited):
            self.run_exited(record, event)
        elif isinstance(event, RunNotStarted):
            if event.cancelled:
                self.run_gone(record, run)
            else:
                self.run_failed(record, run, event.reason, None, kind="launch")
        elif isinstance(event, RunLost):
            self.run_failed(record, run, event.reason, event.signal, kind="lost")

    def watch(self, record: TrialRecord) -> None:
        """Be woken by writes to the trial's results and stdout (its keeper has created both)."""
        if self.launcher.capabilities.local_files:
            watcher = self.notifier = self.watcher()
            watcher.watch(record.paths.results, record.trial_id)
            watcher.watch(record.paths.stdout, record.trial_id)

    def begin_pass(self) -> FileWatcher | None:
        """Before reading the running trials' files: take in which were written.

        Given to ``ingest``, the watcher it returns lets it skip files that
        were not written since their last read (see ``_notify``); None where
        no file is watched. A watcher closed since (the backend closed or let
        go) watches nothing, so every file is read.
        """
        watcher = self.notifier
        if watcher is not None:
            watcher.begin_pass()
        return watcher

    def take_in_exit(self, record: TrialRecord) -> None:
        """Apply the end of the current run if its keeper has recorded it, without waiting.

        The keeper writes ``exit.json`` once the whole tree is reaped, before
        it reports the end; a decision that depends on whether the run has
        ended (a pause, a checkpoint deletion) reads it here rather than trust
        an event that may still be on its way.
        """
        run = record.runs - 1
        if run not in record.alive_runs or run in record.attached:
            return
        exit_status = read_json_object(record.paths.exit_status)
        if exit_status is not None and exit_status.get("run") == run:
            self.run_exited(record, RunExited.from_record(exit_status))

    def run_gone(self, record: TrialRecord, run: int) -> None:
        if not record.run_gone(run):
            return
        self.allocator().release(record.trial_id)
        if self.cpus is not None:
            self.cpus.release(record.trial_id)
        # No run is left to write: a later run is watched again once it starts.
        # (The watcher ``watch`` used: none is opened for this, after a close.)
        if self.notifier is not None:
            self.notifier.unwatch(record.paths.results)
            self.notifier.unwatch(record.paths.stdout)
        if record.delete_checkpoint_on_exit:
            record.delete_checkpoint_on_exit = False
            delete_checkpoint_folder(record.paths)
        pending = any(failed is record for failed, _, _ in self.failed_runs)
        if self.on_runs_ended is not None and not pending:
            # A failure still to settle runs the hook once it is settled.
            self.on_runs_ended(record)

    def run_exited(self, record: TrialRecord, event: RunExited) -> None:
        run, offsets = event.run, event.offsets
        record.log(
            "exited", run=run, returncode=event.returncode, signal=event.signal,
            terminated_by=event.terminated_by, offsets=dict(offsets), time=event.time,
            running_time=event.running_time, peak_memory=event.peak_memory,
        )
        current = run == record.runs - 1
        if event.running_time and run not in record.timed_runs:
            record.timed_runs = with_run(record.timed_runs, run)
            record.used_time += event.running_time
        ended_at = datetime.datetime.fromtimestamp(event.time) if event.time else None
        if current and record.accepting and record.status == Status.in_progress:
            self.ingest(record, limits=offsets, final=True)
            record.exited(event.returncode, event.signal, ended_at)
            self._accept_until(record)
            self._conclude(record, event)
        else:
            # Output of a paused or stopped run, or of a run a resume has
            # superseded: it stays on disk, but is never delivered.
            record.iterations += count_lines(
                record.paths.results, record.results_reader.offset, offsets.get("results", 0)
            )
            if current:
                record.exited(event.returncode, event.signal, ended_at)
        skipped = self.skip_output(record, offsets)
        if not record.has_news and not skipped:
            self.mark_delivered(record)
        self.run_gone(record, run)
        self.settle_failures()

    def _conclude(self, record: TrialRecord, event: RunExited) -> None:
        """The status of a trial whose accepted run has ended."""
        code, signal_name = event.returncode, event.signal
        ran_for = event.running_time if event.running_time is not None else max(
            event.time - record.run_start_time, 0.0
        )
        if event.terminated_by == "driver_lost":
            record.set_status(Status.paused, reason="the driver ended while the trial ran",
                              news=True)
        elif event.terminated_by in LIMIT_KINDS:
            kind = str(event.terminated_by)
            reason = limit_reason(kind, record.limits, event.peak_memory)
            self._note_in_stderr(record, reason)
            record.stderr_tail = record.read_stderr_tail() or reason
            self.failed_runs.append((record, (kind, reason), ran_for))
        elif event.terminated_by == "supervisor_lost":
            reason = "the supervisor process ended unexpectedly"
            record.stderr_tail = record.read_stderr_tail() or reason
            self.failed_runs.append((record, ("lost", reason), ran_for))
        elif code == 0:
            record.set_status(Status.completed, reason="exited", news=True, returncode=0)
            if self.delete_checkpoints:
                record.delete_checkpoint_on_exit = True
        else:
            record.stderr_tail = record.read_stderr_tail()
            self.failed_runs.append((record, exit_failure(code, signal_name), ran_for))

    @staticmethod
    def _note_in_stderr(record: TrialRecord, reason: str) -> None:
        try:
            with open(record.paths.stderr, "a", encoding="utf-8") as log:
                log.write(f"localbackend: {reason}\n")
        except OSError:
            pass

    def run_failed(
        self, record: TrialRecord, run: int, reason: str, signal_name: str | None,
        *, kind: str = "lost",
    ) -> None:
        if run == record.runs - 1 and record.status == Status.in_progress:
            self.ingest(record, final=True)  # what it wrote before it was lost is owed
            record.lost(signal_name, datetime.datetime.now())
            self._accept_until(record)
            self._note_in_stderr(record, reason)
            record.stderr_tail = record.read_stderr_tail() or reason
            # No keeper said how long it ran: the time since its launch counts.
            ran_for = max(time.time() - record.run_start_time, 0.0)
            if run not in record.timed_runs:
                record.timed_runs = with_run(record.timed_runs, run)
                record.used_time += ran_for
            self.failed_runs.append((record, (kind, reason), ran_for))
        self.run_gone(record, run)
        self.settle_failures()

    # -- results -------------------------------------------------------------

    def stop_accepting(self, record: TrialRecord) -> None:
        """Read what the trial wrote so far, then accept nothing more from this run."""
        if record.status == Status.in_progress:
            self.ingest(record)
        record.interrupted()
        self._accept_until(record)

    def _accept_until(self, record: TrialRecord) -> None:
        record.log(
            "accept_until",
            results=record.results_reader.offset,
            stdout=record.stdout_reader.offset,
        )

    def ingest(
        self,
        record: TrialRecord,
        limits: Mapping[str, int] | None = None,
        final: bool = False,
        *,
        owed: bool = False,
        notified: FileWatcher | None = None,
    ) -> None:
        """Read new results of the current run into the trial's queues.

        ``owed``: read even though the run is no longer accepted (a restore
        taking in what a run wrote before its pause, up to ``limits``).
        ``notified``: the watcher from ``begin_pass``; a file it says was not
        written since its last read is not read.
        """
        if not record.accepting and not owed:
            return
        alive = record.alive_runs
        if alive and (len(alive) > 1 or record.runs - 1 not in alive):
            return  # an earlier run is still ending; its output is not ours to read
        limits = limits or {}
        for reader, queue, key in (
            (record.results_reader, record.from_results_file, "results"),
            (record.stdout_reader, record.from_stdout, "stdout"),
        ):
            if notified is not None and not notified.take_change(os.fspath(reader.path)):
                continue
            new = reader.read(limit=limits.get(key), final=final)
            if new:
                now = time.time()
                record.iterations = fill_worker_fields(
                    new, record.iterations, now, now - record.run_start_time
                )
                queue.extend(new)
                if self.metric is not None:
                    _note_metric(record, new, self.metric)

    def deliver(
        self, trial_ids: Iterable[int]
    ) -> tuple[dict[int, tuple[Trial, str]], list[tuple[int, dict[str, Any]]]]:
        """Hand out every queued result of the trials ``trial_ids``, each exactly once.

        A packed trial has nothing queued and nothing more to read (see
        ``_compact``): its status is read without unpacking it.
        """
        streams: list[list[tuple[int, dict[str, Any]]]] = []
        statuses: dict[int, tuple[Trial, str]] = {}
        notified = self.begin_pass()
        to_read = notified.owners_to_read(every_trial=False) if notified is not None else None
        for trial_id in trial_ids:
            settled = self.records.packed_trial(trial_id)
            if settled is not None:
                statuses[trial_id] = settled
                continue
            record = self.records[trial_id]
            if to_read is None or trial_id in to_read:
                self.ingest(record, notified=notified)
            delivered = False
            for queue in (record.from_results_file, record.from_stdout):
                if queue:
                    streams.append([(record.trial_id, result) for result in queue])
                    queue.clear()
                    delivered = True
            if delivered:
                self.mark_delivered(record)
            record.status_unfetched = False
            statuses[record.trial_id] = (record.as_trial(), record.status)
        if not streams:
            return statuses, []
        if len(streams) == 1:
            return statuses, streams[0]
        return statuses, list(heapq.merge(*streams, key=_timestamp_key))

    def skip_output(self, record: TrialRecord, offsets: Mapping[str, Any] | None) -> bool:
        """Pass over the trial's output up to ``offsets`` for good; True if that was journaled.

        With no results queued the delivered offsets move past it, else it is
        journaled ``skipped``, for a restore to step over: none reads it again."""
        offsets = offsets or {}
        results, stdout = record.results_reader.offset, record.stdout_reader.offset
        record.results_reader.skip_to(int(offsets.get("results", 0)))
        record.stdout_reader.skip_to(int(offsets.get("stdout", 0)))
        moved_to = (record.results_reader.offset, record.stdout_reader.offset)
        if moved_to == (results, stdout):
            return False
        if record.from_results_file or record.from_stdout:
            record.log("skipped", results=[results, moved_to[0]], stdout=[stdout, moved_to[1]])
        else:
            self.mark_delivered(record)
        return True

    def mark_delivered(self, record: TrialRecord) -> None:
        """Record that everything read so far has been delivered (queues are empty)."""
        record.log(
            "delivered",
            results=record.results_reader.offset,
            stdout=record.stdout_reader.offset,
            iterations=record.iterations,
            last_metric=record.last_metric,
        )


def _note_metric(record: TrialRecord, results: list[dict[str, Any]], metric: str) -> None:
    for result in reversed(results):
        value = result.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            record.last_metric = float(value)
            return


def exit_failure(code: int | None, signal_name: str | None) -> tuple[str, str]:
    """The failure kind and reason of a run that ended on its own with an error."""
    if signal_name:
        return "signal", f"killed by {signal_name}"
    return "exit", f"exit code {code}"


def _timestamp_key(item: tuple[int, dict[str, Any]]) -> float:
    """Merge key: the worker timestamp, or 0 when a script wrote something odd there."""
    stamp = item[1].get(proto.ST_WORKER_TIMESTAMP)
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp == stamp:
        return float(stamp)
    return 0.0


def fill_worker_fields(
    results: list[dict[str, Any]], iteration: int, now: float, elapsed: float
) -> int:
    """Add the ``st_worker_*`` fields a result lacks; returns the next iteration."""
    timestamp, worker_iter, worker_time = (
        proto.ST_WORKER_TIMESTAMP, proto.ST_WORKER_ITER, proto.ST_WORKER_TIME
    )
    for result in results:
        if timestamp not in result:
            result[timestamp] = now
        if worker_iter not in result:
            result[worker_iter] = iteration
        if worker_time not in result:
            result[worker_time] = elapsed
        iteration += 1
    return iteration

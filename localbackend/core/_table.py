"""The trial table at run time: apply process events, read and deliver results.

``LocalBackend`` validates calls and launches runs; this module owns what
happens afterwards. It applies the supervisor's events (a run started,
exited, could not start), reads new results of running trials from their
byte offsets, and hands each result out exactly once, recording in the
journal how far delivery has gone.
"""

from __future__ import annotations

import datetime
import heapq
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import _protocol as proto
from .._files import count_lines, read_json_object
from .._types import Status, Trial
from ..launchers.local._client import SupervisorClient
from ._gpus import GpuAllocator
from ._notify import FileWatcher
from ._storage import delete_checkpoint_folder
from ._trials import TrialRecord


class TrialTable:
    """Every trial of one backend, and how their runs are going."""

    def __init__(
        self,
        supervisor: SupervisorClient,
        allocator: Callable[[], GpuAllocator],
        watcher: Callable[[], FileWatcher],
    ) -> None:
        self.records: list[TrialRecord] = []
        # Trials that may still change or have something to hand out: running,
        # with a process still ending, or with undelivered news. Only these are
        # looked at on every wait(), so its cost does not grow with the
        # number of finished trials.
        self.live: set[int] = set()
        self.supervisor = supervisor
        self.allocator = allocator
        self.watcher = watcher
        self.delete_checkpoints = False

    def live_records(self) -> list[TrialRecord]:
        """The live trials, in id order; drops those that can no longer change."""
        records = []
        for trial_id in sorted(self.live):
            record = self.records[trial_id]
            if record.status == Status.in_progress or record.alive_runs or record.has_news:
                records.append(record)
            else:
                self.live.discard(trial_id)
        return records

    # -- events ------------------------------------------------------------

    def pump(self) -> None:
        """Apply every event that has arrived, without blocking."""
        for event in self.supervisor.read_events():
            self.apply_event(event)
        for record in self.live_records():
            if record.attached:
                self._poll_attached(record)

    def apply_event(self, event: Mapping[str, Any]) -> None:
        kind = event["ev"]
        trial_id = int(event["trial"])
        if not 0 <= trial_id < len(self.records):
            return
        record = self.records[trial_id]
        run = int(event["run"])
        if run not in record.alive_runs:
            return  # its end was already taken in from exit.json (see take_in_exit)
        if kind == "started":
            fields = {k: event[k] for k in ("pid", "create_time", "keeper", "keeper_create_time")
                      if k in event}
            record.log("started", run=run, **fields)
            if run == record.runs - 1:
                record.pid = int(event["pid"])
        elif kind == "exited":
            self.run_exited(record, run, event)
        elif kind == "spawn_failed":
            self.run_failed(
                record, run, f"the process could not be started: {event.get('error')}", None
            )
        elif kind == "keeper_died":
            self.run_failed(record, run, "the process supervising this trial died", "SIGKILL")
        elif kind == "run_lost":
            self.run_failed(
                record, run, "the supervisor process ended unexpectedly", "SIGKILL"
            )
        elif kind == "cancelled":
            self.run_gone(record, run)

    def take_in_exit(self, record: TrialRecord) -> None:
        """Apply the end of the current run if its keeper has recorded it, without waiting.

        The keeper writes ``exit.json`` once the whole tree is reaped, before
        it reports on the event pipe; a decision that depends on whether the
        run has ended (a pause, a checkpoint deletion) reads it here rather
        than trust an event that may still be on its way.
        """
        run = record.runs - 1
        if run not in record.alive_runs or run in record.attached:
            return
        exit_status = read_json_object(record.paths.exit_status)
        if exit_status is not None and exit_status.get("run") == run:
            self.run_exited(record, run, exit_status)

    def _poll_attached(self, record: TrialRecord) -> None:
        """Notice the end of a run whose keeper belongs to an earlier driver."""
        for run, (keeper, keeper_created) in list(record.attached.items()):
            exit_status = read_json_object(record.paths.exit_status)
            if exit_status is not None and exit_status.get("run") == run:
                del record.attached[run]
                self.run_exited(record, run, exit_status)
            elif not process_matches(keeper, keeper_created):
                del record.attached[run]
                self.run_failed(record, run, "the process supervising this trial died", "SIGKILL")

    def run_gone(self, record: TrialRecord, run: int) -> None:
        record.alive_runs.discard(run)
        record.attached.pop(run, None)
        if record.alive_runs:
            return
        self.allocator().release(record.trial_id)
        if record.status != Status.in_progress:
            self.watcher().unwatch(record.paths.results)
            self.watcher().unwatch(record.paths.stdout)
        if record.delete_checkpoint_on_exit:
            record.delete_checkpoint_on_exit = False
            delete_checkpoint_folder(record.paths)

    def run_exited(self, record: TrialRecord, run: int, event: Mapping[str, Any]) -> None:
        offsets = event.get("offsets", {})
        record.log(
            "exited", run=run, returncode=event.get("returncode"), signal=event.get("signal"),
            terminated_by=event.get("terminated_by"), offsets=offsets,
            time=event.get("time", time.time()),
        )
        current = run == record.runs - 1
        if current and record.accepting and record.status == Status.in_progress:
            self.ingest(record, limits=offsets, final=True)
            code = event.get("returncode")
            signal_name = event.get("signal")
            record.exit_code = code
            record.exit_signal = signal_name
            record.training_end_time = datetime.datetime.now()
            record.accepting = False
            self._accept_until(record)
            if event.get("terminated_by") == "driver_lost":
                record.set_status(Status.paused, reason="the driver ended while the trial ran",
                                  news=True)
            elif event.get("terminated_by") == "supervisor_lost":
                reason = "the supervisor process ended unexpectedly"
                record.stderr_tail = record.read_stderr_tail() or reason
                record.set_status(
                    Status.failed, reason=reason, news=True, returncode=code, signal=signal_name
                )
            elif code == 0:
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
            record.iterations += count_lines(
                record.paths.results, record.results_reader.offset, offsets.get("results", 0)
            )
            if current:
                record.exit_code = event.get("returncode")
                record.exit_signal = event.get("signal")
                record.training_end_time = datetime.datetime.now()
        record.results_reader.skip_to(int(offsets.get("results", 0)))
        record.stdout_reader.skip_to(int(offsets.get("stdout", 0)))
        if not record.has_news:
            self.mark_delivered(record)
        self.run_gone(record, run)

    def run_failed(
        self, record: TrialRecord, run: int, reason: str, signal_name: str | None
    ) -> None:
        if run == record.runs - 1 and record.status == Status.in_progress:
            record.accepting = False
            self._accept_until(record)
            record.exit_signal = signal_name
            record.training_end_time = datetime.datetime.now()
            try:
                with open(record.paths.stderr, "a", encoding="utf-8") as log:
                    log.write(f"localbackend: {reason}\n")
            except OSError:
                pass
            record.stderr_tail = record.read_stderr_tail() or reason
            record.set_status(Status.failed, reason=reason, news=True, signal=signal_name)
        self.run_gone(record, run)

    # -- results -------------------------------------------------------------

    def stop_accepting(self, record: TrialRecord) -> None:
        """Read what the trial wrote so far, then accept nothing more from this run."""
        if record.status == Status.in_progress:
            self.ingest(record)
        record.accepting = False
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
    ) -> None:
        """Read new results of the current run into the trial's queues."""
        if not record.accepting:
            return
        if any(run != record.runs - 1 for run in record.alive_runs):
            return  # an earlier run is still ending; its output is not ours to read
        limits = limits or {}
        now = time.time()
        for reader, queue, key in (
            (record.results_reader, record.from_results_file, "results"),
            (record.stdout_reader, record.from_stdout, "stdout"),
        ):
            new = reader.read(limit=limits.get(key), final=final)
            if new:
                record.iterations = fill_worker_fields(
                    new, record.iterations, now, now - record.run_start_time
                )
                queue.extend(new)

    def deliver(
        self, records: Iterable[TrialRecord]
    ) -> tuple[dict[int, tuple[Trial, str]], list[tuple[int, dict[str, Any]]]]:
        """Hand out every queued result of ``records``, each exactly once."""
        streams: list[list[tuple[int, dict[str, Any]]]] = []
        statuses: dict[int, tuple[Trial, str]] = {}
        for record in records:
            self.ingest(record)
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

    def mark_delivered(self, record: TrialRecord) -> None:
        """Record that everything read so far has been delivered (queues are empty)."""
        record.log(
            "delivered",
            results=record.results_reader.offset,
            stdout=record.stdout_reader.offset,
            iterations=record.iterations,
        )


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


def process_matches(pid: int, create_time: float) -> bool:
    """True if ``pid`` is alive and is the process that started at ``create_time``."""
    import psutil

    try:
        process = psutil.Process(pid)
        same = abs(float(process.create_time()) - create_time) < 0.01
        return same and bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False

"""The trial table: what the driver knows about each trial."""

from __future__ import annotations

import datetime
import functools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from .._paths import TrialPaths
from .._types import Status, Trial
from ._journal import Journal
from ._limits import TrialLimits
from ._results import ResultsReader, TuneMetricReader

STDERR_TAIL_LINES = 20
# Sets of runs are frozen and rebound when they change, so that the many
# trials with none share this one (a record is kept for the experiment's life).
NO_RUNS: frozenset[int] = frozenset()


@functools.lru_cache(maxsize=64)
def _only(run: int) -> frozenset[int]:
    return frozenset((run,))


def with_run(runs: frozenset[int], run: int) -> frozenset[int]:
    # Most trials have one run or few: their one-run sets are shared too.
    return _only(run) if not runs else runs | {run}


def without_run(runs: frozenset[int], run: int) -> frozenset[int]:
    return (runs - {run}) or NO_RUNS


@dataclass(slots=True)
class TrialRecord:
    """One trial: its config, status, current run and unread results."""

    trial_id: int
    config: dict[str, Any]
    creation_time: datetime.datetime
    paths: TrialPaths
    results_reader: ResultsReader
    stdout_reader: TuneMetricReader
    status: str = Status.in_progress
    # Number of runs launched; the current run is ``runs - 1``.
    runs: int = 0
    # Runs launched whose process tree the supervisor has not yet reported gone.
    alive_runs: frozenset[int] = NO_RUNS
    pid: Optional[int] = None
    # Results from each source are queued here until fetched; new ones are
    # read only while ``accepting`` (the run has not been paused or stopped).
    from_results_file: list[dict[str, Any]] = field(default_factory=list)
    from_stdout: list[dict[str, Any]] = field(default_factory=list)
    accepting: bool = True
    status_unfetched: bool = False
    # Results seen across all runs, so the iteration counter carries on.
    iterations: int = 0
    run_start_time: float = 0.0
    exit_code: Optional[int] = None
    exit_signal: Optional[str] = None
    stderr_tail: str = ""
    training_end_time: Optional[datetime.datetime] = None
    # Why the trial failed (see ``Trial.failure_reason``); None unless it did.
    failure_reason: Optional[str] = None
    failure_kind: Optional[str] = None
    delete_checkpoint_on_exit: bool = False
    gpus: list[str] = field(default_factory=list)
    cpus: list[str] = field(default_factory=list)
    # The limits of this trial (the backend's, with its own overrides), the
    # running time its ended runs used, and its retries so far, each with
    # how long the failed run ran.
    limits: TrialLimits = field(default_factory=TrialLimits)
    used_time: float = 0.0
    timed_runs: frozenset[int] = NO_RUNS  # runs counted in used_time
    retries: list[float] = field(default_factory=list)
    # The last value of the retention metric the trial reported (keep_best).
    last_metric: Optional[float] = None
    # Runs started by an earlier driver that the launcher follows for this one
    # (detach mode, after a restore).
    attached: frozenset[int] = NO_RUNS
    journal: Optional[Journal] = None

    @classmethod
    def new(
        cls,
        trial_id: int,
        config: dict[str, Any],
        paths: TrialPaths,
        journal: Optional[Journal],
        creation_time: Optional[datetime.datetime] = None,
        *,
        poll: bool = False,
    ) -> TrialRecord:
        """A new record; ``poll`` reads results in the mode for shared filesystems."""
        return cls(
            trial_id=trial_id,
            config=config,
            creation_time=creation_time or datetime.datetime.now(),
            paths=paths,
            results_reader=ResultsReader(trial_id, os.fspath(paths.results), poll=poll),
            stdout_reader=TuneMetricReader(trial_id, os.fspath(paths.stdout), poll=poll),
            journal=journal,
        )

    # -- run transitions: the only places that change whether a run is accepted

    def launched(self, run: int, start_time: float, gpus: list[str]) -> None:
        """A new run was handed to the launcher; its output is accepted."""
        self.runs = run + 1
        self.alive_runs = with_run(self.alive_runs, run)
        self.accepting = True
        self.run_start_time = start_time
        self.gpus = gpus
        self.exit_code = self.exit_signal = None
        self.stderr_tail = ""
        self.training_end_time = None
        self.failure_reason = self.failure_kind = None

    def following(self, run: int, *, accepted: bool, attached: bool = False) -> None:
        """A restore found ``run`` still to be followed (ended unheard of, or alive)."""
        self.alive_runs = with_run(self.alive_runs, run)
        self.accepting = accepted
        if attached:
            self.attached = with_run(self.attached, run)

    def interrupted(self) -> None:
        """A pause or a stop: nothing the current run writes from now on is accepted."""
        self.accepting = False

    def exited(
        self, returncode: Optional[int], signal_name: Optional[str],
        ended_at: Optional[datetime.datetime],
    ) -> None:
        """The current run's tree is gone."""
        self.accepting = False
        self.exit_code = returncode
        self.exit_signal = signal_name
        self.training_end_time = ended_at or datetime.datetime.now()

    def lost(self, signal_name: Optional[str], ended_at: datetime.datetime) -> None:
        """What supervised the current run is gone."""
        self.accepting = False
        self.exit_code = None
        self.exit_signal = signal_name
        self.training_end_time = ended_at

    def run_gone(self, run: int) -> bool:
        """Forget a run whose tree is gone; True when no run of the trial is left."""
        self.alive_runs = without_run(self.alive_runs, run)
        self.attached = without_run(self.attached, run)
        return not self.alive_runs

    def log(self, op: str, **fields: Any) -> None:
        """Append a change of this trial to the experiment's journal."""
        if self.journal is not None:
            self.journal.append(op, trial=self.trial_id, **fields)

    def compact(self) -> None:
        """Let go of what only a trial that can still change needs (see ``TrialTable.live``).

        Its folder's ``Path`` is taken up again when the trial runs again
        (``_launching.launch``). The readers keep the identity of the files
        they read, so that a file replaced before a resume is read afresh.
        """
        self.paths.forget()

    @property
    def has_news(self) -> bool:
        return bool(self.status_unfetched or self.from_results_file or self.from_stdout)

    def as_trial(self) -> Trial:
        return Trial(
            trial_id=self.trial_id,
            config=self.config,
            creation_time=self.creation_time,
            exit_code=self.exit_code,
            exit_signal=self.exit_signal,
            stderr_tail=self.stderr_tail,
            trial_dir=self.paths.root,
            training_end_time=self.training_end_time,
            failure_reason=self.failure_reason,
            failure_kind=self.failure_kind,
        )

    def set_status(
        self, status: str, *, reason: str, news: bool = False,
        failure: Optional[tuple[str, str]] = None, **details: Any,
    ) -> None:
        """Change the status and append the change, with its time, to the history file.

        ``failure`` is the ``(kind, reason)`` of a ``Failed`` status (see
        ``Trial.failure_kind``); it is kept in the history as ``failure``.
        """
        self.status = status
        if failure is not None:
            self.failure_kind, self.failure_reason = failure
            details = dict(details, failure=failure[1], failure_kind=failure[0])
        if news:
            self.status_unfetched = True
        entry = {"time": time.time(), "status": status, "run": self.runs - 1, "reason": reason}
        entry.update({k: v for k, v in details.items() if v is not None})
        self.log("status", **entry)
        try:
            fd = os.open(
                self.paths.status_history,
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                0o600,
            )
        except OSError:
            return  # the trial folder was removed by hand; the in-memory status stands
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
        finally:
            os.close(fd)

    def read_stderr_tail(self) -> str:
        """The last lines of stderr, for error messages about a failed run."""
        try:
            with open(self.paths.stderr, "rb") as log:
                log.seek(0, os.SEEK_END)
                size = log.tell()
                log.seek(max(0, size - 16384))
                data = log.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-STDERR_TAIL_LINES:])

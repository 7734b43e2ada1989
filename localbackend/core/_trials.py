"""The trial table: what the driver knows about each trial."""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from .._paths import TrialPaths
from .._types import Status, Trial
from ._journal import Journal
from ._results import ResultsReader, TuneMetricReader

STDERR_TAIL_LINES = 20


@dataclass
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
    alive_runs: set[int] = field(default_factory=set)
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
    delete_checkpoint_on_exit: bool = False
    gpus: list[str] = field(default_factory=list)
    # Runs whose keeper outlived an earlier driver (detach mode), by run
    # number: (keeper pid, keeper start time). They are watched by polling.
    attached: dict[int, tuple[int, float]] = field(default_factory=dict)
    journal: Optional[Journal] = None

    @classmethod
    def new(
        cls,
        trial_id: int,
        config: dict[str, Any],
        paths: TrialPaths,
        journal: Optional[Journal],
        creation_time: Optional[datetime.datetime] = None,
    ) -> TrialRecord:
        return cls(
            trial_id=trial_id,
            config=config,
            creation_time=creation_time or datetime.datetime.now(),
            paths=paths,
            results_reader=ResultsReader(trial_id, paths.results),
            stdout_reader=TuneMetricReader(trial_id, paths.stdout),
            journal=journal,
        )

    def log(self, op: str, **fields: Any) -> None:
        """Append a change of this trial to the experiment's journal."""
        if self.journal is not None:
            self.journal.append(op, trial=self.trial_id, **fields)

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
        )

    def set_status(self, status: str, *, reason: str, news: bool = False, **details: Any) -> None:
        """Change the status and append the change, with its time, to the history file."""
        self.status = status
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

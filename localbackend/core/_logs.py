"""Reading a trial's stdout and stderr: the log methods of ``LocalBackend``."""

from __future__ import annotations

from abc import abstractmethod

from .._errors import BackendConfigurationError
from ._results import read_log_text
from ._trials import TrialRecord

_LOG_STREAMS = ("stdout", "stderr")


class TrialLogs:
    """``stdout``, ``stderr`` and ``read_log``, over the trial records of a backend."""

    @abstractmethod
    def _record(self, trial_id: object) -> TrialRecord:
        """The record of ``trial_id``, or our error naming it."""

    def stdout(self, trial_id: int) -> list[str]:
        """Every line the trial printed on stdout, across all its runs."""
        return self._log_lines(trial_id, "stdout")

    def stderr(self, trial_id: int) -> list[str]:
        """Every line the trial printed on stderr, across all its runs."""
        return self._log_lines(trial_id, "stderr")

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

    def _log_lines(self, trial_id: int, stream: str) -> list[str]:
        paths = self._record(trial_id).paths
        try:
            with open(paths.log(stream), encoding="utf-8", errors="replace") as log:
                return log.readlines()
        except FileNotFoundError:
            return []

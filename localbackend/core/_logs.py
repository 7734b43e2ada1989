"""Reading a trial's stdout and stderr: the log methods of ``LocalBackend``, and the text
of a log from an offset, cut on a whole UTF-8 character."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

from .._errors import BackendConfigurationError
from .._paths import TrialPaths
from ._results import READ_CHUNK

_LOG_STREAMS = ("stdout", "stderr")


class TrialLogs:
    """``stdout``, ``stderr`` and ``read_log``, over the trial records of a backend.

    They take no lock, so that another thread can read logs while a call
    waits: they only look up the trial's files (``_trial_paths``).
    """

    @abstractmethod
    def _trial_paths(self, trial_id: object) -> TrialPaths:
        """The files of ``trial_id``, or our error naming it; changes nothing."""

    def stdout(self, trial_id: int) -> list[str]:
        """Every line the trial printed on stdout, across all its runs."""
        return self._log_lines(trial_id, "stdout")

    def stderr(self, trial_id: int) -> list[str]:
        """Every line the trial printed on stderr, across all its runs."""
        return self._log_lines(trial_id, "stderr")

    def read_log(self, trial_id: int, stream: str = "stdout", offset: int = 0) -> tuple[str, int]:
        """Log text from byte ``offset`` on, and the offset to pass next time."""
        paths = self._trial_paths(trial_id)
        if stream not in _LOG_STREAMS:
            raise BackendConfigurationError(
                "stream", stream, "is not a log stream", "Use 'stdout' or 'stderr'."
            )
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise BackendConfigurationError(
                "offset", offset, "must be a byte offset >= 0",
                "Pass 0, or the offset returned by the previous read_log call.",
            )
        return read_log_text(paths.log(stream), offset)

    def _log_lines(self, trial_id: int, stream: str) -> list[str]:
        paths = self._trial_paths(trial_id)
        try:
            with open(paths.log(stream), encoding="utf-8", errors="replace") as log:
                return log.readlines()
        except FileNotFoundError:
            return []


def read_log_text(path: Path, offset: int, max_bytes: int = READ_CHUNK) -> tuple[str, int]:
    """Text of a log from ``offset``, ending on a whole UTF-8 character."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            data = log.read(max_bytes)
    except FileNotFoundError:
        return "", offset
    cut = _utf8_complete_length(data)
    return data[:cut].decode("utf-8", errors="replace"), offset + cut


def _utf8_complete_length(data: bytes) -> int:
    """Length of ``data`` without a multi-byte character cut off at its end."""
    length = len(data)
    for back in range(1, min(4, length) + 1):
        byte = data[length - back]
        if byte < 0x80:
            return length
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return length if back >= needed else length - back
    return length

"""Read a trial's results incrementally from a byte offset.

Each reader keeps the offset of the first byte it has not consumed, so a read
costs in proportion to the new bytes. A line is consumed only once it ends in
``\\n``; an unfinished last line waits for the next read, unless the run has
ended (``final=True``), when it is parsed if it is valid JSON and warned about
otherwise.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

from .. import _protocol as proto

logger = logging.getLogger(__name__)

# At most this many bytes are read per system call, so a flood of output
# never makes the driver hold more than this at once.
READ_CHUNK = 8 * 1024 * 1024
# A result line longer than this is skipped with a warning.
MAX_RESULT_LINE = 256 * 1024 * 1024
# An unfinished stdout line longer than this, without a result marker, is
# skipped rather than buffered again and again.
MAX_PENDING_LOG_LINE = 1024 * 1024


class _Tail:
    """Reads complete lines appended to a file, from a byte offset."""

    source = "file"
    max_line = MAX_RESULT_LINE

    def __init__(self, trial_id: int, path: Path, offset: int = 0) -> None:
        self.trial_id = trial_id
        self.path = path
        self.offset = offset
        self.line_number = 0
        self._identity: tuple[int, int] | None = None
        self._skipping_line = False

    def read(self, *, limit: int | None = None, final: bool = False) -> list[dict[str, Any]]:
        """Parse the lines completed since the last read (up to byte ``limit``)."""
        results: list[dict[str, Any]] = []
        chunk = READ_CHUNK
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return results
        if stat.st_size == self.offset and (stat.st_dev, stat.st_ino) == self._identity:
            return results  # the common case, nothing new: one system call
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return results
            try:
                stat = os.fstat(fd)
                self._check_identity(stat)
                end = stat.st_size if limit is None else min(stat.st_size, limit)
                if end <= self.offset:
                    return results
                data = os.pread(fd, min(end - self.offset, chunk), self.offset)
            finally:
                os.close(fd)
            if self._skipping_line:
                newline = data.find(b"\n")
                self.offset += len(data) if newline < 0 else newline + 1
                self._skipping_line = newline < 0
                self.line_number += 0 if newline < 0 else 1
                continue
            cut = data.rfind(b"\n") + 1
            if cut:
                self._parse_block(data[:cut], results)
                self.offset += cut
                chunk = READ_CHUNK
                continue
            # ``data`` is one unfinished line.
            if self.offset + len(data) < end:
                if len(data) >= self.max_line or not self._worth_buffering(data):
                    self._skip_long_line(len(data))
                else:
                    chunk *= 2  # the line is longer than one chunk: read it whole
                continue
            if final:
                self.line_number += 1
                self.offset += len(data)
                self._parse_final(data, results)
            elif len(data) > MAX_PENDING_LOG_LINE and not self._worth_buffering(data):
                self._skip_long_line(len(data))
            return results

    def skip_to(self, offset: int) -> None:
        """Mark everything before ``offset`` as consumed without delivering it."""
        if offset > self.offset:
            self.offset = offset
            self._skipping_line = False

    def _check_identity(self, stat: os.stat_result) -> None:
        identity = (stat.st_dev, stat.st_ino)
        if self._identity is not None and identity != self._identity:
            logger.warning(
                "trial %d: %s was replaced while the trial ran; reading the new file from "
                "its start", self.trial_id, self.path,
            )
            self._restart()
        elif stat.st_size < self.offset:
            # Truncation in practice means emptying ("> file"): what is in
            # the file now was written after it.
            logger.warning(
                "trial %d: %s shrank from %d to %d bytes while the trial ran; reading it "
                "again from its start", self.trial_id, self.path, self.offset, stat.st_size,
            )
            self._restart()
        self._identity = identity

    def _restart(self) -> None:
        self.offset = 0
        self.line_number = 0
        self._skipping_line = False

    def _skip_long_line(self, length: int) -> None:
        logger.warning(
            "trial %d: line %d of %s is longer than %d bytes and is skipped",
            self.trial_id, self.line_number + 1, self.path, length,
        )
        self.offset += length
        self._skipping_line = True

    def _worth_buffering(self, data: bytes) -> bool:
        return True

    def _parse_block(self, block: bytes, results: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _parse_final(self, tail: bytes, results: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class ResultsReader(_Tail):
    """Parses the JSON lines a trial appends to its results file."""

    def _parse_block(self, block: bytes, results: list[dict[str, Any]]) -> None:
        loads = orjson.loads
        append = results.append
        number = self.line_number
        for line in block.split(b"\n")[:-1]:
            number += 1
            try:
                value = loads(line)
            except orjson.JSONDecodeError:
                if line.strip():
                    self._warn_bad(number, line)
                continue
            if type(value) is dict:
                append(value)
            else:
                self._warn_bad(number, line)
        self.line_number = number

    def _parse_final(self, tail: bytes, results: list[dict[str, Any]]) -> None:
        value = _json_object(tail)
        if value is not None:
            results.append(value)
        elif tail.strip():
            logger.warning(
                "trial %d: the last line of %s (line %d) was left unfinished when the trial "
                "exited and is not valid JSON; it is skipped: %r",
                self.trial_id, self.path, self.line_number, tail[:200],
            )

    def _warn_bad(self, number: int, line: bytes) -> None:
        logger.warning(
            "trial %d: line %d of %s is not a JSON object and is skipped: %r. "
            "Each result must be one JSON object on one line.",
            self.trial_id, number, self.path, line[:200],
        )


class TuneMetricReader(_Tail):
    """Picks Syne Tune ``[tune-metric]: {...}`` lines out of a stdout log."""

    max_line = 64 * 1024 * 1024

    def _worth_buffering(self, data: bytes) -> bool:
        return proto.TUNE_METRIC_PREFIX in data

    def _parse_block(self, block: bytes, results: list[dict[str, Any]]) -> None:
        marker = proto.TUNE_METRIC_PREFIX
        if marker not in block:
            self.line_number += block.count(b"\n")
            return
        number = self.line_number
        for line in block.split(b"\n")[:-1]:
            number += 1
            position = line.find(marker)
            if position >= 0:
                self._parse_line(number, line, position, results)
        self.line_number = number

    def _parse_final(self, tail: bytes, results: list[dict[str, Any]]) -> None:
        position = tail.find(proto.TUNE_METRIC_PREFIX)
        if position >= 0:
            self._parse_line(self.line_number, tail, position, results)

    def _parse_line(
        self, number: int, line: bytes, position: int, results: list[dict[str, Any]]
    ) -> None:
        value = _json_object(line[position + len(proto.TUNE_METRIC_PREFIX):])
        if value is not None:
            results.append(value)
        else:
            logger.warning(
                "trial %d: line %d of %s starts a [tune-metric] result that is not a JSON "
                "object and is skipped: %r",
                self.trial_id, number, self.path, line[:200],
            )


def _json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` parsed as a JSON object, or None when it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if type(value) is dict else None


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

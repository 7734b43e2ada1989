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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from . import _protocol as proto

logger = logging.getLogger(__name__)

# At most this many bytes are read per call, so a flood of output never makes
# the driver hold more than this in memory at once.
READ_CHUNK = 32 * 1024 * 1024
# An unfinished stdout line longer than this, without a result marker, is
# skipped rather than buffered again and again.
MAX_PENDING_LOG_LINE = 1024 * 1024


def _read_range(path: Path, offset: int, limit: int | None) -> bytes:
    """Bytes of ``path`` from ``offset`` up to ``limit`` (or EOF), at most READ_CHUNK."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        size = os.fstat(fd).st_size
        end = size if limit is None else min(size, limit)
        if end <= offset:
            return b""
        return os.pread(fd, min(end - offset, READ_CHUNK), offset)
    finally:
        os.close(fd)


@dataclass
class ResultsReader:
    """Parses JSON lines appended to the results file."""

    trial_id: int
    path: Path
    offset: int = 0
    line_number: int = 0
    skipped: int = field(default=0)

    def read(self, *, limit: int | None = None, final: bool = False) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        while True:
            data = _read_range(self.path, self.offset, limit)
            if not data:
                self._check_truncated()
                return results
            end = data.rfind(b"\n") + 1
            complete = data[:end]
            if complete:
                self._parse(complete, results)
                self.offset += end
            tail = data[end:]
            if len(data) == READ_CHUNK and end:
                continue  # there may be more after this chunk
            if tail and final:
                self._parse_final(tail, results)
            return results

    def _parse(self, block: bytes, results: list[dict[str, Any]]) -> None:
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
        self.line_number += 1
        self.offset += len(tail)
        try:
            value = orjson.loads(tail)
        except orjson.JSONDecodeError:
            value = None
        if type(value) is dict:
            results.append(value)
        elif tail.strip():
            logger.warning(
                "trial %d: the last line of %s (line %d) was left unfinished when the trial "
                "exited and is not valid JSON; it is skipped: %r",
                self.trial_id, self.path, self.line_number, tail[:200],
            )

    def _warn_bad(self, number: int, line: bytes) -> None:
        self.skipped += 1
        logger.warning(
            "trial %d: line %d of %s is not a JSON object and is skipped: %r. "
            "Each result must be one JSON object on one line.",
            self.trial_id, number, self.path, line[:200],
        )

    def _check_truncated(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self.offset:
            logger.warning(
                "trial %d: %s shrank from %d to %d bytes while being read; "
                "reading carries on from its new end",
                self.trial_id, self.path, self.offset, size,
            )
            self.offset = size

    def skip_to(self, offset: int) -> None:
        """Mark everything before ``offset`` as consumed without delivering it."""
        if offset > self.offset:
            self.offset = offset


@dataclass
class TuneMetricReader:
    """Picks Syne Tune ``[tune-metric]: {...}`` lines out of a stdout log."""

    trial_id: int
    path: Path
    offset: int = 0
    line_number: int = 0

    def read(self, *, limit: int | None = None, final: bool = False) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        marker = proto.TUNE_METRIC_PREFIX
        while True:
            data = _read_range(self.path, self.offset, limit)
            if not data:
                size = _size(self.path)
                if size is not None and size < self.offset:
                    self.offset = size
                return results
            end = data.rfind(b"\n") + 1
            if end:
                block = data[:end]
                if marker in block:
                    self._parse(block, results)
                else:
                    self.line_number += block.count(b"\n")
                self.offset += end
            tail = data[end:]
            if len(data) == READ_CHUNK and end:
                continue
            if tail and (final or (len(tail) > MAX_PENDING_LOG_LINE and marker not in tail)):
                if final and marker in tail:
                    self._parse(tail + b"\n", results)
                self.offset += len(tail)
            return results

    def _parse(self, block: bytes, results: list[dict[str, Any]]) -> None:
        marker = proto.TUNE_METRIC_PREFIX
        number = self.line_number
        for line in block.split(b"\n")[:-1]:
            number += 1
            position = line.find(marker)
            if position < 0:
                continue
            payload = line[position + len(marker):]
            try:
                value = orjson.loads(payload)
            except orjson.JSONDecodeError:
                value = None
            if type(value) is dict:
                results.append(value)
            else:
                logger.warning(
                    "trial %d: line %d of %s starts a [tune-metric] result that is not a JSON "
                    "object and is skipped: %r",
                    self.trial_id, number, self.path, line[:200],
                )
        self.line_number = number

    def skip_to(self, offset: int) -> None:
        if offset > self.offset:
            self.offset = offset


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


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

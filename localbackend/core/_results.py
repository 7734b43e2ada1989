"""Read a trial's results incrementally from a byte offset.

Each reader keeps the offset of the first byte it has not consumed, so a read
costs in proportion to the new bytes. A line is consumed only once it ends in
``\\n``; an unfinished last line waits for the next read, unless the run has
ended (``final=True``), when it is parsed if it is valid JSON and warned about
otherwise.

Readers work in one of two modes, chosen when they are made:

- **Local** (the default, ``poll=False``): for files written on this host,
  whose attributes are always current. The local launcher uses it. A read
  starts with one ``stat``; when the size equals the offset and the file is
  the same (device and inode), nothing is read. Otherwise ``fstat().st_size``
  is taken as the end of the data.
- **Poll** (``poll=True``): for files written on another host and read
  through a shared filesystem (NFS, a cluster's shared folder), where a
  client may cache attributes and report a stale size. A launcher whose
  trials write on another host asks for it. File attributes never say how
  much to read: a read opens the file and reads from the offset, in bounded
  chunks, until a read returns no bytes (or ``limit`` is reached). A
  truncation is recognised by the byte before the offset being gone, not by
  ``st_size``; a replacement, by the device and inode of the open file.

  The last read of a run (``final=True`` with ``limit``, the sizes the
  keeper measured when the run's tree was gone) must see every byte the run
  wrote. Until it has consumed up to ``limit`` it closes the file, waits
  ``FINAL_READ_RETRY`` seconds and opens it again, since a new open is what
  makes an NFS client revalidate (close-to-open consistency); after
  ``FINAL_READ_WAIT`` seconds it delivers what it has and warns how many
  bytes never showed up. This wait happens only in poll mode, only in a
  final read, and only while bytes are missing; the driver blocks for it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson

from .. import _protocol as proto
from .._log import LazyLogger

logger = LazyLogger(__name__)

# At most this many bytes are read per system call, so a flood of output
# never makes the driver hold more than this at once.
READ_CHUNK = 8 * 1024 * 1024
# A result line longer than this is skipped with a warning.
MAX_RESULT_LINE = 256 * 1024 * 1024
# An unfinished stdout line longer than this, without a result marker, is
# skipped rather than buffered again and again.
MAX_PENDING_LOG_LINE = 1024 * 1024
# In poll mode, a final read waits at most this long (seconds) for the bytes
# up to its limit, opening the file again every FINAL_READ_RETRY seconds. The
# run's processes have closed the file, so an NFS client shows its data on the
# next open; the wait covers a slow server without stalling the driver for
# long on a file that really is short.
FINAL_READ_WAIT = 2.0
FINAL_READ_RETRY = 0.05


class _Tail:
    """Reads complete lines appended to a file, from a byte offset.

    ``poll`` chooses the mode (see the module docstring): False for files
    written on this host, True for files written on another host and read
    through a shared filesystem.
    """

    source = "file"
    max_line = MAX_RESULT_LINE
    # One reader per stream per trial, kept for the experiment's life: no __dict__.
    __slots__ = (
        "_identity",
        "_skipping_line",
        "line_number",
        "offset",
        "path",
        "poll",
        "trial_id",
    )

    def __init__(
        self, trial_id: int, path: str | os.PathLike[str], offset: int = 0, *, poll: bool = False
    ) -> None:
        self.trial_id = trial_id
        self.path = path
        self.offset = offset
        self.poll = poll
        self.line_number = 0
        self._identity: tuple[int, int] | None = None
        self._skipping_line = False

    def state(self) -> tuple[Any, ...]:
        """How far the reader has got, for ``set_state`` (its trial and path aside)."""
        return tuple(getattr(self, slot) for slot in _STATE)

    def set_state(self, state: tuple[Any, ...]) -> None:
        for slot, value in zip(_STATE, state):
            setattr(self, slot, value)

    def read(self, *, limit: int | None = None, final: bool = False) -> list[dict[str, Any]]:
        """Parse the lines completed since the last read (up to byte ``limit``).

        ``final`` says the run has ended: an unfinished last line is parsed
        too. In poll mode a final read with a ``limit`` waits, up to
        ``FINAL_READ_WAIT`` seconds, for the bytes up to ``limit`` to appear.
        """
        if self.poll:
            return self._read_polling(limit, final)
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
            chunk = self._take_lines(data, chunk, results) or self._take_unfinished(
                data, chunk, self.offset + len(data) < end, final, results
            )
            if not chunk:
                return results

    def _read_polling(self, limit: int | None, final: bool) -> list[dict[str, Any]]:
        """``read`` in poll mode: never trusts file attributes for how much there is."""
        results: list[dict[str, Any]] = []
        self._poll_once(limit, final, False, results)
        if limit is None or not final:
            return results
        # The wait counts from the first time the bytes were found missing, so
        # that reading a large file is not taken out of it.
        deadline = time.monotonic() + FINAL_READ_WAIT
        while self.offset < limit:
            # The file is closed during the pause: the next open is what makes
            # an NFS client fetch its current size and data.
            time.sleep(FINAL_READ_RETRY)
            last_try = time.monotonic() >= deadline
            self._poll_once(limit, final, last_try, results)
            if last_try and self.offset < limit:
                logger.warning(
                    "trial %d: %s held %d bytes when the run ended, but only %d could be "
                    "read within %.1fs; the last %d bytes never showed up and any results "
                    "in them are lost (is the shared filesystem behind?)",
                    self.trial_id, self.path, limit, self.offset, FINAL_READ_WAIT,
                    limit - self.offset,
                )
                break
        return results

    def _poll_once(
        self, limit: int | None, final: bool, last_try: bool, results: list[dict[str, Any]]
    ) -> None:
        """Open the file and read from the offset until no byte is left (or ``limit``).

        ``last_try``: a final read has given up waiting for the bytes up to its
        limit, so an unfinished last line is parsed as it is.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            # Only the identity is used: a cached size may be stale.
            self._check_replaced(os.fstat(fd))
            chunk = READ_CHUNK
            while True:
                want = chunk if limit is None else min(chunk, limit - self.offset)
                data = os.pread(fd, want, self.offset) if want > 0 else b""
                if not data:
                    if self._shrank(fd):
                        self._restart()
                        continue
                    return
                next_chunk = self._take_lines(data, chunk, results)
                if not next_chunk:
                    end = self.offset + len(data)
                    reached = limit is not None and end >= limit
                    # As in local mode, a line goes on past ``data`` only when
                    # the chunk was filled and a byte follows it.
                    more = len(data) == want and not reached and os.pread(fd, 1, end) != b""
                    # A final read waiting for the bytes up to its limit keeps
                    # an unfinished line for later: the rest of it may yet appear.
                    ended = final and (limit is None or reached or last_try)
                    next_chunk = self._take_unfinished(data, chunk, more, ended, results)
                    if not next_chunk:
                        return
                chunk = next_chunk
        finally:
            os.close(fd)

    def _take_lines(self, data: bytes, chunk: int, results: list[dict[str, Any]]) -> int:
        """Consume the whole lines ``data`` (read at the offset) starts with.

        Returns the size of the next chunk to read, or 0 when ``data`` is one
        unfinished line, for ``_take_unfinished``.
        """
        if self._skipping_line:
            newline = data.find(b"\n")
            self.offset += len(data) if newline < 0 else newline + 1
            self._skipping_line = newline < 0
            self.line_number += 0 if newline < 0 else 1
            return chunk
        cut = data.rfind(b"\n") + 1
        if not cut:
            return 0
        self._parse_block(data[:cut], results)
        self.offset += cut
        return READ_CHUNK

    def _take_unfinished(
        self, data: bytes, chunk: int, more: bool, final: bool, results: list[dict[str, Any]]
    ) -> int:
        """Deal with ``data``, one unfinished line; ``more``: the file goes on past it.

        Returns the size of the next chunk to read, or 0 when the read is over.
        """
        if more:
            if len(data) >= self.max_line or not self._worth_buffering(data):
                self._skip_long_line(len(data))
                return chunk
            return chunk * 2  # the line is longer than one chunk: read it whole
        if final:
            self.line_number += 1
            self.offset += len(data)
            self._parse_final(data, results)
        elif len(data) > MAX_PENDING_LOG_LINE and not self._worth_buffering(data):
            self._skip_long_line(len(data))
        return 0

    def skip_to(self, offset: int) -> None:
        """Mark everything before ``offset`` as consumed without delivering it."""
        if offset > self.offset:
            self.offset = offset
            self._skipping_line = False

    def _check_identity(self, stat: os.stat_result) -> None:
        if not self._check_replaced(stat) and stat.st_size < self.offset:
            # Truncation in practice means emptying ("> file"): what is in
            # the file now was written after it.
            logger.warning(
                "trial %d: %s shrank from %d to %d bytes while the trial ran; reading it "
                "again from its start", self.trial_id, self.path, self.offset, stat.st_size,
            )
            self._restart()

    def _check_replaced(self, stat: os.stat_result) -> bool:
        """Start again from the beginning if the path now names another file."""
        identity = (stat.st_dev, stat.st_ino)
        replaced = self._identity is not None and identity != self._identity
        if replaced:
            logger.warning(
                "trial %d: %s was replaced while the trial ran; reading the new file from "
                "its start", self.trial_id, self.path,
            )
            self._restart()
        self._identity = identity
        return replaced

    def _shrank(self, fd: int) -> bool:
        """In poll mode: whether the byte before the offset is gone (the file was truncated).

        Asked of the data rather than of ``st_size``, which a stale cache can
        report smaller than what was already read.
        """
        if self.offset == 0 or os.pread(fd, 1, self.offset - 1):
            return False
        logger.warning(
            "trial %d: %s shrank below the %d bytes already read while the trial ran; "
            "reading it again from its start", self.trial_id, self.path, self.offset,
        )
        return True

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


# A reader's state: its slots but for what it is made with (its trial and path).
_STATE = tuple(s for s in _Tail.__slots__ if s not in ("path", "trial_id"))


class ResultsReader(_Tail):
    """Parses the JSON lines a trial appends to its results file."""

    __slots__ = ()

    def _parse_block(self, block: bytes, results: list[dict[str, Any]]) -> None:
        lines = block.split(b"\n")
        lines.pop()  # what follows the last newline: nothing
        if _all_objects(lines, results):
            self.line_number += len(lines)
            return
        loads = orjson.loads
        append = results.append
        number = self.line_number
        for line in lines:
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

    __slots__ = ()

    max_line = 64 * 1024 * 1024

    def _worth_buffering(self, data: bytes) -> bool:
        return proto.TUNE_METRIC_PREFIX in data

    def _parse_block(self, block: bytes, results: list[dict[str, Any]]) -> None:
        marker = proto.TUNE_METRIC_PREFIX
        if marker not in block:
            self.line_number += block.count(b"\n")
            return
        lines = block.split(b"\n")
        lines.pop()  # what follows the last newline: nothing
        # Where every marker starts a line (what a reporter prints), the
        # results are the lines that start with it, parsed in one pass. The
        # counts tell: two markers never overlap (it begins with its only
        # "[" and ends with ":"), so each one after a newline, or at the
        # block's start, is a line's start.
        starts = block.count(b"\n" + marker) + block.startswith(marker)
        if starts == block.count(marker):
            skip = len(marker)
            payloads = [line[skip:] for line in lines if line[:skip] == marker]
            if _all_objects(payloads, results):
                self.line_number += len(lines)
                return
        number = self.line_number
        for line in lines:
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


def _all_objects(lines: list[bytes], results: list[dict[str, Any]]) -> bool:
    """Append ``lines`` parsed, if each one is a JSON object; else append nothing.

    The fast path of a read, in one pass without a call per line; a line
    that is not an object (or not JSON) sends the caller through its line by
    line path, which warns about it and keeps the rest.
    """
    try:
        values = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        return False
    if values and set(map(type, values)) != {dict}:
        return False
    results.extend(values)
    return True


def _json_object(data: bytes) -> dict[str, Any] | None:
    """``data`` parsed as a JSON object, or None when it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if type(value) is dict else None


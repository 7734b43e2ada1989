"""Poll mode of the result readers: for files written on another host (NFS, a shared folder).

Stale file attributes are injected by replacing ``os`` as the reader module sees
it: its ``stat``/``fstat`` report a smaller ``st_size`` than the real file, as a
client's attribute cache can. The local mode trusts those sizes and misses the
bytes, which is the reason poll mode exists; poll mode must not.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from localbackend.core import _results
from localbackend.core._results import ResultsReader, TuneMetricReader, _Tail
from tests.helpers import wait_for

LOGGER = "localbackend.core._results"


def line(i: int, pad: int = 0) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * pad}) + b"\n"


def numbers(results: list[dict[str, Any]]) -> list[int]:
    return [int(r["i"]) for r in results]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING
    ]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def with_size(stat: os.stat_result, size: int) -> os.stat_result:
    fields = list(stat[:10])
    fields[6] = size  # st_size
    return os.stat_result(fields)


class StaleAttributes:
    """``os`` whose ``stat``/``fstat`` report at most ``cached`` bytes, as a stale cache does."""

    def __init__(self, cached: int) -> None:
        self.cached = cached

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def stat(self, path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stat = os.stat(path, *args, **kwargs)
        return with_size(stat, min(stat.st_size, self.cached))

    def fstat(self, fd: int) -> os.stat_result:
        stat = os.fstat(fd)
        return with_size(stat, min(stat.st_size, self.cached))


class CloseToOpen:
    """``os`` as an NFS client shows it: a file's size and data are those of its last open.

    Each ``open`` revalidates: the bytes the file holds then are all that ``pread`` on
    that descriptor, ``fstat`` and later ``stat`` calls will show, whatever is
    appended afterwards. ``on_open`` is called after every open.
    """

    def __init__(self, on_open: Callable[[], None] = lambda: None) -> None:
        self.on_open = on_open
        self.opens = 0
        self.visible: dict[int, int] = {}
        self.revalidated: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, *args: Any) -> int:
        fd = os.open(path, flags, *args)
        size = os.fstat(fd).st_size
        self.visible[fd] = self.revalidated[os.fspath(path)] = size
        self.opens += 1
        self.on_open()
        return fd

    def close(self, fd: int) -> None:
        self.visible.pop(fd, None)
        os.close(fd)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, max(0, min(length, self.visible[fd] - offset)), offset)

    def fstat(self, fd: int) -> os.stat_result:
        return with_size(os.fstat(fd), self.visible[fd])

    def stat(self, path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        stat = os.stat(path, *args, **kwargs)
        return with_size(stat, self.revalidated.get(os.fspath(path), stat.st_size))


class NoWaiting:
    """``time`` for the reader module, failing the test if the reader sleeps."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        raise AssertionError(f"the reader waited ({seconds}s) where it must not")


@pytest.fixture(autouse=True)
def _capture_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger="localbackend")
    yield


# -- the API --------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ResultsReader, TuneMetricReader])
def test_poll_mode_is_one_keyword_and_local_mode_stays_the_default(
    cls: type[_Tail], tmp_path: Path
) -> None:
    path = tmp_path / "file"
    assert cls(3, path).poll is False
    assert cls(3, path, 5).offset == 5
    reader = cls(3, path, poll=True)
    assert (reader.poll, reader.trial_id, reader.path, reader.offset) == (True, 3, path, 0)


def test_the_final_wait_is_bounded_by_a_documented_constant() -> None:
    assert 0 < _results.FINAL_READ_WAIT <= 5
    assert 0 < _results.FINAL_READ_RETRY < _results.FINAL_READ_WAIT
    assert "FINAL_READ_WAIT" in (_results.__doc__ or "")
    assert "poll" in (_results.__doc__ or "")


# -- streaming while a writer process appends -------------------------------------

STREAM_WRITER = textwrap.dedent("""
    import os, random, sys
    source, target, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pauses = [int(p) for p in sys.argv[4].split(",")]
    with open(source, "rb") as file:
        stream = file.read()
    rng = random.Random(seed)
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    written = 0
    for stop in pauses + [len(stream)]:
        # Random pieces, so that lines are split across writes anywhere.
        while written < stop:
            size = min(rng.randrange(1, 400), stop - written)
            os.write(fd, stream[written:written + size])
            written += size
        if stop < len(stream):
            # Stop here, possibly in the middle of a line, until the test has looked.
            print(written, flush=True)
            sys.stdin.readline()
    os.close(fd)
""")


@pytest.mark.parametrize(
    ("chunk", "stale"),
    [(None, False), (61, True)],
    ids=["default-chunk", "small-chunk-and-sizes-always-zero"],
)
def test_poll_mode_delivers_every_result_once_in_order_while_a_writer_appends(
    chunk: int | None, stale: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if chunk is not None:
        monkeypatch.setattr(_results, "READ_CHUNK", chunk)
    if stale:
        # Sizes are never what poll mode reads by: it must work with none at all.
        monkeypatch.setattr(_results, "os", StaleAttributes(0))
    count = 3000
    stream = b"".join(line(i, pad=(i * 37) % 300) for i in range(count))
    starts = [0]  # where each line begins
    for _ in range(count - 1):
        starts.append(stream.index(b"\n", starts[-1]) + 1)
    # Mid-line pauses, one right after a newline, one inside the very first line.
    pauses = sorted({3, starts[400], starts[900] + 5, starts[1700] + 1, starts[2500] + 40})
    source = tmp_path / "source.bin"
    source.write_bytes(stream)
    target = tmp_path / "results.jsonl"
    reader = ResultsReader(4, target, poll=True)
    results: list[dict[str, Any]] = []
    paused_at: list[int] = []

    def caught_up(complete: int) -> bool:
        results.extend(reader.read())
        return reader.offset == complete

    with subprocess.Popen(
        [sys.executable, "-c", STREAM_WRITER, str(source), str(target), "7",
         ",".join(map(str, pauses))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    ) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        pending = b""
        deadline = time.monotonic() + 60
        while True:
            results.extend(reader.read())  # concurrently with the writer
            ready, _, _ = select.select([writer.stdout], [], [], 0.001)
            if ready:
                data = os.read(writer.stdout.fileno(), 4096)
                if not data:
                    break  # the writer is done
                pending += data
                while b"\n" in pending:
                    text, pending = pending.split(b"\n", 1)
                    written = int(text)
                    paused_at.append(written)
                    complete = stream.rfind(b"\n", 0, written) + 1
                    wait_for(functools.partial(caught_up, complete), timeout=30,
                             what=f"the reader to consume every line before byte {written}")
                    # The unfinished line waits: nothing of it is delivered yet.
                    assert numbers(results) == list(range(stream[:complete].count(b"\n")))
                    writer.stdin.write(b"go\n")
                    writer.stdin.flush()
            assert time.monotonic() < deadline, "the writer did not finish in time"
        assert writer.wait(timeout=30) == 0
    results.extend(reader.read(limit=len(stream), final=True))
    assert paused_at == pauses
    assert numbers(results) == list(range(count))
    assert reader.offset == len(stream)
    assert reader.read(limit=len(stream), final=True) == []
    assert warnings(caplog) == []


# -- the final read under stale attributes --------------------------------------------


@pytest.mark.parametrize("cached", ["what-was-read", "mid-line", "zero"])
def test_a_final_read_sees_bytes_that_stale_attributes_hide_only_in_poll_mode(
    cached: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(line(0) + line(1) + line(2))
    local = ResultsReader(2, path)
    poll = ResultsReader(2, path, poll=True)
    assert numbers(local.read()) == numbers(poll.read()) == [0, 1, 2]
    read_so_far = path.stat().st_size
    append(path, line(3) + line(4, pad=50) + b'{"i": 5}')  # the last line left unfinished
    limit = path.stat().st_size  # what the keeper measured when the run's tree was gone
    size = {"what-was-read": read_so_far, "mid-line": read_so_far + len(line(3)) + 9,
            "zero": 0}[cached]
    monkeypatch.setattr(_results, "os", StaleAttributes(size))

    # Why poll mode exists: trusting the cached size, the local mode loses results.
    assert numbers(local.read(limit=limit, final=True)) != [3, 4, 5]
    caplog.clear()

    assert numbers(poll.read(limit=limit, final=True)) == [3, 4, 5]
    assert poll.offset == limit
    assert warnings(caplog) == []  # a stale size is not mistaken for a truncation
    monkeypatch.undo()
    assert poll.read(limit=limit, final=True) == []


def test_a_final_read_reopens_the_file_until_the_limit_shows_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Bytes the reader's first open cannot see arrive later: only a new open shows them."""
    path = tmp_path / "results.jsonl"
    trigger = tmp_path / "the-reader-has-looked"
    path.write_bytes(line(0))
    late = line(1, pad=20) + b'{"i": 2}'
    limit = len(line(0)) + len(late)
    # Bounded, but far longer than the test needs: the read ends when the bytes come.
    monkeypatch.setattr(_results, "FINAL_READ_WAIT", 30.0)
    nfs = CloseToOpen(on_open=lambda: trigger.touch())
    monkeypatch.setattr(_results, "os", nfs)
    reader = ResultsReader(6, path, poll=True)
    writer_code = textwrap.dedent("""
        import os, sys, time
        path, trigger, data = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
        deadline = time.monotonic() + 30
        while not os.path.exists(trigger):
            if time.monotonic() > deadline:
                sys.exit("the reader never opened the file")
            time.sleep(0.001)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        for piece in (data[:7], data[7:]):  # a line split across two writes
            os.write(fd, piece)
        os.close(fd)
    """)
    with subprocess.Popen(
        [sys.executable, "-c", writer_code, str(path), str(trigger), late.hex()]
    ) as writer:
        results = reader.read(limit=limit, final=True)
        assert writer.wait(timeout=30) == 0
    assert numbers(results) == [0, 1, 2]
    assert reader.offset == limit
    assert nfs.opens >= 2, "the bytes can only have been seen through a new open"
    assert warnings(caplog) == []


def test_local_mode_does_not_see_bytes_that_appear_after_an_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same fault as above, read in local mode: it does not wait, so it misses them."""
    path = tmp_path / "results.jsonl"
    path.write_bytes(line(0))
    nfs = CloseToOpen()
    monkeypatch.setattr(_results, "os", nfs)
    monkeypatch.setattr(_results, "time", NoWaiting())
    reader = ResultsReader(6, path)
    assert numbers(reader.read()) == [0]
    append(path, line(1))
    assert reader.read(limit=len(line(0)) + len(line(1)), final=True) == []


# -- bytes that never show up ---------------------------------------------------------


@pytest.mark.parametrize("missing_file", [False, True], ids=["short-file", "no-file"])
def test_a_final_read_gives_up_after_the_bounded_wait_and_names_what_is_missing(
    missing_file: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wait = 0.3
    monkeypatch.setattr(_results, "FINAL_READ_WAIT", wait)
    path = tmp_path / "results.jsonl"
    content = b"" if missing_file else line(0) + line(1) + b'{"i": 2}'
    if not missing_file:
        path.write_bytes(content)
    limit = len(content) + 100
    reader = ResultsReader(7, path, poll=True)
    started = time.monotonic()
    results = reader.read(limit=limit, final=True)
    elapsed = time.monotonic() - started
    # What is there is delivered, the unfinished last line included (the run has ended).
    assert numbers(results) == ([] if missing_file else [0, 1, 2])
    assert wait <= elapsed < wait + 10
    (message,) = warnings(caplog)
    assert "trial 7" in message and str(path) in message and "100 bytes" in message

    # The local mode, as before: it reads what it finds, at once and without a word.
    caplog.clear()
    monkeypatch.setattr(_results, "time", NoWaiting())
    local = ResultsReader(7, path)
    assert numbers(local.read(limit=limit, final=True)) == numbers(results)
    assert warnings(caplog) == []


@pytest.mark.parametrize(
    ("limit_beyond", "final"),
    [(100, False), (0, True), (None, True)],
    ids=["not-final", "limit-already-there", "no-limit"],
)
def test_poll_mode_waits_only_for_a_final_limit_not_yet_read(
    limit_beyond: int | None, final: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "results.jsonl"
    content = line(0) + line(1) + b'{"i": 2}'
    path.write_bytes(content)
    monkeypatch.setattr(_results, "time", NoWaiting())
    reader = ResultsReader(8, path, poll=True)
    limit = None if limit_beyond is None else len(content) + limit_beyond
    assert numbers(reader.read(limit=limit, final=final)) == ([0, 1, 2] if final else [0, 1])
    assert warnings(caplog) == []


def test_a_read_in_poll_mode_stops_at_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(line(0) + line(1) + line(2))
    reader = ResultsReader(9, path, poll=True)
    assert numbers(reader.read(limit=len(line(0)) + 3)) == [0]
    assert numbers(reader.read(limit=len(line(0)) + len(line(1)), final=True)) == [1]
    assert numbers(reader.read()) == [2]


# -- replaced and truncated files --------------------------------------------------------


def test_poll_mode_reads_a_replaced_or_emptied_file_again_from_its_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "results.jsonl"
    path.write_bytes(line(0) + line(1, pad=40))
    reader = ResultsReader(10, path, poll=True)
    assert numbers(reader.read()) == [0, 1]

    path.write_bytes(line(2))  # emptied and written again, shorter than what was read
    assert numbers(reader.read()) == [2]
    assert any("shrank" in m for m in warnings(caplog))

    caplog.clear()
    replacement = tmp_path / "new"
    replacement.write_bytes(line(3) + line(4))
    os.replace(replacement, path)
    assert numbers(reader.read()) == [3, 4]
    assert any("replaced" in m for m in warnings(caplog))

    # A final read whose limit lies before the reader's offset, after a truncation.
    caplog.clear()
    path.write_bytes(line(5))
    assert numbers(reader.read(limit=len(line(5)), final=True)) == [5]
    assert any("shrank" in m for m in warnings(caplog))


# -- torn and invalid lines: as in local mode ------------------------------------------

RESULTS_CASES = {
    "valid": line(0) + line(1),
    "blank-lines": b"\n  \n" + line(0) + b"\n",
    "invalid-json": line(0) + b"not json\n" + line(1),
    "not-objects": b"[1, 2]\n3\n\"s\"\nnull\n" + line(0),
    "invalid-utf8": line(0) + b'{"i": "\xff"}\n' + line(1),
    "crlf": b'{"i": 0}\r\n{"i": 1}\r\n',
    "torn-valid-tail": line(0) + b'{"i": 1}',
    "torn-invalid-tail": line(0) + b'{"i": ',
    "torn-not-object-tail": line(0) + b"[1]",
    "long-line": line(0) + line(1, pad=500) + line(2),
    "long-unfinished-tail": line(0) + b'{"i": 1, "pad": "' + b"x" * 500,
}
TUNE_METRIC_CASES = {
    "mixed": b"epoch 1\n[tune-metric]: {\"i\": 0}\nsaid [tune-metric]: {\"i\": 1}\nbye\n",
    "bad-metric": b"[tune-metric]: nope\n[tune-metric]: [1]\n[tune-metric]: {\"i\": 0}\n",
    "torn-metric": b"hello\n[tune-metric]: {\"i\": 0}",
    "torn-bad-metric": b"hello\n[tune-metric]: {\"i\": ",
    "long-log-line": b"y" * 700 + b"\n[tune-metric]: {\"i\": 0}\n",
    "long-unfinished-log-line": b"[tune-metric]: {\"i\": 0}\n" + b"z" * 700,
    "long-metric": b"[tune-metric]: {\"i\": 0, \"pad\": \"" + b"x" * 500 + b"\"}\nok\n",
}
PATTERNS = ["final", "growing-then-final", "limit-mid-file"]


def replay(
    cls: type[_Tail], poll: bool, path: Path, content: bytes, pattern: str,
    caplog: pytest.LogCaptureFixture,
) -> tuple[list[list[dict[str, Any]]], list[str], int, int]:
    """Every read's results, the warnings, and the final offset and line number."""
    caplog.clear()
    path.unlink(missing_ok=True)
    path.write_bytes(b"")
    reader = cls(11, path, poll=poll)
    reads: list[list[dict[str, Any]]] = []
    if pattern == "final":
        path.write_bytes(content)
        reads.append(reader.read(final=True))
    elif pattern == "growing-then-final":
        for size in range(0, len(content) + 1, 13):
            path.write_bytes(content[:size])  # rewritten in place: the same inode grows
            reads.append(reader.read())
        path.write_bytes(content)
        reads.append(reader.read(limit=len(content), final=True))
    else:
        path.write_bytes(content)
        reads.append(reader.read(limit=len(content) // 2))
        reads.append(reader.read(limit=len(content) * 2 // 3, final=True))
    return reads, warnings(caplog), reader.offset, reader.line_number


@pytest.mark.parametrize("chunk", [None, 7], ids=["default-chunk", "7-byte-chunks"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize(
    ("cls", "case"),
    [(ResultsReader, case) for case in RESULTS_CASES]
    + [(TuneMetricReader, case) for case in TUNE_METRIC_CASES],
)
def test_torn_and_invalid_lines_read_the_same_in_both_modes(
    cls: type[_Tail], case: str, pattern: str, chunk: int | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    if chunk is not None:
        monkeypatch.setattr(_results, "READ_CHUNK", chunk)
    # Small enough that the "long" cases are over the limits.
    monkeypatch.setattr(cls, "max_line", 256)
    monkeypatch.setattr(_results, "MAX_PENDING_LOG_LINE", 256)
    monkeypatch.setattr(_results, "time", NoWaiting())
    content = (RESULTS_CASES if cls is ResultsReader else TUNE_METRIC_CASES)[case]
    path = tmp_path / "file"
    local = replay(cls, False, path, content, pattern, caplog)
    poll = replay(cls, True, path, content, pattern, caplog)
    assert poll == local


@pytest.mark.parametrize(
    ("case", "delivered", "warned"),
    [
        ("valid", [0, 1], 0),
        ("invalid-json", [0, 1], 1),
        ("not-objects", [0], 4),
        ("torn-valid-tail", [0, 1], 0),
        ("torn-invalid-tail", [0], 1),
        ("long-line", [0, 2], 1),
    ],
)
def test_poll_mode_delivers_valid_lines_and_warns_about_the_rest(
    case: str, delivered: list[int], warned: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(ResultsReader, "max_line", 256)
    monkeypatch.setattr(_results, "READ_CHUNK", 64)
    content = RESULTS_CASES[case]
    path = tmp_path / "results.jsonl"
    path.write_bytes(content)
    reader = ResultsReader(12, path, poll=True)
    first = reader.read()
    # An unfinished last line waits while the run goes on...
    torn = not content.endswith(b"\n")
    assert numbers(first) == (delivered[:-1] if case == "torn-valid-tail" else delivered)
    # ...and is delivered, if it is valid JSON, once the run has ended.
    rest = reader.read(limit=len(content), final=True)
    assert numbers(first + rest) == delivered
    assert reader.offset == len(content)
    assert len(warnings(caplog)) == warned
    assert torn or rest == []


# -- a block read at once and the same lines read one by one agree ----------------

STDOUT_LINES = [
    b'[tune-metric]: {"i": 0}\n',
    b"an ordinary log line\n",
    b'INFO [tune-metric]: {"i": 1}\n',  # the marker after a log prefix
    b'[tune-metric]: {"i": 2} [tune-metric]: {"i": 3}\n',  # not one JSON object after it
    b"[tune-metric]: [1, 2]\n",  # JSON, not an object
    b'[tune-metric]: {"i": 4}\n',
]
RESULTS_LINES = [b'{"i": 0}\n', b"\n", b"not json\n", b"[1]\n", b'{"i": 1}\n']


@pytest.mark.parametrize(
    ("reader_class", "lines", "expected", "warned_lines"),
    [
        (TuneMetricReader, STDOUT_LINES, [0, 1, 4], [4, 5]),
        (ResultsReader, RESULTS_LINES, [0, 1], [3, 4]),
    ],
)
def test_a_block_read_at_once_gives_what_line_by_line_reads_give(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reader_class: type[_Tail],
    lines: list[bytes], expected: list[int], warned_lines: list[int],
) -> None:
    caplog.set_level(logging.WARNING, logger="localbackend")
    clean = b'[tune-metric]: {"i": 9}\n' if reader_class is TuneMetricReader else b'{"i": 9}\n'
    outcomes = []
    for how in ("at once", "line by line"):
        caplog.clear()
        path = tmp_path / f"{how}.log"
        path.write_bytes(b"")
        reader = reader_class(1, path)
        got: list[dict[str, Any]] = []
        # Clean lines first, read in one block (the fast path), so that the
        # line numbers the warnings give must count them.
        with open(path, "ab") as out:
            out.write(clean * 3)
        got += reader.read()
        for chunk in ([b"".join(lines)] if how == "at once" else lines):
            with open(path, "ab") as out:
                out.write(chunk)
            got += reader.read()
        warned = sorted(
            int(r.getMessage().split("line ", 1)[1].split()[0]) for r in caplog.records
        )
        outcomes.append(([r["i"] for r in got], warned, reader.line_number))
    assert outcomes[0] == outcomes[1] == (
        [9, 9, 9, *expected], [3 + n for n in warned_lines], 3 + len(lines)
    )

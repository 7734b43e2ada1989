"""The file watcher says which watched files were written, and never hides a write.

Real inotify on real files: the driver reads only the files it names, so a
write it failed to name would be a result delivered late. Each case that
must make a pass read every file is produced for real (a full event queue,
a deleted file), not simulated.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from localbackend.core._notify import FULL_READ_SECONDS, FileWatcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")


@pytest.fixture
def watcher() -> FileWatcher:
    w = FileWatcher()
    if w.fileno() < 0:
        pytest.skip("inotify is not available here")
    yield w
    w.close()


def _append(path: Path, data: bytes = b"x\n") -> None:
    with open(path, "ab") as f:
        f.write(data)


def _pass_reads(watcher: FileWatcher, *paths: Path) -> list[bool]:
    """One pass: which of ``paths`` it must read."""
    watcher.begin_pass()
    return [watcher.take_change(str(p)) for p in paths]


def _fill_the_queue(x: Path, y: Path) -> None:
    """Write to two watched files until the kernel's event queue overflows."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many writes to overflow it")
    # The kernel merges an event with the one queued last only when they are
    # the same; alternating two files queues one event per write.
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in (x, y)]
    try:
        for i in range(limit + 10):
            os.write(fds[i % 2], b"x")
    finally:
        for fd in fds:
            os.close(fd)


def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``, within a full-read period and a margin."""
    deadline = time.monotonic() + FULL_READ_SECONDS + 10.0
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _past_first_full_pass(watcher: FileWatcher, *paths: Path) -> None:
    # The first pass reads everything; so does one every FULL_READ_SECONDS.
    _pass_reads(watcher, *paths)


def _watched_and_read(watcher: FileWatcher, folder: Path, *names: str) -> list[Path]:
    """Empty files in ``folder``, watched, and past the pass that reads them first."""
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(b"")
        watcher.watch(path)
    _past_first_full_pass(watcher, *paths)
    return paths


def test_a_pass_reads_only_the_files_written_since_the_last(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"before the watch\n")
    b.write_bytes(b"")
    watcher.watch(a)
    watcher.watch(b)
    # What was written before the watch is not notified: read once.
    assert _pass_reads(watcher, a, b) == [True, True]
    assert _pass_reads(watcher, a, b) == [False, False]
    _append(b)
    assert _pass_reads(watcher, a, b) == [False, True]
    assert _pass_reads(watcher, a, b) == [False, False]


def test_a_write_after_the_file_was_taken_is_seen_by_the_next_pass(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    (a,) = _watched_and_read(watcher, tmp_path, "a")
    _append(a)
    watcher.begin_pass()
    assert watcher.take_change(str(a))
    _append(a)  # between the take and the read: the read may miss it
    assert _pass_reads(watcher, a) == [True]


def test_notifications_taken_in_while_sleeping_are_kept_for_the_next_pass(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    (a,) = _watched_and_read(watcher, tmp_path, "a")
    _append(a)
    watcher.take_in()  # what wait() does after it wakes
    assert _pass_reads(watcher, a) == [True]


def test_taking_in_while_sleeping_leaves_the_watches_to_the_next_pass(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    # wait() takes notifications in without the backend's lock, while other
    # threads watch and unwatch files under it: so taking in changes no
    # watch, not even for a deleted file's dropped watch or a full queue, and
    # the next pass (under the lock) applies what was taken in.
    a, gone, x, y = _watched_and_read(watcher, tmp_path, "a", "gone", "x", "y")
    gone.unlink()  # the kernel drops its watch and says so
    _fill_the_queue(x, y)
    watches = dict(watcher._watches)
    watcher.take_in()
    assert watcher._watches == watches
    assert _pass_reads(watcher, a, gone, x, y) == [True, True, True, True]
    assert str(gone) not in watcher._watches and str(a) in watcher._watches
    _append(a)
    readable, _, _ = select.select([watcher.fileno()], [], [], 10.0)
    assert readable, "a write to a watched file did not wake the watcher"
    assert _pass_reads(watcher, a, x, y) == [True, False, False]


def test_files_not_watched_are_always_read(watcher: FileWatcher, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"")
    assert _pass_reads(watcher, a) == [True]
    assert _pass_reads(watcher, a) == [True]
    watcher.watch(a)
    _past_first_full_pass(watcher, a)
    watcher.unwatch(a)
    assert _pass_reads(watcher, a) == [True]


def test_a_full_queue_makes_the_next_pass_read_every_file(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    a, b, quiet = _watched_and_read(watcher, tmp_path, "a", "b", "quiet")
    _fill_the_queue(a, b)
    assert _pass_reads(watcher, a, b, quiet) == [True, True, True]


def test_a_deleted_file_is_read_on_every_pass_until_watched_again(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    (a,) = _watched_and_read(watcher, tmp_path, "a")
    a.unlink()
    a.write_bytes(b"a new file under the old name\n")
    assert _pass_reads(watcher, a) == [True]
    _append(a)
    assert _pass_reads(watcher, a) == [True]  # the old watch is gone; no quiet pass
    watcher.watch(a)
    assert _pass_reads(watcher, a) == [True]
    assert _pass_reads(watcher, a) == [False]


def test_every_file_is_read_again_once_full_read_seconds_have_passed(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    # A watch can be lost without a notification (the file replaced by a
    # rename while still open elsewhere): the periodic full pass bounds the delay.
    (a,) = _watched_and_read(watcher, tmp_path, "a")
    assert _pass_reads(watcher, a) == [False]
    _until(lambda: _pass_reads(watcher, a)[0], "no full pass came")


def test_passes_over_other_files_do_not_use_up_a_files_periodic_read(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    # A fetch of some trials is a pass over their files only. A file whose
    # writes are not notified (here: its name now points at another file,
    # while the old one is still open) is read once FULL_READ_SECONDS have
    # gone by since its own last read, whatever passes came in between.
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"")
    b.write_bytes(b"")
    watcher.watch(a)
    watcher.watch(b)
    assert _pass_reads(watcher, a, b) == [True, True]
    last_read_of_a = time.monotonic()
    with open(a, "rb"):  # keeps the watched file alive: no notification of its end
        replacement = tmp_path / "a.new"
        replacement.write_bytes(b"")
        os.replace(replacement, a)
        _append(a)
        deadline = time.monotonic() + FULL_READ_SECONDS + 10.0
        # Half a period past a's due time: passes over b alone came at it and after.
        while time.monotonic() - last_read_of_a <= 1.5 * FULL_READ_SECONDS:
            _pass_reads(watcher, b)  # only b, many times
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert _pass_reads(watcher, a) == [True]


def test_a_watch_dropped_while_the_queue_overflowed_is_added_again(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    # The kernel's notice that it dropped a watch is lost with the rest when
    # the queue overflows: every watch is added again, so the file's writes
    # wake the driver again.
    a, x, y = _watched_and_read(watcher, tmp_path, "a", "x", "y")
    _fill_the_queue(x, y)
    a.unlink()  # its watch is dropped; the notice finds the queue full
    a.write_bytes(b"")
    assert _pass_reads(watcher, a, x, y) == [True, True, True]
    _append(a)
    readable, _, _ = select.select([watcher.fileno()], [], [], 10.0)
    assert readable, "a write to the file under the old name did not wake the watcher"
    assert _pass_reads(watcher, a, x, y) == [True, False, False]


def _owners(watcher: FileWatcher, *, every_trial: bool = True) -> set[int] | None:
    """One pass: the trials it must visit (None: every trial it covers)."""
    watcher.begin_pass()
    return watcher.owners_to_read(every_trial=every_trial)


def _quiet_owners(watcher: FileWatcher) -> set[int] | None:
    """The trials a pass that is not a full one visits (a full pass that came due is made first).

    Passes a moment apart are never both full: only the first of them can be due.
    """
    owners = _owners(watcher)
    return _owners(watcher) if owners is None else owners


def _until_full_pass_due(watcher: FileWatcher) -> None:
    _until(lambda: _owners(watcher, every_trial=False) is None, "no full pass came due")


def test_a_pass_visits_only_the_trials_whose_files_were_written(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for path, owner in ((a, 1), (b, 2)):
        path.write_bytes(b"")
        watcher.watch(path, owner)
    assert _owners(watcher) is None  # the first pass visits every trial
    assert _quiet_owners(watcher) == {1, 2}  # the files were just watched: read once
    assert [watcher.take_change(str(p)) for p in (a, b)] == [True, True]
    assert _quiet_owners(watcher) == set()
    _append(b)
    assert _quiet_owners(watcher) == {2}
    assert [watcher.take_change(str(p)) for p in (a, b)] == [False, True]
    assert _quiet_owners(watcher) == set()
    watcher.unwatch(b)
    assert _quiet_owners(watcher) == set()


def test_a_written_file_of_no_known_trial_makes_the_pass_visit_every_trial(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    a, stray = tmp_path / "a", tmp_path / "stray"
    a.write_bytes(b"")
    stray.write_bytes(b"")
    watcher.watch(a, 1)
    watcher.watch(stray)
    _owners(watcher)
    watcher.begin_pass()
    assert watcher.owners_to_read(every_trial=True) is None  # stray's first read
    watcher.take_change(str(stray))
    watcher.take_change(str(a))
    assert _quiet_owners(watcher) == set()
    _append(stray)
    assert _owners(watcher) is None


def test_a_fetch_of_some_trials_does_not_use_up_the_full_pass_of_the_others(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    # A file whose writes are not notified (a watch lost unseen) is read at
    # the next full pass: passes over a few trials (fetches) must leave that
    # pass due until one over every running trial (wait()) makes it.
    a = tmp_path / "a"
    a.write_bytes(b"")
    watcher.watch(a, 1)
    assert _owners(watcher) is None
    watcher.take_change(str(a))
    assert _quiet_owners(watcher) == set()
    _until_full_pass_due(watcher)
    assert _owners(watcher, every_trial=False) is None  # still due: not used up
    assert _owners(watcher, every_trial=True) is None  # this one makes it
    assert _owners(watcher, every_trial=True) == set()


def test_a_trials_file_whose_watch_was_dropped_is_visited_on_every_pass(
    watcher: FileWatcher, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for path, owner in ((a, 1), (b, 2)):
        path.write_bytes(b"")
        watcher.watch(path, owner)
    _owners(watcher)
    watcher.take_change(str(a))
    watcher.take_change(str(b))
    a.unlink()  # the kernel drops its watch
    a.write_bytes(b"a new file under the old name\n")
    deadline = time.monotonic() + 10.0
    while _quiet_owners(watcher) != {1}:
        assert time.monotonic() < deadline, "the dropped watch was not noticed"
        time.sleep(0.01)
    for _ in range(3):  # not watched: its trial is visited, and the file read, every pass
        assert watcher.take_change(str(a))
        assert _quiet_owners(watcher) == {1}
    watcher.watch(a, 1)
    assert watcher.take_change(str(a))
    assert _quiet_owners(watcher) == set()

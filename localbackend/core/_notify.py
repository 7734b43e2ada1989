"""Wake the driver when a trial's files change, and say which (Linux inotify, via ctypes).

``wait()`` blocks on the supervisor's event pipe and on this watcher's fd at
once, so a new result wakes it at once instead of at the next poll. Where
inotify is missing, ``fileno()`` is -1 and ``wait()`` falls back to polling.

The notifications also say which watched files were written, and whose:
a pass over the running trials visits only the trials whose files were
written (``owners_to_read``) and reads only those files (``take_change``),
so its cost follows what the trials write, not how many of them run. A file
is read anyway when its watch was just added (what was written before it is
not notified) and after the kernel's queue overflowed (every watch is then
added again, in case one was dropped unseen). Once ``FULL_READ_SECONDS``
have gone by since the last full pass, a pass visits every trial it covers,
and reads every file not read for that long, watched or not (a watch that
could not be added, one the kernel dropped); only a pass over every running
trial (``wait()``'s) counts as the full pass, so that fetches of a few
trials never use it up for the others. That rule bounds the delay if a watch is
ever lost without a notification (a file replaced under its name is a new
file, which the watch does not follow): a pass comes at least every
``MAX_SLEEP_WITH_NOTIFY`` (``_waiting``), so such a file is read within
about a second.
"""

from __future__ import annotations

import ctypes
import math
import os
import struct
import sys
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any

_IN_MODIFY = 0x00000002
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
# struct inotify_event: wd, mask, cookie, len, then ``len`` bytes of name.
_EVENT = struct.Struct("iIII")

# Longest time a watched file goes unread while passes come.
FULL_READ_SECONDS = 0.5


class FileWatcher:
    """Watches files for writes; create lazily, close with ``close()``.

    The backend's lock guards every call but ``take_in``, which ``wait()``
    makes while it sleeps, beside threads that watch and unwatch files under
    the lock: so ``take_in`` only reads the notifications into a queue (one
    atomic append each), and the next pass applies them (``begin_pass``).
    """

    def __init__(self) -> None:
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._watches: dict[str, int] = {}
        self._paths: dict[int, str] = {}
        # Notifications read by ``take_in``, for the next pass to apply.
        self._unread: deque[bytes] = deque()
        # Watched files written to (or newly watched) since they were last read.
        self._changed: set[str] = set()
        # When each watched file was last read, by the clock of ``begin_pass``.
        self._read_at: dict[str, float] = {}
        # The trial whose file each watched path is.
        self._owners: dict[str, int] = {}
        self._now = 0.0
        # When a pass last visited every trial; whether one is due.
        self._full_pass_at = -math.inf
        self._full_pass_due = True
        self._finalizer: weakref.finalize[..., Any] | None = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            except (OSError, AttributeError):
                fd = -1
            if fd >= 0:
                self._fd = fd
                self._libc = libc
                # A backend dropped without close() must not leak the descriptor.
                self._finalizer = weakref.finalize(self, os.close, fd)

    def fileno(self) -> int:
        return self._fd

    def watch(self, path: Path, owner: int = -1) -> None:
        """Start watching ``path`` (which must exist), a file of trial ``owner``.

        A missing file is not watched, and is read at each full pass. A file
        of no known trial (``owner`` -1) makes every pass it is written in a
        full one.
        """
        key = str(path)
        if self._libc is None or key in self._watches:
            return
        self._owners[key] = owner
        self._add(self._libc, key)

    def _add(self, libc: ctypes.CDLL, key: str) -> None:
        # Only writes matter; a close would wake the driver a second time.
        wd = libc.inotify_add_watch(self._fd, os.fsencode(key), _IN_MODIFY)
        old = self._watches.pop(key, None)
        if old is not None and old != wd:
            # The name is another file now: the old one's watch goes.
            self._paths.pop(old, None)
            libc.inotify_rm_watch(self._fd, old)
        if wd >= 0:
            self._watches[key] = wd
            self._paths[wd] = key
        self._changed.add(key)  # what was written before the watch

    def unwatch(self, path: Path) -> None:
        key = str(path)
        wd = self._watches.pop(key, None)
        self._changed.discard(key)
        self._read_at.pop(key, None)
        self._owners.pop(key, None)
        if wd is not None and self._libc is not None:
            self._paths.pop(wd, None)
            self._libc.inotify_rm_watch(self._fd, wd)

    def take_in(self) -> None:
        """Read the pending notifications, without blocking, for the next pass."""
        fd = self._fd
        if fd < 0:
            return
        try:
            while data := os.read(fd, 1 << 16):
                self._unread.append(data)
        except OSError:
            pass  # nothing more (EAGAIN), or closed by another thread meanwhile

    def begin_pass(self) -> None:
        """Before a pass that reads trials' files: apply the notifications."""
        self.take_in()
        unread = self._unread
        while unread:
            self._take(unread.popleft())
        self._now = now = time.monotonic()
        self._full_pass_due = self._fd < 0 or now - self._full_pass_at >= FULL_READ_SECONDS

    def owners_to_read(self, *, every_trial: bool) -> set[int] | None:
        """The trials whose files this pass must read; None when it must visit all it covers.

        A trial missing from the set has no file written since it was last
        read (as ``take_change`` would say of each). A write notified after
        this call is taken by the next pass. ``every_trial``: the pass covers
        every running trial, so a full pass due is done by it; a pass over
        some trials (a fetch of a few) visits all of those, and leaves the
        full pass due for the others.
        """
        if self._full_pass_due:
            if every_trial:
                self._full_pass_at = self._now
                self._full_pass_due = False
            return None
        owners, found = self._owners, set()
        # A copy: the loop discards from the set.
        for path in self._changed.copy():
            owner = owners.get(path)
            if owner is None:
                # Unwatched meanwhile (see ``unwatch``): no pass reads it for a trial now.
                self._changed.discard(path)
            elif owner < 0:
                return None
            else:
                found.add(owner)
        return found

    def take_change(self, path: str) -> bool:
        """Whether the pass must read ``path``: it may have changed since it was last read.

        Call it just before reading the file: a write after that is notified
        again, so it is never missed.
        """
        if path in self._changed:
            if path in self._watches or path not in self._owners:
                self._changed.discard(path)
            # else a trial's file without a watch (it could not be added, or
            # the kernel dropped it): it stays marked, so that every pass
            # visits its trial and reads it, until it is watched again.
        elif path in self._watches:
            if self._now - self._read_at.get(path, -math.inf) < FULL_READ_SECONDS:
                return False
        else:
            return True
        self._read_at[path] = self._now
        return True

    def _take(self, data: bytes) -> None:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            if mask & _IN_Q_OVERFLOW:
                self._overflowed()
                continue
            path = self._paths.get(wd)
            if path is None:
                continue  # a watch already removed
            if mask & _IN_IGNORED:
                # The kernel dropped the watch (the file is gone): read it on
                # every pass until it is watched again.
                self._paths.pop(wd, None)
                if self._watches.get(path) == wd:
                    del self._watches[path]
                self._read_at.pop(path, None)
            self._changed.add(path)

    def _overflowed(self) -> None:
        """Events were lost: read every file, and watch each again (a drop may be among them)."""
        if self._libc is None:
            return
        for key in list(self._watches):
            self._add(self._libc, key)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._libc = None
        self._watches.clear()
        self._paths.clear()
        self._unread.clear()
        self._changed.clear()
        self._read_at.clear()
        self._owners.clear()

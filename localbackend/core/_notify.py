"""Wake the driver when a trial's files change (Linux inotify, via ctypes).

``wait()`` blocks on the supervisor's event pipe and on this watcher's fd at
once, so a new result wakes it at once instead of at the next poll. Where
inotify is missing, ``fileno()`` is -1 and ``wait()`` falls back to polling.
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from pathlib import Path
from typing import Any

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


class FileWatcher:
    """Watches files for writes; create lazily, close with ``close()``."""

    def __init__(self) -> None:
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._watches: dict[str, int] = {}
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

    def watch(self, path: Path) -> None:
        """Start watching ``path`` (which must exist); a missing file is ignored."""
        if self._libc is None or str(path) in self._watches:
            return
        # Only writes matter; a close would wake the driver a second time.
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), _IN_MODIFY)
        if wd >= 0:
            self._watches[str(path)] = wd

    def unwatch(self, path: Path) -> None:
        wd = self._watches.pop(str(path), None)
        if wd is not None and self._libc is not None:
            self._libc.inotify_rm_watch(self._fd, wd)

    def drain(self) -> None:
        """Discard pending notifications; callers re-check the files themselves."""
        if self._fd < 0:
            return
        try:
            while os.read(self._fd, 1 << 16):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._libc = None
        self._watches.clear()

"""One driver per experiment folder.

The lock is an ``flock`` on ``.driver.lock``, held by the backend object (not
by a thread) until it calls ``release``. The kernel drops it when the holding
process dies, however it dies, so a lock left by a dead driver is simply taken
over; ``driver.json`` beside it says who holds it, for the error message a
second driver gets.

Whether some driver holds a folder has one answer, asked of the kernel:
:func:`experiment_is_held`. ``status``, ``logs --follow`` and ``restore``
all use it; a PID in ``driver.json`` is only shown, never trusted, since it
may have been reused.

Within one process, a second backend for the same folder (``restore`` right
after a run, as Syne Tune's ``Tuner.load`` does in a notebook) takes the
experiment over from the first: the first is told to let go through the
callback it registered, and raises on any later call.

``flock`` is called directly rather than through filelock: filelock 4 falls
back to a marker file on a filesystem without ``flock``, which a killed
driver never removes, so its experiment could never be taken over.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from .._errors import ExperimentError, ExperimentLockedError
from .._paths import ExperimentPaths
from ._storage import atomic_write_json

# The holder of each lock file taken by this process, by the lock file's
# path, with the callback that makes it let go. Weak: a dropped backend's
# lock is released by its finalizer.
_HELD_HERE: dict[str, tuple[weakref.ref[ExperimentLock], Callable[[], None]]] = {}
_HELD_HERE_LOCK = threading.Lock()


class ExperimentLock:
    """The driver's claim on an experiment folder."""

    def __init__(self, paths: ExperimentPaths) -> None:
        self.paths = paths
        self._fd = -1
        self._finalizer: weakref.finalize[..., Any] | None = None

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self, on_take_over: Callable[[], None] | None = None, *,
                take_over: bool = False) -> None:
        """Take the folder, or raise ``ExperimentLockedError`` naming its holder.

        ``on_take_over`` is called (once) if another backend of this process
        later takes the folder over with ``take_over=True``; it must release
        this lock. Without ``take_over``, a holder in this process is an error
        like any other.
        """
        if self.held:
            return
        key = str(self.paths.lock)
        if take_over:
            with _HELD_HERE_LOCK:
                entry = _HELD_HERE.get(key)
            holder = entry[0]() if entry is not None else None
            if entry is not None and holder is not None and holder is not self:
                entry[1]()
                holder.release()
        fd = _try_flock(self.paths.lock, self.paths.root)
        if fd < 0:
            holder_info = self.holder() or {}
            raise ExperimentLockedError(
                str(self.paths.root),
                holder_info.get("pid", "unknown"),
                holder_info.get("host", "unknown"),
                holder_info.get("since", "unknown"),
            )
        self._fd = fd
        # A backend dropped without close() lets go of the folder with it.
        self._finalizer = weakref.finalize(self, os.close, fd)
        with _HELD_HERE_LOCK:
            _HELD_HERE[key] = (weakref.ref(self), on_take_over or (lambda: None))
        atomic_write_json(
            self.paths.driver,
            {
                "pid": os.getpid(),
                "host": os.uname().nodename,  # socket.gethostname(), without importing socket
                "since": datetime.datetime.now().isoformat(timespec="seconds"),
            },
        )

    def holder(self) -> dict[str, Any] | None:
        try:
            value = orjson.loads(self.paths.driver.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        return value if isinstance(value, dict) else None

    def release(self) -> None:
        """Let go of the folder; from any thread, and more than once."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        with _HELD_HERE_LOCK:
            entry = _HELD_HERE.get(str(self.paths.lock))
            if entry is not None and entry[0]() is self:
                del _HELD_HERE[str(self.paths.lock)]
        try:
            self.paths.driver.unlink()
        except OSError:
            pass
        os.close(fd)  # closing the only descriptor drops the flock


def experiment_is_held(root: Path) -> bool:
    """Whether a live driver (in any process) holds the experiment in ``root``."""
    lock = ExperimentPaths(root).lock
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # never locked, or not a folder we can read
    try:
        # A shared probe conflicts with the driver's exclusive lock, and a
        # driver that tries to take the folder during it waits, not fails.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


# A driver retries this long when the folder is only being probed.
_PROBE_RETRY_SECONDS = 0.2


def _try_flock(path: Path, root: Path) -> int:
    """An open descriptor holding an exclusive flock on ``path``, or -1 if another holds it."""
    import time

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + _PROBE_RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise ExperimentError(
                        str(root),
                        f"is on a filesystem that does not support file locks (flock on "
                        f"{path.name}: {os.strerror(err.errno)})",
                        "Put the experiment folder on a local filesystem, or on a network "
                        "filesystem mounted with lock support.",
                    ) from err
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                return -1
            # ``status`` may hold a shared probe for a moment.
            time.sleep(0.01)

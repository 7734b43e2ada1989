"""One driver per experiment folder.

The lock is an ``flock`` held through filelock. The kernel drops it when the
holder dies, however it dies, so a lock left by a dead driver is simply taken
over; ``driver.json`` beside it says who holds it, for the error message a
second driver gets.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any

import orjson

from ._errors import ExperimentLockedError
from ._paths import ExperimentPaths
from ._storage import atomic_write_json


class ExperimentLock:
    """The driver's claim on an experiment folder."""

    def __init__(self, paths: ExperimentPaths) -> None:
        self.paths = paths
        self._lock: Any = None
        self.previous_holder: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None and bool(self._lock.is_locked)

    def acquire(self) -> None:
        import filelock

        lock = filelock.FileLock(str(self.paths.lock), mode=0o600)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = self.holder() or {}
            raise ExperimentLockedError(
                str(self.paths.root),
                holder.get("pid", "unknown"),
                holder.get("host", "unknown"),
                holder.get("since", "unknown"),
            ) from None
        self._lock = lock
        self.previous_holder = self.holder()
        atomic_write_json(
            self.paths.driver,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
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
        if self._lock is not None:
            try:
                self.paths.driver.unlink()
            except OSError:
                pass
            self._lock.release()
            self._lock = None

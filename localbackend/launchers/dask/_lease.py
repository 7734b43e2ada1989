"""The driver's lease: how runs on other hosts learn that their driver is gone.

The driver rewrites a small file in the experiment folder every
``interval`` seconds with a counter. A worker ends the runs of that driver
when the counter has not changed for ``timeout`` seconds of its own clock
(so the hosts' clocks need not agree), or at once when the driver marked
the lease closed. Only the file's content is compared, never its time, and
each read opens the file anew, which NFS's close-to-open consistency makes
fresh.

The lease also names the runs the driver stopped before they started (a
run whose task still waits for a worker thread): a task reads it just
before it starts its run, and does not start one named there. A stop that
comes after that read finds the run started, and ends it as any stop does.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from ..._files import atomic_write_bytes, read_json_object

FRESH, STALE, CLOSED = "fresh", "stale", "closed"
# After its lease went, how long a worker may take to end the trees (the keepers' fast end).
END_MARGIN_SECONDS = 3.0


class LeaseWriter:
    """The driver's side: a thread that renews the lease until ``close`` or ``abandon``."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._beat = 0
        self._cancelled: set[tuple[int, int]] = set()
        # One write at a time, so that a renewal never puts back an older list.
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._write(closed=False)
        self._thread = threading.Thread(target=self._renew, name="localbackend-lease",
                                        daemon=True)
        self._thread.start()

    def _write(self, *, closed: bool) -> None:
        with self._write_lock:
            self._beat += 1
            record = {"beat": self._beat, "closed": closed,
                      "cancelled": sorted([t, r] for t, r in self._cancelled)}
            try:
                atomic_write_bytes(self.path, json.dumps(record).encode())
            except OSError:
                pass  # a full disk for a moment: the next beat tries again

    def cancel(self, trial_id: int, run: int) -> None:
        """Tell the workers at once not to start ``run`` of ``trial_id``."""
        with self._write_lock:
            self._cancelled.add((trial_id, run))
        if not self._stop.is_set():
            self._write(closed=False)

    def forget(self, trial_id: int, run: int) -> None:
        """The run's task has ended: the next renewal no longer names it."""
        with self._write_lock:
            self._cancelled.discard((trial_id, run))

    def _renew(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(closed=False)

    def abandon(self) -> None:
        """Stop renewing, as if the driver had died (detach mode lets go this way)."""
        self._stop.set()
        self._thread.join()

    def close(self) -> None:
        """Stop renewing and tell the workers at once that this driver is done."""
        self.abandon()
        self._write(closed=True)


class LeaseWatch:
    """A worker's view of one lease."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self._seen: object = None
        self._changed = time.monotonic()

    def verdict(self) -> str:
        record = read_json_object(self.path)
        if record is not None and record.get("closed"):
            return CLOSED
        beat = None if record is None else record.get("beat")
        now = time.monotonic()
        if beat is not None and beat != self._seen:
            self._seen, self._changed = beat, now
        return STALE if now - self._changed > self.timeout else FRESH

    def cancelled(self, trial_id: int, run: int) -> bool:
        """Whether the driver stopped ``run`` of ``trial_id`` before it started, or closed."""
        record = read_json_object(self.path)
        if record is None or record.get("closed"):
            return record is not None
        cancelled = record.get("cancelled")
        return isinstance(cancelled, list) and [trial_id, run] in cancelled


def wait_for_lease_end(path: str, lease_timeout: float, timeout: float) -> None:
    """Wait until a driver's lease has gone (closed, or stale) and its trees have had time to end.

    For a driver that restores, on another launcher, an experiment whose
    earlier driver ran its trials through a lease: it waits at most
    ``timeout`` seconds, since it has no way to end those trees itself.
    """
    deadline = time.monotonic() + timeout
    watch = LeaseWatch(path, lease_timeout)
    while watch.verdict() == FRESH and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(max(0.0, min(END_MARGIN_SECONDS, deadline - time.monotonic())))

"""How ``LocalBackend.wait()`` waits: for news, on descriptors, without polling when it can.

``wait()`` is level-triggered: it returns at once when a trial has a result
or a status change not yet fetched. Otherwise it sleeps on the launcher's
descriptor (the supervisor's event pipe) and on inotify over the trials'
files, so a new result wakes it as it is written. Where there is nothing to
wait on (no inotify, a launcher that can only be polled, runs of an earlier
driver followed by reading their files), the sleep is capped so that news
is seen within ``MAX_SLEEP_POLLING``, or the launcher's ``poll_interval``.
"""

from __future__ import annotations

import math
import time

from .._errors import BackendConfigurationError
from .._files import wait_readable
from .._types import Status
from ..launchers._base import Launcher
from ._notify import FileWatcher
from ._table import TrialTable

# Longest sleep between checks with a notification to wake on. With
# ``_notify.FULL_READ_SECONDS`` it bounds the delay when a file lost its
# inotify watch unseen, and when a fetch in another thread took in the
# notification that would have woken this sleep.
MAX_SLEEP_WITH_NOTIFY = 0.5
# Longest sleep between checks when something can only be polled.
MAX_SLEEP_POLLING = 0.02


def deadline_of(timeout: float | None) -> float:
    """The ``time.monotonic()`` deadline of a ``wait(timeout)``, or an error naming the value."""
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not timeout >= 0  # NaN too
    ):
        raise BackendConfigurationError(
            "timeout", timeout, "must be None or a number of seconds >= 0",
            "Use for example wait(timeout=1.0).",
        )
    if timeout is None or timeout > 1e300:  # an int too large for a float is forever too
        return math.inf
    return time.monotonic() + timeout


def news(table: TrialTable) -> tuple[list[int], bool]:
    """The trials with news not yet fetched, and whether anything can still change."""
    table.pump()
    ready = []
    running = False
    notified = table.begin_pass()
    to_read = notified.owners_to_read(every_trial=True) if notified is not None else None
    for record in table.live_records():
        if record.status == Status.in_progress:
            if to_read is None or record.trial_id in to_read:
                table.ingest(record, notified=notified)
            running = True
        if record.has_news:
            ready.append(record.trial_id)
        if record.alive_runs:
            running = True
    return ready, running


def sleep_until_news(launcher: Launcher, watcher: FileWatcher | None, seconds: float) -> None:
    """Sleep until the launcher or a trial's files have news, or ``seconds`` pass."""
    local = launcher.capabilities.local_files
    notify_fd = watcher.fileno() if local and watcher is not None else -1
    launcher_fd = launcher.fileno()
    fds = [fd for fd in (launcher_fd, notify_fd) if fd is not None and fd >= 0]
    watched = notify_fd >= 0 and launcher_fd is not None
    polling = launcher.capabilities.poll_interval or MAX_SLEEP_POLLING
    cap = MAX_SLEEP_WITH_NOTIFY if watched else polling
    timeout = max(0.0, min(seconds, cap))
    if fds:
        wait_readable(fds, timeout)
    else:
        time.sleep(timeout)
    if watcher is not None:
        watcher.take_in()  # which files were written, for the next pass

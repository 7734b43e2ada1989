"""What ``tune`` shows while it runs: a live table in a terminal, log lines elsewhere."""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from ._common import format_duration, format_value

# A plain-mode progress line at most this often, so CI logs stay readable.
PROGRESS_EVERY_SECONDS = 10.0
# The live table is redrawn at most this often.
LIVE_REFRESH_PER_SECOND = 4
# The live table shows at most this many trials: running and paused first, then the best.
LIVE_TABLE_ROWS = 16


@dataclass
class Row:
    trial_id: int
    status: str
    label: str
    resource: Any
    last: Optional[float]
    best: Optional[float]
    runtime: float
    config: str


@dataclass
class Snapshot:
    rows: list[Row] = field(default_factory=list)
    progress: str = ""
    metric: str = ""
    resource_attr: str = ""
    label_header: str = ""
    mode: str = "min"


class View:
    """Plain view: timestamped lines, and a progress line every few seconds.

    The tune's loop calls :meth:`show` on every turn with a function that
    builds the snapshot; it is built only when the view will show it, so
    the cost of the display does not grow with events times trials.
    """

    # Seconds between two updates: the plain view's progress line.
    interval = PROGRESS_EVERY_SECONDS

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._last_shown = time.monotonic()

    def message(self, text: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        for line in text.splitlines() or [""]:
            self.stream.write(f"{stamp} {line}\n")
        self.stream.flush()

    def show(self, make: Callable[[], Snapshot]) -> None:
        """Show the snapshot ``make`` builds, if an update is due."""
        now = time.monotonic()
        if now - self._last_shown >= self.interval:
            self._last_shown = now
            self.update(make())

    def update(self, snapshot: Snapshot) -> None:
        self.message(snapshot.progress)

    def close(self, last: Callable[[], Snapshot] | None = None) -> None:
        """Nothing to tear down for plain lines (the summary follows)."""

    def print(self, text: str) -> None:
        """Untimestamped output, such as the final summary."""
        self.stream.write(text + "\n")
        self.stream.flush()


class LiveView(View):
    """A rich live table of the trials, with messages printed above it."""

    interval = 1 / LIVE_REFRESH_PER_SECOND

    def __init__(self, stream: TextIO | None = None, force_terminal: bool = False) -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(
            file=self.stream, force_terminal=force_terminal or None, highlight=False
        )
        self.live = Live(
            console=self.console, refresh_per_second=LIVE_REFRESH_PER_SECOND, transient=False,
            auto_refresh=True,
        )
        self.live.start()
        self._last_shown = -math.inf  # the table appears at the first turn of the loop

    def message(self, text: str) -> None:
        from rich.text import Text

        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        self.console.print(Text(stamp + " ", style="dim") + Text(text))

    def update(self, snapshot: Snapshot) -> None:
        self.live.update(render_table(snapshot))

    def close(self, last: Callable[[], Snapshot] | None = None) -> None:
        try:
            if last is not None:  # the table left on screen shows how the tune ended
                self.live.update(render_table(last()))
        finally:
            self.live.stop()

    def print(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))


def render_table(snapshot: Snapshot) -> Any:
    """The rich renderable for a snapshot: the trial table and the progress line."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("trial", justify="right")
    table.add_column("status")
    if snapshot.label_header:
        table.add_column(snapshot.label_header, justify="right")
    table.add_column(snapshot.resource_attr or "results", justify="right")
    table.add_column(f"last {snapshot.metric}", justify="right")
    table.add_column(f"best {snapshot.metric}", justify="right")
    table.add_column("runtime", justify="right")
    table.add_column("config", overflow="ellipsis", no_wrap=True, max_width=60)
    shown = pick_rows(snapshot.rows, LIVE_TABLE_ROWS, snapshot.mode)
    styles = {"InProgress": "green", "Paused": "yellow", "Failed": "red", "Stopped": "magenta"}
    for row in shown:
        cells: list[Any] = [str(row.trial_id), Text(row.status, style=styles.get(row.status, ""))]
        if snapshot.label_header:
            cells.append(row.label)
        cells += [
            format_value(row.resource) if row.resource is not None else "-",
            format_value(row.last) if row.last is not None else "-",
            format_value(row.best) if row.best is not None else "-",
            format_duration(row.runtime),
            row.config,
        ]
        table.add_row(*cells)
    hidden = len(snapshot.rows) - len(shown)
    parts: list[Any] = [table]
    if hidden > 0:
        more = f"... and {hidden} more trials (localbackend status shows all)"
        parts.append(Text(more, style="dim"))
    parts.append(Text(snapshot.progress, style="bold"))
    return Group(*parts)


def pick_rows(rows: list[Row], limit: int, mode: str = "min") -> list[Row]:
    """Running and paused trials first, then the best of the rest, in id order."""
    if len(rows) <= limit:
        return rows
    live = [r for r in rows if r.status in ("InProgress", "Paused")]
    rest = [r for r in rows if r.status not in ("InProgress", "Paused") and r.best is not None]
    sign = 1.0 if mode == "min" else -1.0
    rest.sort(key=lambda r: sign * r.best if r.best is not None else 0.0)
    chosen = {r.trial_id for r in (live + rest)[:limit]}
    return [r for r in rows if r.trial_id in chosen]


def make_view(mode: str, stream: TextIO | None = None) -> View:
    """``auto`` picks the live table when stdout is a terminal and rich is installed."""
    stream = stream if stream is not None else sys.stdout
    if mode == "plain":
        return View(stream)
    if mode == "auto" and not stream.isatty():
        return View(stream)
    try:
        return LiveView(stream, force_terminal=mode == "live")
    except ImportError:
        view = View(stream)
        if mode == "live":
            view.message("rich is not installed, so no live table: pip install 'localbackend[cli]'")
        return view

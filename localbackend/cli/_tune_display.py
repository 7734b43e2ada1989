"""What ``tune`` tells the user, read from its state: the opening lines, the live
table's snapshot, the progress line and the closing summary.

Everything here is a function of the tune's state and returns text or a
:class:`~._live.Snapshot`; how it reaches the screen (a live table or
timestamped lines) is ``_live``'s business, and when is the loop's.
"""

from __future__ import annotations

import time

from .. import Status
from ._common import TunerPaths, format_duration, format_value
from ._live import Row, Snapshot
from ._records import ResultsLog
from ._tune_state import TuneState


def announcement(state: TuneState, files: TunerPaths) -> list[str]:
    """Where the tune writes, what it tunes, its budget and search space."""
    options = state.options
    lines = []
    if state.resumed:
        lines.append(f"resuming the tune in {files.root}")
    else:
        lines.append(f"experiment folder: {files.root}")
        lines.append(f"from another terminal: localbackend status|logs|stop {files.root}")
    budget = []
    if options.max_trials is not None:
        budget.append(f"{options.max_trials} trials")
    if options.max_time is not None:
        budget.append(f"{format_duration(options.max_time)}")
    lines.append(
        f"tuning {options.script}: {state.scheduler.describe()}; {options.mode}imize "
        f"{options.metric!r}; {options.workers} workers; budget "
        f"{' or '.join(budget) or 'none'}; seed {options.seed}"
    )
    lines.append(f"search space: {state.space.describe()}")
    return lines


def snapshot(state: TuneState, log: ResultsLog) -> Snapshot:
    """The trial table as the live view shows it now."""
    now = time.time()
    rows = []
    for trial_id, view in sorted(state.trials.items()):
        runtime = view.runtime + (now - view.run_started if view.run_started else 0.0)
        shown = " ".join(
            f"{k}={format_value(view.config.get(k))}" for k in state.space.domains
        )
        rows.append(
            Row(
                trial_id, view.status, state.scheduler.label(trial_id), view.last_resource,
                view.last_value, view.best_value, runtime, shown,
            )
        )
    return Snapshot(
        rows=rows,
        progress=progress_line(state, log),
        metric=state.options.metric,
        resource_attr=state.options.resource_attr,
        label_header=state.scheduler.label_header,
        mode=state.options.mode,
    )


def progress_line(state: TuneState, log: ResultsLog) -> str:
    """Trials started and by status, time elapsed, and the best so far, in one line."""
    options = state.options
    counts = _status_counts(state)
    started = f"{len(state.trials)}"
    if options.max_trials is not None:
        started += f"/{options.max_trials}"
    elapsed = format_duration(state.elapsed())
    if options.max_time is not None:
        elapsed += f"/{format_duration(options.max_time)}"
    parts = [f"{started} trials", *(f"{n} {s}" for s, n in sorted(counts.items()))]
    parts.append(f"{elapsed} elapsed")
    best = log.best
    if best is not None:
        parts.append(
            f"best {options.metric} {format_value(best['value'])} "
            f"(trial {best['trial_id']})"
        )
    return "progress: " + ", ".join(parts)


def summary(state: TuneState, log: ResultsLog, files: TunerPaths, reason: str) -> list[str]:
    """The closing lines: the best trial, the counts, the files, and how to carry on.

    ``reason`` is why the tune ended: finished, stopped, budget, interrupted
    or failed.
    """
    options = state.options
    lines = []
    counts = _status_counts(state)
    shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    best = log.best
    if best is not None:
        resource = best.get("resource")
        attr = options.resource_attr
        at = f" at {attr} {format_value(resource)}" if resource is not None else ""
        lines.append(
            f"best trial {best['trial_id']}: {options.metric} "
            f"{format_value(best['value'])}{at}"
        )
        config = best["config"].items()
        lines.append("  config: " + " ".join(f"{k}={format_value(v)}" for k, v in config))
    lines.append(
        f"{len(state.trials)} trials ({shown or 'none'}) in "
        f"{format_duration(time.monotonic() - state.session_start)}"
    )
    written = [f"{name}: {path}" for name, path in (("results", files.results_csv),
                                                     ("best", files.best)) if path.exists()]
    if written:
        lines.append("  ".join(written))
    if reason in ("interrupted", "budget"):
        why = "interrupted" if reason == "interrupted" else "time budget reached"
        more = " --max-time SECONDS" if reason == "budget" else ""
        lines.append(f"{why}; carry on with: localbackend tune --resume {files.root}{more}")
    elif reason == "stopped":
        lines.append("stopped on request (localbackend stop)")
    paused = counts.get(Status.paused, 0)
    if reason == "finished" and paused and options.scheduler == "asha":
        lines.append(f"{paused} trials stay paused at a rung: asha did not promote them")
    return lines


def _status_counts(state: TuneState) -> dict[str, int]:
    counts: dict[str, int] = {}
    for view in state.trials.values():
        counts[view.status] = counts.get(view.status, 0) + 1
    return counts


__all__ = ["announcement", "progress_line", "snapshot", "summary"]

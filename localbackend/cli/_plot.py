"""``localbackend plot``: learning curves with pauses, promotions, stops and PBT copies.

matplotlib is an optional extra (``pip install 'localbackend[plot]'``); it is
imported only here, through importlib, so nothing else needs it.
"""

from __future__ import annotations

import argparse
import bisect
import importlib
from pathlib import Path
from typing import Any, Optional

from .. import Status
from ._common import CliError, iter_jsonl, trial_ids_on_disk
from ._inspect import _experiment, tune_state

_TIMESTAMP = "st_worker_timestamp"


class _Curve:
    """One trial's results in the order delivered, with their times."""

    def __init__(self, results: list[dict[str, Any]], metric: str, attr: str) -> None:
        points = [
            (r.get(_TIMESTAMP, 0.0), r[attr], r[metric])
            for r in results
            if _number(r.get(attr)) and _number(r.get(metric))
        ]
        self.times = [p[0] for p in points]
        self.x = [p[1] for p in points]
        self.y = [p[2] for p in points]

    def at_time(self, when: float) -> Optional[tuple[float, float]]:
        """The last point reported at or before ``when``."""
        index = bisect.bisect_right(self.times, when) - 1
        return (self.x[index], self.y[index]) if index >= 0 else None

    def after_time(self, when: float) -> Optional[tuple[float, float]]:
        index = bisect.bisect_right(self.times, when)
        return (self.x[index], self.y[index]) if index < len(self.x) else None


def plot(args: argparse.Namespace) -> int:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise CliError(
            "plot needs matplotlib, an optional extra: pip install 'localbackend[plot]' "
            "(or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    pyplot = importlib.import_module("matplotlib.pyplot")
    lines_module = importlib.import_module("matplotlib.lines")

    files = _experiment(args.experiment_dir)
    tuner, _state = tune_state(files)
    options = (tuner or {}).get("options", {})
    metric = args.metric or options.get("metric")
    attr = args.resource_attr or options.get("resource_attr") or "epoch"
    if not metric:
        raise CliError("this experiment has no tune; name the value to draw with --metric NAME")

    curves = _curves(files, metric, attr)
    if not any(c.x for c in curves.values()):
        raise CliError(
            f"no result in {files.root} has both {metric!r} and {attr!r}; choose them with "
            "--metric and --resource-attr"
        )
    figure, axes = pyplot.subplots(figsize=(10, 6))
    colors = pyplot.get_cmap("tab20")
    marks: dict[str, list[tuple[float, float]]] = {
        "paused": [], "resumed": [], "stopped": [], "failed": []
    }
    for index, (trial_id, curve) in enumerate(sorted(curves.items())):
        if not curve.x:
            continue
        axes.plot(curve.x, curve.y, "-", color=colors(index % 20), lw=1.2, alpha=0.85,
                  marker=".", ms=3, label=f"trial {trial_id}" if len(curves) <= 12 else None)
        for entry in iter_jsonl(files.trial(trial_id).status_history):
            status, when = entry.get("status"), float(entry.get("time", 0.0))
            point = curve.at_time(when)
            if point is None:
                continue
            if status == Status.paused:
                marks["paused"].append(point)
            elif status == Status.in_progress and entry.get("reason") == "resume_trial":
                marks["resumed"].append(point)
            elif status == Status.stopped:
                marks["stopped"].append(point)
            elif status == Status.failed:
                marks["failed"].append(point)
    style = {
        "paused": dict(marker="s", mfc="none", mec="orange", ms=9, mew=1.5),
        "resumed": dict(marker="^", color="green", ms=7),
        "stopped": dict(marker="x", color="purple", ms=8, mew=2),
        "failed": dict(marker="X", color="red", ms=8),
    }
    handles = []
    scheduler = options.get("scheduler")
    for name, points in marks.items():
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], ls="none",
                      zorder=3, **style[name])
            label = "resumed (promoted)" if name == "resumed" and scheduler == "asha" else name
            handles.append(lines_module.Line2D([], [], ls="none", label=label, **style[name]))
    copies = 0
    for event in iter_jsonl(files.events):
        if event.get("event") != "copy":
            continue
        source = curves.get(int(event.get("source", -1)))
        target = curves.get(int(event.get("trial", -1)))
        if source is None or target is None:
            continue
        start = source.at_time(float(event.get("time", 0.0)))
        end = target.after_time(float(event.get("time", 0.0)))
        if start is None or end is None:
            continue
        copies += 1
        axes.annotate("", xy=end, xytext=start, zorder=2,
                      arrowprops=dict(arrowstyle="->", ls=":", color="black", lw=1))
    if copies:
        handles.append(lines_module.Line2D([], [], ls=":", color="black",
                                           label="checkpoint copied (PBT)"))
    if scheduler == "asha" and all(x > 0 for c in curves.values() for x in c.x):
        # Rungs grow geometrically: a log axis spaces them evenly.
        axes.set_xscale("log")
    axes.set_xlabel(attr)
    axes.set_ylabel(metric)
    axes.set_title(f"{files.root.name}" + (f" ({scheduler})" if scheduler else ""))
    axes.grid(alpha=0.3)
    trial_handles, _labels = axes.get_legend_handles_labels()
    axes.legend(handles=[*handles, *trial_handles], fontsize=8, loc="best")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    pyplot.close(figure)
    print(f"wrote {output} ({len(curves)} trials, {sum(map(len, marks.values()))} marks, "
          f"{copies} checkpoint copies)")
    return 0


def _curves(files: Any, metric: str, attr: str) -> dict[int, _Curve]:
    """Delivered results from the tune's results.jsonl, else each trial's own file."""
    per_trial: dict[int, list[dict[str, Any]]] = {}
    if files.results.exists():
        for row in iter_jsonl(files.results):
            trial_id = row.get("trial_id")
            if isinstance(trial_id, int):
                per_trial.setdefault(trial_id, []).append(row)
    else:
        for trial_id in trial_ids_on_disk(files.root):
            per_trial[trial_id] = list(iter_jsonl(files.trial(trial_id).results))
    return {t: _Curve(results, metric, attr) for t, results in per_trial.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

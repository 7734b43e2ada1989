"""``status``, ``logs`` and ``stop``: look at an experiment from any process.

They read only files the driver writes whole (atomic replaces, or appended
lines of which an unfinished last one is ignored), so they need no lock and
work while a tune runs, after it ended, or after it crashed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import orjson

from .. import Status
from .._paths import ExperimentPaths
from .._types import FINISHED_STATUSES
from ..core._lock import experiment_is_held
from ._common import (
    EXIT_FAILED,
    CliError,
    TunerPaths,
    format_duration,
    format_value,
    iter_jsonl,
    read_json,
    trial_ids_on_disk,
)
from ._control import wait_for_answer, write_stop_request
from ._state import load_state

_FOLLOW_POLL_SECONDS = 0.2
_READ_CHUNK = 1 << 20


def _experiment(path_text: str) -> TunerPaths:
    root = Path(path_text).expanduser().absolute()
    if not root.is_dir():
        raise CliError(f"experiment folder {path_text!r} does not exist")
    files = TunerPaths(root)
    metadata = ExperimentPaths(root).metadata
    if not metadata.exists() and not files.state.exists() and not trial_ids_on_disk(root):
        raise CliError(
            f"{path_text!r} is not an experiment folder (no {metadata.name}, {files.state.name} "
            "or trial folders); give the folder `localbackend tune` printed"
        )
    return files


def tune_state(files: TunerPaths) -> tuple[Optional[dict[str, Any]], str]:
    """The saved tuner state and a word for where the tune stands."""
    tuner = load_state(files)
    if tuner is None:
        return None, "no tune"
    state = str(tuner.get("state", "unknown"))
    if state == "running" and not experiment_is_held(files.root):
        state = "crashed"
    return tuner, state


# -- status --------------------------------------------------------------------


def trial_rows(files: TunerPaths, tuner: Optional[dict[str, Any]], metric: Optional[str],
               resource_attr: Optional[str]) -> list[dict[str, Any]]:
    mode = (tuner or {}).get("options", {}).get("mode", "min")
    labels = (tuner or {}).get("labels", {})
    # What `localbackend tune` was given of each trial; a result a paused run
    # wrote after its pause is in its results file, but never given to it.
    views = (tuner or {}).get("trials", {})
    now = time.time()
    rows = []
    for trial_id in trial_ids_on_disk(files.root):
        paths = files.trial(trial_id)
        history = list(iter_jsonl(paths.status_history))
        status = str(history[-1].get("status")) if history else "Pending"
        runtime = 0.0
        started: Optional[float] = None
        for entry in history:
            when = float(entry.get("time", now))
            if started is not None:
                runtime += when - started
                started = None
            if entry.get("status") == Status.in_progress:
                started = when
        if started is not None:
            runtime += now - started
        count, last, best = _results_written(paths.results, metric, mode)
        resource = (last or {}).get(resource_attr) if resource_attr else None
        last_value = (last or {}).get(metric) if metric else None
        view = views.get(str(trial_id))
        if isinstance(view, dict) and metric:
            count, best = int(view.get("results") or 0), view.get("best_value")
            resource, last_value = view.get("last_resource"), view.get("last_value")
        rows.append(
            {
                "trial_id": trial_id,
                "status": status,
                "runs": sum(1 for e in history if e.get("status") == Status.in_progress),
                "pauses": sum(1 for e in history if e.get("status") == Status.paused),
                "label": labels.get(str(trial_id), ""),
                "results": count,
                "resource": resource,
                "last": last_value,
                "best": best,
                "last_result": last,
                "runtime": runtime,
                "config": read_json(paths.config) or {},
                "failure_reason": next(
                    (e["failure"] for e in reversed(history) if e.get("failure")), None
                ) if status == Status.failed else None,
                "history": history,
            }
        )
    return rows


def _results_written(
    path: Path, metric: Optional[str], mode: str
) -> tuple[int, Optional[dict[str, Any]], Optional[float]]:
    """How many results a trial's results file holds, the last one, and the best ``metric``."""
    results = list(iter_jsonl(path))
    best: Optional[float] = None
    for result in results:
        value = result.get(metric) if metric else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            if best is None or (number < best if mode == "min" else number > best):
                best = number
    return len(results), results[-1] if results else None, best


def status(args: argparse.Namespace) -> int:
    files = _experiment(args.experiment_dir)
    tuner, state = tune_state(files)
    options = (tuner or {}).get("options", {})
    metric = options.get("metric")
    attr = options.get("resource_attr")
    rows = trial_rows(files, tuner, metric, attr)
    best = read_json(files.best)
    if args.json:
        shown = {
            "experiment_dir": str(files.root),
            "state": state,
            "options": options or None,
            "best": best,
            "trials": rows,
        }
        sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    out = [f"experiment: {files.root}"]
    if tuner is not None:
        driver = tuner.get("driver") or {}
        where = {
            "running": f"running (driver pid {driver.get('pid')})",
            "crashed": f"crashed: its driver (pid {driver.get('pid')}) is gone; carry on with "
            f"`localbackend tune --resume {files.root}`",
            "interrupted": f"interrupted; carry on with `localbackend tune --resume {files.root}`",
            "budget": "ended at its time budget; `localbackend tune --resume DIR --max-time N` "
            "carries on",
        }.get(state, state)
        out.append(
            f"tune: {where}; {options.get('scheduler')} on {options.get('metric')!r} "
            f"({options.get('mode')}), elapsed {format_duration(tuner.get('elapsed'))}"
        )
    if isinstance(best, dict):
        resource = best.get("resource")
        at = f" at {attr} {format_value(resource)}" if resource is not None else ""
        value = format_value(best.get("value"))
        out.append(f"best: trial {best.get('trial_id')} {metric} {value}{at}")
    label_header = (tuner or {}).get("scheduler_label") or ""
    header = ["trial", "status", "runs"]
    if label_header:
        header.append(label_header)
    header += [attr or "results", f"last {metric}" if metric else "last result"]
    if metric:
        header.append(f"best {metric}")
    header += ["runtime", "config"]
    table = [header]
    for row in rows:
        cells = [str(row["trial_id"]), row["status"], str(row["runs"])]
        if label_header:
            cells.append(row["label"] or "-")
        cells.append(_cell(row["resource"]) if attr else str(row["results"]))
        if metric:
            cells += [_cell(row["last"]), _cell(row["best"])]
        else:
            last = row["last_result"] or {}
            cells.append(" ".join(f"{k}={format_value(v)}" for k, v in last.items()
                                  if not k.startswith("st_")) or "-")
        cells.append(format_duration(row["runtime"]))
        cells.append(" ".join(f"{k}={format_value(v)}" for k, v in row["config"].items()))
        table.append(cells)
    out.append(_format_table(table))
    failed = [row for row in rows if row["failure_reason"]]
    if failed:
        out.append("failures:")
        out += [f"  trial {row['trial_id']}: {row['failure_reason']}" for row in failed]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    shown_counts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.append(f"{len(rows)} trials: {shown_counts or 'none'}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _cell(value: Any) -> str:
    return "-" if value is None else format_value(value)


def _format_table(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = []
    for row in table:
        padded = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


# -- logs ----------------------------------------------------------------------


def logs(args: argparse.Namespace) -> int:
    files = _experiment(args.experiment_dir)
    paths = files.trial(args.trial)
    if not paths.root.is_dir():
        known = trial_ids_on_disk(files.root)
        span = f"{known[0]}..{known[-1]}" if known else "none yet"
        raise CliError(f"trial {args.trial} not found in {files.root} (trials: {span})")
    path = paths.stderr if args.stderr else paths.stdout
    out = sys.stdout.buffer
    offset = 0
    while True:
        # Judge the end before reading, so output written just before it is not missed.
        ended = args.follow and _trial_over(files, args.trial)
        offset = _copy_from(path, offset, out)
        if not args.follow or ended:
            return 0
        time.sleep(_FOLLOW_POLL_SECONDS)


def _copy_from(path: Path, offset: int, out: Any) -> int:
    try:
        with open(path, "rb") as source:
            source.seek(offset)
            while True:
                chunk = source.read(_READ_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return offset
    out.flush()
    return offset


def _trial_over(files: TunerPaths, trial_id: int) -> bool:
    """Final status, or a tune that is no longer running to resume it."""
    history = list(iter_jsonl(files.trial(trial_id).status_history))
    status = history[-1].get("status") if history else None
    if status in FINISHED_STATUSES:
        return True
    tuner, state = tune_state(files)
    if tuner is not None:
        return state != "running"
    # A folder of `run`, `check` or a script's own LocalBackend: over when no
    # driver holds it and no keeper still runs the trial (detach mode).
    return not experiment_is_held(files.root) and not _keeper_alive(
        files.trial(trial_id).run_record
    )


def _keeper_alive(run_record: Path) -> bool:
    from ..launchers.local._launcher import process_matches

    run = read_json(run_record)
    if not isinstance(run, dict) or not run.get("keeper"):
        return False
    return process_matches(int(run["keeper"]), float(run.get("keeper_create_time") or 0.0))


# -- stop ----------------------------------------------------------------------


def stop(args: argparse.Namespace) -> int:
    files = _experiment(args.experiment_dir)
    tuner, state = tune_state(files)
    if tuner is None:
        raise CliError(
            f"{files.root} holds no tune (no {files.state.name}); stop works on the folders of "
            "`localbackend tune`"
        )
    if state != "running":
        raise CliError(f"no tune is running on {files.root} (it is {state}); nothing to stop",
                       exit_code=EXIT_FAILED)
    driver = tuner.get("driver")
    trials = sorted(set(args.trials)) or None
    answer_path = write_stop_request(files, trials)
    what = f"trials {', '.join(map(str, trials))}" if trials else "the whole run"
    if args.wait <= 0:
        print(f"asked the tune (pid {driver and driver.get('pid')}) to stop {what}")
        return 0
    def running() -> bool:
        return experiment_is_held(files.root)

    answer = wait_for_answer(answer_path, args.wait, running)
    if answer is None:
        print(
            f"the tune has not answered within {args.wait:g}s; it will stop {what} when it next "
            "wakes", file=sys.stderr,
        )
        return EXIT_FAILED
    if trials is None:
        deadline = time.monotonic() + args.wait
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        ended = "and has exited" if not running() else "and is ending its trials"
        print(f"the tune stopped the whole run {ended}")
        return 0
    code = 0
    if answer.get("stopped"):
        print("stopped trials " + ", ".join(map(str, answer["stopped"])))
    if answer.get("already_finished"):
        print("already finished: trials " + ", ".join(map(str, answer["already_finished"])))
    if answer.get("unknown"):
        print("no such trials: " + ", ".join(map(str, answer["unknown"])), file=sys.stderr)
        code = EXIT_FAILED
    if answer.get("error"):
        print(f"the tune refused the request: {answer['error']}", file=sys.stderr)
        code = EXIT_FAILED
    return code


__all__ = ["logs", "status", "stop", "trial_rows", "tune_state"]

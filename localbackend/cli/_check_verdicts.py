"""The verdicts of ``localbackend check``: what each check concludes, and how to fix it.

Each ``judge_*`` function reads what the trials of ``_check`` delivered
(see that module for the three trials A, B and C) and returns a
:class:`Verdict`: PASS, FAIL or SKIP, a detail that says what was seen, and
for a failure a fix in terms of the script's own code and options. They
drive nothing: the same delivered results always give the same verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import Status
from .._errors import LocalBackendError
from .._paths import TrialPaths
from ._common import format_duration, format_value

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
# The checks that need a paused trial, after the reporting check.
LATER_CHECKS = ("sigterm", "resume", "exact-resume", "copied-checkpoint")
_CHECKPOINT_HOW = (
    "save the state after each result with `with localbackend.checkpoint.save() as folder:` "
    "(it writes under $LOCALBACKEND_CHECKPOINT_DIR, also passed as --st_checkpoint_dir)"
)
_REPORT_HOW = (
    "call localbackend.report({metric}=..., {attr}=...) after each {attr} (or print "
    "'[tune-metric]: {{json}}' lines on stdout)"
)


@dataclass
class Verdict:
    """One line of the report: the check, its outcome, what was seen, and the fix."""

    check: str
    outcome: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class TrialRun:
    """What one checked trial delivered, and where it stands."""

    results: list[dict[str, Any]]
    status: str
    trial: Any


def more_work(
    params: list[str], goal: str, how: str = "give it more work or slow it down"
) -> str:
    """How to make the checked script run longer, in terms of its own options."""
    if params:
        given = " ".join(f"-p {param}" for param in params)
        return f"{how} through its own options (you gave {given}), so that {goal}"
    return f"{how} through its own options, passed with -p NAME=VALUE, so that {goal}"


def judge_reporting(
    run: TrialRun, entrypoint: Path, metric: str, attr: str, params: list[str]
) -> Verdict:
    """Trial A, run uninterrupted: does it report the metric with a rising resource?"""
    results, status, trial = run.results, run.status, run.trial
    report_how = _REPORT_HOW.format(metric=metric, attr=attr)
    if status == Status.failed:
        return Verdict(
            "reporting", FAIL,
            f"the script failed ({ending(trial)}): {_last_line(trial.stderr_tail)}",
            "run it alone to see why: localbackend run "
            + " ".join([str(entrypoint), *(f"-p {p}" for p in params)]),
        )
    rejected = rejected_line(trial)
    if rejected is not None:
        number, text = rejected
        return Verdict(
            "reporting", FAIL,
            f"line {number} of its results file is not a JSON object, so it was skipped: "
            f"{text!r}",
            "write each result as one JSON object per line; NaN and Infinity are not JSON, so "
            "write null for a metric that has no value (localbackend.report checks this)",
        )
    if not results:
        return Verdict("reporting", FAIL, "the script reported no result", report_how)
    missing = [r for r in results if metric not in r]
    if missing:
        names = sorted(k for k in missing[0] if not k.startswith("st_"))
        return Verdict(
            "reporting", FAIL,
            f"{metric!r} is missing from {len(missing)} of {len(results)} results (one has: "
            f"{', '.join(names) or 'nothing'})",
            f"report {metric} in every result, or pass --metric with a name it reports",
        )
    if any(not _number(r[metric]) for r in results):
        return Verdict("reporting", FAIL, f"{metric!r} is not always a finite number",
                       f"report {metric} as a float")
    levels: list[Any] = [r.get(attr) for r in results]
    if any(not _number(level) for level in levels):
        return Verdict(
            "reporting", FAIL, f"{attr!r} is missing or not a number in some results",
            f"report {attr} (the progress, e.g. the epoch number) in every result, or pass "
            "--resource-attr with the name it reports",
        )
    if any(later <= earlier for earlier, later in zip(levels, levels[1:])):
        shown = ", ".join(format_value(level) for level in levels[:8])
        return Verdict(
            "reporting", FAIL, f"{attr!r} does not increase from result to result ({shown})",
            f"report {attr} growing by one per result, e.g. the number of completed epochs",
        )
    if len(results) < 2:
        return Verdict(
            "reporting", FAIL, f"only one result ({attr} {format_value(levels[0])})",
            f"a tuner needs several results to pause and compare trials: report after each "
            f"{attr}, and " + more_work(params, "it reports several", "give it more work"),
        )
    return Verdict(
        "reporting", PASS,
        f"{len(results)} results, {metric!r} in each, {attr!r} rises "
        f"{format_value(levels[0])} -> {format_value(levels[-1])}",
    )


def judge_sigterm(
    trial: Any, ended_after: float, grace: float, written_after: int, attr: str
) -> Verdict:
    """Trial B after its pause: did it exit within the grace period, and stop training?"""
    took = format_duration(ended_after)
    # One more result can be in flight when SIGTERM lands; more means it went on training.
    if written_after >= 2 and trial.exit_signal != "SIGKILL":
        return Verdict(
            "sigterm", FAIL,
            f"it ignores SIGTERM: it reported {written_after} more results after SIGTERM and "
            f"ended only {took} later ({ending(trial)}); a longer run would be killed (SIGKILL) "
            f"after the grace period ({grace:g}s)",
            "handle SIGTERM: set a flag in a handler (signal.signal(signal.SIGTERM, ...)), then "
            "save a checkpoint at the next safe point and exit",
        )
    if trial.exit_signal == "SIGKILL":
        return Verdict(
            "sigterm", FAIL,
            f"it ignores SIGTERM: still running {took} after SIGTERM, so it was killed "
            f"(SIGKILL) at the end of the grace period ({grace:g}s); every pause waits that "
            "long and loses the work since the last checkpoint",
            "handle SIGTERM: set a flag in a handler (signal.signal(signal.SIGTERM, ...)), then "
            "save a checkpoint at the next safe point and exit",
        )
    if trial.exit_signal == "SIGTERM":
        return Verdict(
            "sigterm", PASS,
            f"ended by SIGTERM {took} after it (no handler): the work since its last checkpoint "
            "is lost on each pause",
        )
    return Verdict(
        "sigterm", PASS,
        f"exited ({ending(trial)}) {took} after SIGTERM, within the grace period ({grace:g}s)",
    )


def judge_resume(
    usable: bool,
    reference: list[dict[str, Any]],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    status: str,
    trial: Any,
    trial_dir: Path,
    metric: str,
    attr: str,
    params: list[str],
) -> Verdict:
    """Trial B resumed: judge its first result's level against where it was paused.

    ``before`` holds exactly the paused run's delivered results, ``after``
    the resumed run's.
    """
    if not usable:
        return Verdict("resume", SKIP, "needs a script that passes the reporting check")
    paused_at = before[-1][attr]
    first_fresh = reference[0][attr]
    if status == Status.failed:
        return Verdict(
            "resume", FAIL,
            f"the resumed run failed ({ending(trial)}): {_last_line(trial.stderr_tail)}",
            "make the script load its latest checkpoint without error "
            "(checkpoint.latest() gives its folder)",
        )
    if not after:
        return Verdict(
            "resume", SKIP,
            f"paused after {attr} {format_value(paused_at)}, but it had finished its work before "
            "it stopped, so the resumed run had nothing to do",
            more_work(params, "the pause lands mid-run"),
        )
    first = after[0][attr]
    folder = TrialPaths(trial_dir).checkpoints
    if first <= first_fresh:
        saved = folder.is_dir() and any(folder.iterdir())
        where = (
            f"it saved checkpoints in {folder} but did not load them on start: load "
            "checkpoint.latest() at start and continue from the state in it"
            if saved
            else f"it saved nothing in its checkpoint folder ({folder}): {_CHECKPOINT_HOW}, "
            "and load checkpoint.latest() at start"
        )
        return Verdict(
            "resume", FAIL,
            f"paused after {attr} {format_value(paused_at)}, it restarted from scratch "
            f"({attr} {format_value(first)} again)",
            where,
        )
    if first <= paused_at:
        return Verdict(
            "resume", FAIL,
            f"paused after {attr} {format_value(paused_at)}, it resumed at {attr} "
            f"{format_value(first)}: the results in between are reported twice",
            "save the checkpoint before reporting the result it belongs to",
        )
    expected = _next_level(reference, paused_at, attr)
    if expected is None or first == expected:
        return Verdict(
            "resume", PASS,
            f"paused after {attr} {format_value(paused_at)}, it resumed from its checkpoint at "
            f"{attr} {format_value(first)}",
        )
    return Verdict(
        "resume", PASS,
        f"paused after {attr} {format_value(paused_at)}, it resumed from a later checkpoint "
        f"at {attr} {format_value(first)} (results it wrote after the pause were dropped)",
    )


def judge_exact_resume(
    resume: str,
    reference: list[dict[str, Any]],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    metric: str,
    attr: str,
) -> Verdict:
    """Trial B against A: does the resumed run report what an uninterrupted one does?"""
    if resume == FAIL:
        return Verdict(
            "exact-resume", FAIL,
            "the resumed run did not carry on from where it was paused (see the resume check), "
            "so it cannot report what an uninterrupted run reports",
            "fix the resume check first",
        )
    if resume != PASS:
        return Verdict("exact-resume", SKIP, "needs a script that passes the resume check")
    by_level = {r[attr]: r[metric] for r in reference}
    for result in before:
        expected = by_level.get(result[attr])
        if expected is not None and not _same(expected, result[metric]):
            return Verdict(
                "exact-resume", FAIL,
                f"two uninterrupted runs of the same config differ already at {attr} "
                f"{format_value(result[attr])} ({metric} {format_value(expected)} vs "
                f"{format_value(result[metric])}): the script is not deterministic",
                "seed every random generator from the config (e.g. a --seed option), so that "
                "a resumed run can be compared",
            )
    compared = [r for r in after if r[attr] in by_level]
    for result in compared:
        expected = by_level[result[attr]]
        if not _same(expected, result[metric]):
            return Verdict(
                "exact-resume", FAIL,
                f"at {attr} {format_value(result[attr])} the resumed run reports {metric} "
                f"{format_value(result[metric])}, an uninterrupted run {format_value(expected)}: "
                "RNG or optimizer state is not checkpointed",
                "save everything that shapes later results with the model (random generator "
                "state, optimizer state, data order and position) and restore it on start",
            )
    if not compared:
        return Verdict("exact-resume", SKIP, f"no {attr} of the resumed run to compare")
    levels = f"{format_value(compared[0][attr])}..{format_value(compared[-1][attr])}"
    return Verdict(
        "exact-resume", PASS,
        f"the resumed run reports the same {metric} as an uninterrupted run at {attr} {levels}",
    )


def judge_copied_checkpoint(
    usable: bool,
    copy_error: Optional[LocalBackendError],
    copy: Optional[TrialRun],
    b: int,
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    source_dir: Path,
    attr: str,
    params: list[str],
) -> Verdict:
    """Trial C, started from B's checkpoint: does it carry on from there?"""
    if not usable:
        return Verdict("copied-checkpoint", SKIP, "needs a script that passes the reporting check")
    if copy_error is not None or copy is None:
        folder = TrialPaths(source_dir).checkpoints
        empty = not (folder.is_dir() and any(folder.iterdir()))
        problem = f"{folder} is empty" if empty else str(copy_error)
        return Verdict(
            "copied-checkpoint", FAIL,
            f"trial {b} had no checkpoint to copy when it was paused ({problem})",
            f"{_CHECKPOINT_HOW}; a trial started from a copy finds it in the same place",
        )
    results, status, trial = copy.results, copy.status, copy.trial
    if status == Status.failed:
        return Verdict(
            "copied-checkpoint", FAIL,
            f"started from trial {b}'s checkpoint, it failed ({ending(trial)}): "
            f"{_last_line(trial.stderr_tail)}",
            "make the script load a checkpoint it did not write itself, from "
            "checkpoint.latest()",
        )
    if not results:
        return Verdict(
            "copied-checkpoint", SKIP,
            f"started from trial {b}'s checkpoint, it had nothing left to do",
            more_work(params, "the pause lands mid-run"),
        )
    first = results[0][attr]
    paused_at = before[-1][attr]
    if first <= reference[0][attr] or (after and first < after[0][attr]):
        return Verdict(
            "copied-checkpoint", FAIL,
            f"given trial {b}'s checkpoint (after {attr} {format_value(paused_at)}), it started "
            f"from scratch at {attr} {format_value(first)}",
            "load checkpoint.latest() at start: a copied checkpoint arrives in the trial's "
            f"own checkpoint folder (like {TrialPaths(source_dir).checkpoints})",
        )
    return Verdict(
        "copied-checkpoint", PASS,
        f"given trial {b}'s checkpoint, it started at {attr} {format_value(first)}, where "
        f"trial {b} left off",
    )


def _next_level(reference: list[dict[str, Any]], level: Any, attr: str) -> Any:
    """The resource an uninterrupted run reports after ``level``, if any."""
    return next((r[attr] for r in reference if r[attr] > level), None)


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def rejected_line(trial: Any) -> Optional[tuple[int, str]]:
    """The first whole line of the trial's results file that is not a JSON object, if any."""
    import orjson

    try:
        with open(TrialPaths(trial.trial_dir).results, "rb") as source:
            for number, line in enumerate(source, start=1):
                if not line.endswith(b"\n"):
                    return None  # still being written
                try:
                    if isinstance(orjson.loads(line), dict):
                        continue
                except orjson.JSONDecodeError:
                    pass
                return number, line.decode("utf-8", "replace").strip()[:120]
    except OSError:
        return None
    return None


def ending(trial: Any) -> str:
    """How a trial ended, in words: its exit code or the signal that killed it."""
    if trial.exit_code is not None:
        return f"exit code {trial.exit_code}"
    if trial.exit_signal:
        return f"killed by {trial.exit_signal}"
    return "ended"


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "nothing on stderr"


__all__ = [
    "FAIL",
    "LATER_CHECKS",
    "PASS",
    "SKIP",
    "TrialRun",
    "Verdict",
    "ending",
    "judge_copied_checkpoint",
    "judge_exact_resume",
    "judge_reporting",
    "judge_resume",
    "judge_sigterm",
    "more_work",
]

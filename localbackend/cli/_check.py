"""``localbackend check``: does a trial script keep the protocol a tuner relies on?

Three trials of the same config run, two at a time:

* A runs uninterrupted: the reference, and the reporting check.
* B is paused (SIGTERM) after its first result: the SIGTERM check. While
  it is paused, C starts from a copy of B's checkpoint; then B resumes.
  B's resumed results give the resume and exact-resume checks, C's the
  copied-checkpoint check.

B's results are split by run at the resume: what was delivered until the
paused run's processes were gone is the paused run's (results written
before the pause may arrive while it winds down), and only what comes after
is judged as the resumed run.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .. import LocalBackend, Status
from .._errors import CheckpointCopyError, LocalBackendError
from .._paths import TrialPaths
from .._types import FINISHED_STATUSES
from ._common import CliError, format_duration, format_value
from ._search_space import build_search_space

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
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
    check: str
    outcome: str
    detail: str
    fix: str = ""


class _Trials:
    """Drives the backend and keeps every trial's delivered results."""

    def __init__(self, backend: LocalBackend, timeout: float) -> None:
        self.backend = backend
        self.timeout = timeout
        self.results: dict[int, list[dict[str, Any]]] = {}
        self.status: dict[int, str] = {}
        self.trial: dict[int, Any] = {}

    def start(self, config: dict[str, Any], checkpoint_trial_id: Optional[int] = None) -> int:
        trial = self.backend.start_trial(config, checkpoint_trial_id=checkpoint_trial_id)
        self.results[trial.trial_id] = []
        self.status[trial.trial_id] = Status.in_progress
        self.trial[trial.trial_id] = trial
        return trial.trial_id

    def pump(self, timeout: float) -> None:
        ids = list(self.results)
        self.backend.wait(timeout=timeout)
        statuses, new = self.backend.fetch_status_results(ids)
        for trial_id, result in new:
            self.results[trial_id].append(result)
        for trial_id, (trial, status) in statuses.items():
            self.status[trial_id] = status
            self.trial[trial_id] = trial

    def busy(self, trial_id: int) -> bool:
        return any(t == trial_id for t, _ in self.backend.busy_trial_ids())

    def run_until(self, condition: Callable[[], bool], what: str, fast: bool = False) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            if time.monotonic() > deadline:
                raise CliError(
                    f"the script took longer than --timeout {self.timeout:g}s ({what}); give "
                    "it less work with -p, or raise --timeout",
                    exit_code=1,
                )
            self.pump(0.02 if fast else 0.2)

    def done(self, *trial_ids: int) -> bool:
        return all(
            self.status[t] in FINISHED_STATUSES and not self.busy(t)
            for t in trial_ids
            if t is not None
        )


def run_check(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        raise CliError(f"trial script {args.script!r} does not exist or is not a file")
    if args.grace_period < 0 or args.timeout <= 0:
        raise CliError("--grace-period must be >= 0 and --timeout > 0 seconds")
    config = build_search_space(None, args.param).sample(random.Random(args.seed))
    backend = LocalBackend(
        script, experiment_dir=args.experiment_dir, grace_period=args.grace_period
    )
    shown = " ".join(f"{k}={format_value(v)}" for k, v in config.items()) or "no config"
    print(f"check {args.script} {shown}\nexperiment folder: {backend.experiment_dir}", flush=True)
    try:
        verdicts = _run_checks(backend, config, args)
    finally:
        backend.close()
    width = max(len(v.check) for v in verdicts)
    for verdict in verdicts:
        print(f"  {verdict.outcome}  {verdict.check.ljust(width)}  {verdict.detail}")
        if verdict.fix:
            print(f"  {'':4}  {''.ljust(width)}  fix: {verdict.fix}")
    counts = {o: sum(v.outcome == o for v in verdicts) for o in (PASS, FAIL, SKIP)}
    print(
        f"{len(verdicts)} checks: {counts[PASS]} passed, {counts[FAIL]} failed, "
        f"{counts[SKIP]} skipped"
    )
    return 1 if counts[FAIL] else 0


def _run_checks(
    backend: LocalBackend, config: dict[str, Any], args: argparse.Namespace
) -> list[Verdict]:
    metric, attr, grace = args.metric, args.resource_attr, args.grace_period
    params: list[str] = list(args.param)
    trials = _Trials(backend, args.timeout)
    a = trials.start(config)
    b = trials.start(config)
    trials.run_until(lambda: bool(trials.results[b]) or trials.done(b), "waiting for a result")
    not_paused: Optional[str] = None
    if trials.status[b] != Status.in_progress:
        not_paused = "the trial ended before it could be paused"
    paused_run: list[dict[str, Any]] = []
    ended_after = 0.0
    copy_error: Optional[LocalBackendError] = None
    c: Optional[int] = None
    written_after = 0
    b_pause_trial = trials.trial[b]
    if not_paused is None:
        asked = time.monotonic()
        backend.pause_trial(b)
        trials.run_until(lambda: not trials.busy(b), "waiting for the paused trial", fast=True)
        ended_after = time.monotonic() - asked
        # Once its processes are gone, one fetch delivers all that the paused
        # run wrote before the pause, and nothing it wrote after: from here
        # on, every result of trial b is the resumed run's.
        trials.pump(0)
        b_pause_trial = trials.trial[b]
        if trials.status[b] in FINISHED_STATUSES:
            not_paused = (
                f"the trial ended ({_ending(b_pause_trial)}) before the pause reached it (it "
                "finished between the last read of its status and pause_trial), so nothing was "
                "paused"
            )
    if not_paused is None:
        paused_run = list(trials.results[b])
        # Lines on disk, delivered or not: what the trial did after it was told to stop.
        written_after = _lines(TrialPaths(backend.trial_dir(b)).results) - len(paused_run)
        try:
            c = trials.start(config, checkpoint_trial_id=b)
        except CheckpointCopyError as err:
            copy_error = err
        backend.resume_trial(b)
        trials.status[b] = Status.in_progress
    trials.run_until(
        lambda: trials.done(a, b) and (c is None or trials.done(c)), "waiting for the trials"
    )
    resumed_run = trials.results[b][len(paused_run) :]

    reference = trials.results[a]
    verdicts = [_reporting(trials, a, metric, attr, params)]
    usable = verdicts[0].outcome == PASS
    if not_paused is not None:
        fix = _more_work(params, "it still runs after its first result")
        return [*verdicts, *(Verdict(n, SKIP, not_paused, fix) for n in _LATER_CHECKS)]
    verdicts.append(_sigterm(b_pause_trial, ended_after, grace, written_after, attr))
    resume = _resume(
        usable, reference, paused_run, resumed_run, trials.status[b], trials.trial[b],
        backend.trial_dir(b), metric, attr, params,
    )
    if resume.outcome == SKIP and verdicts[-1].outcome == FAIL:
        resume = Verdict(
            "resume", SKIP, "it went on to the end after SIGTERM, so nothing was left to resume",
            "fix the sigterm check first",
        )
    verdicts.append(resume)
    verdicts.append(_exact(resume.outcome, reference, paused_run, resumed_run, metric, attr))
    verdicts.append(
        _copied(
            usable, copy_error, c, trials, b, paused_run, resumed_run,
            reference, backend.trial_dir(b), attr, params,
        )
    )
    return verdicts


def _more_work(
    params: list[str], goal: str, how: str = "give it more work or slow it down"
) -> str:
    """How to make the checked script run longer, in terms of its own options."""
    if params:
        given = " ".join(f"-p {param}" for param in params)
        return f"{how} through its own options (you gave {given}), so that {goal}"
    return f"{how} through its own options, passed with -p NAME=VALUE, so that {goal}"


_LATER_CHECKS = ("sigterm", "resume", "exact-resume", "copied-checkpoint")


def _reporting(trials: _Trials, a: int, metric: str, attr: str, params: list[str]) -> Verdict:
    results, status, trial = trials.results[a], trials.status[a], trials.trial[a]
    report_how = _REPORT_HOW.format(metric=metric, attr=attr)
    if status == Status.failed:
        return Verdict(
            "reporting", FAIL,
            f"the script failed ({_ending(trial)}): {_last_line(trial.stderr_tail)}",
            "run it alone to see why: localbackend run "
            + " ".join([str(trials.backend.entrypoint_path()), *(f"-p {p}" for p in params)]),
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
            f"{attr}, and " + _more_work(params, "it reports several", "give it more work"),
        )
    return Verdict(
        "reporting", PASS,
        f"{len(results)} results, {metric!r} in each, {attr!r} rises "
        f"{format_value(levels[0])} -> {format_value(levels[-1])}",
    )


def _sigterm(
    trial: Any, ended_after: float, grace: float, written_after: int, attr: str
) -> Verdict:
    took = format_duration(ended_after)
    # One more result can be in flight when SIGTERM lands; more means it went on training.
    if written_after >= 2 and trial.exit_signal != "SIGKILL":
        return Verdict(
            "sigterm", FAIL,
            f"it ignores SIGTERM: it reported {written_after} more results after SIGTERM and "
            f"ended only {took} later ({_ending(trial)}); a longer run would be killed (SIGKILL) "
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
        f"exited ({_ending(trial)}) {took} after SIGTERM, within the grace period ({grace:g}s)",
    )


def _resume(
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
    """Judge the resumed run by its first result's level against where it was paused.

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
            f"the resumed run failed ({_ending(trial)}): {_last_line(trial.stderr_tail)}",
            "make the script load its latest checkpoint without error "
            "(checkpoint.latest() gives its folder)",
        )
    if not after:
        return Verdict(
            "resume", SKIP,
            f"paused after {attr} {format_value(paused_at)}, but it had finished its work before "
            "it stopped, so the resumed run had nothing to do",
            _more_work(params, "the pause lands mid-run"),
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


def _exact(
    resume: str,
    reference: list[dict[str, Any]],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    metric: str,
    attr: str,
) -> Verdict:
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


def _copied(
    usable: bool,
    copy_error: Optional[LocalBackendError],
    c: Optional[int],
    trials: _Trials,
    b: int,
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    source_dir: Path,
    attr: str,
    params: list[str],
) -> Verdict:
    if not usable:
        return Verdict("copied-checkpoint", SKIP, "needs a script that passes the reporting check")
    if copy_error is not None or c is None:
        folder = TrialPaths(source_dir).checkpoints
        empty = not (folder.is_dir() and any(folder.iterdir()))
        problem = f"{folder} is empty" if empty else str(copy_error)
        return Verdict(
            "copied-checkpoint", FAIL,
            f"trial {b} had no checkpoint to copy when it was paused ({problem})",
            f"{_CHECKPOINT_HOW}; a trial started from a copy finds it in the same place",
        )
    results, status, trial = trials.results[c], trials.status[c], trials.trial[c]
    if status == Status.failed:
        return Verdict(
            "copied-checkpoint", FAIL,
            f"started from trial {b}'s checkpoint, it failed ({_ending(trial)}): "
            f"{_last_line(trial.stderr_tail)}",
            "make the script load a checkpoint it did not write itself, from "
            "checkpoint.latest()",
        )
    if not results:
        return Verdict(
            "copied-checkpoint", SKIP,
            f"started from trial {b}'s checkpoint, it had nothing left to do",
            _more_work(params, "the pause lands mid-run"),
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


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as source:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: source.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def _ending(trial: Any) -> str:
    if trial.exit_code is not None:
        return f"exit code {trial.exit_code}"
    if trial.exit_signal:
        return f"killed by {trial.exit_signal}"
    return "ended"


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "nothing on stderr"

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

This module drives the trials and prints the report; what each check
concludes from the delivered results is ``_check_verdicts``'s.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .. import LocalBackend, Status
from .._errors import CheckpointCopyError, LocalBackendError
from .._paths import TrialPaths
from .._protocol import ENV_WARM_IMPORTS
from .._types import FINISHED_STATUSES
from ._check_verdicts import (
    FAIL,
    LATER_CHECKS,
    PASS,
    SKIP,
    TrialRun,
    Verdict,
    ending,
    judge_copied_checkpoint,
    judge_exact_resume,
    judge_reporting,
    judge_resume,
    judge_sigterm,
    more_work,
    rejected_line,
)
from ._check_warm import judge_warm_start, preload_names
from ._common import CliError, format_value
from ._search_space import build_search_space


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

    def run(self, trial_id: int) -> TrialRun:
        """What the trial delivered so far, and where it stands, for the verdicts."""
        return TrialRun(self.results[trial_id], self.status[trial_id], self.trial[trial_id])

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
    preload = preload_names(args.preload)
    # Where the warm runs say what their script imported after the fork.
    imports = Path(tempfile.mkdtemp(prefix="localbackend-check-")) if preload else None
    try:
        backend = LocalBackend(
            script, experiment_dir=args.experiment_dir, grace_period=args.grace_period,
            preload=preload, env={ENV_WARM_IMPORTS: str(imports)} if imports else None,
        )
    except BaseException:
        _remove(imports)
        raise
    try:
        shown = " ".join(f"{k}={format_value(v)}" for k, v in config.items()) or "no config"
        print(f"check {args.script} {shown}\nexperiment folder: {backend.experiment_dir}",
              flush=True)
        verdicts = _run_checks(backend, config, args)
        if preload is not None:  # trial A ran warm: compare it with a cold run
            verdicts.append(judge_warm_start(backend, config, args, imports=imports))
    finally:
        try:
            backend.close()
        finally:
            _remove(imports)
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


def _remove(folder: Optional[Path]) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


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
                f"the trial ended ({ending(b_pause_trial)}) before the pause reached it (it "
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
    if (
        not_paused is None and written_after == 0 and b_pause_trial.exit_code == 0
        and trials.status[a] == Status.completed and len(paused_run) >= len(reference)
    ):
        # Its exit 0 after SIGTERM says nothing of a handler: it had done all it
        # does before the pause, so it ended between the last read and the pause.
        not_paused = (
            f"the paused run had reported all {len(reference)} results of an uninterrupted "
            f"run before the pause reached it, and then ended ({ending(b_pause_trial)}), so "
            "nothing was paused"
        )
    entrypoint = backend.entrypoint_path()
    verdicts = [judge_reporting(trials.run(a), entrypoint, metric, attr, params)]
    usable = verdicts[0].outcome == PASS
    if not_paused is not None and rejected_line(trials.trial[b]) is not None:
        # Never paused since what it wrote was no result, not for want of work.
        needs = "needs a script that passes the reporting check"
        return [*verdicts, *(Verdict(n, SKIP, needs, "fix the reporting check first")
                             for n in LATER_CHECKS)]
    if not_paused is not None:
        fix = more_work(params, "it still runs after its first result")
        return [*verdicts, *(Verdict(n, SKIP, not_paused, fix) for n in LATER_CHECKS)]
    verdicts.append(judge_sigterm(b_pause_trial, ended_after, grace, written_after, attr))
    resume = judge_resume(
        usable, reference, paused_run, resumed_run, trials.status[b], trials.trial[b],
        backend.trial_dir(b), metric, attr, params,
    )
    if resume.outcome == SKIP and verdicts[-1].outcome == FAIL:
        resume = Verdict(
            "resume", SKIP, "it went on to the end after SIGTERM, so nothing was left to resume",
            "fix the sigterm check first",
        )
    verdicts.append(resume)
    verdicts.append(
        judge_exact_resume(resume.outcome, reference, paused_run, resumed_run, metric, attr)
    )
    verdicts.append(
        judge_copied_checkpoint(
            usable, copy_error, None if c is None else trials.run(c), b, paused_run, resumed_run,
            reference, backend.trial_dir(b), attr, params,
        )
    )
    return verdicts


def _lines(path: Path) -> int:
    """Newlines in a file: the results a trial wrote, delivered or not."""
    try:
        with open(path, "rb") as source:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: source.read(1 << 16), b""))
    except FileNotFoundError:
        return 0



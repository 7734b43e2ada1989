"""Chaos soak: a seeded random scheduler drives many short trials, then invariants are checked.

The scheduler starts, pauses, resumes, stops and copies checkpoints at
random, and some trials crash on their own. Afterwards:

* no process, zombie or file descriptor of the run is left;
* every result a trial wrote was delivered exactly once and in order, except
  results written after the trial was paused or stopped, which are never
  delivered;
* every trial's status history is a valid path through the state machine.

Run the large version with ``python -m bench.chaos --trials 3000``; the test
suite runs a small one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localbackend import LocalBackend, Status, checkpoint

TRIAL = Path(__file__).resolve().parent / "chaos_trial.py"

ALLOWED = {
    None: {Status.in_progress},
    Status.in_progress: {Status.paused, Status.stopped, Status.completed, Status.failed},
    Status.paused: {Status.in_progress, Status.stopped},
    Status.stopped: set(),
    Status.completed: set(),
    Status.failed: set(),
}
# A result stamped this long before its trial's pause may still arrive after
# the pause took its final read; it is then legitimately not delivered.
_STAMP_TOLERANCE = 0.5


@dataclass
class ChaosReport:
    trials: int
    actions: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    undelivered_after_pause: int = 0
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)


def run_chaos(
    experiment_dir: Path, *, trials: int = 300, workers: int = 4, seed: int = 0,
    grace_period: float = 0.3,
) -> ChaosReport:
    rng = random.Random(seed)
    report = ChaosReport(trials=trials)
    started = time.monotonic()
    fds_before = set(os.listdir("/proc/self/fd"))
    delivered: dict[int, list[dict[str, Any]]] = {}
    backend = LocalBackend(TRIAL, experiment_dir=experiment_dir, grace_period=grace_period)
    try:
        _drive(backend, rng, trials, workers, delivered, report)
        backend.stop_all()
        _, results = backend.fetch_status_results(list(range(backend.new_trial_id())))
        for trial_id, result in results:
            delivered.setdefault(trial_id, []).append(result)
    finally:
        backend.close()
    report.seconds = time.monotonic() - started
    _check_processes(report)
    leaked = set(os.listdir("/proc/self/fd")) - fds_before
    if len(leaked) > 0:
        report.violations.append(f"file descriptors left open: {sorted(leaked)}")
    _check_results(experiment_dir, trials, delivered, report)
    _check_histories(experiment_dir, trials, report)
    return report


def _drive(
    backend: LocalBackend, rng: random.Random, trials: int, workers: int,
    delivered: dict[int, list[dict[str, Any]]], report: ChaosReport,
) -> None:
    status: dict[int, str] = {}

    def act(name: str) -> None:
        report.actions[name] = report.actions.get(name, 0) + 1

    while backend.new_trial_id() < trials or backend.busy_trial_ids():
        backend.wait(timeout=0.05)
        ids = list(range(backend.new_trial_id()))
        statuses, results = backend.fetch_status_results(ids)
        for trial_id, result in results:
            delivered.setdefault(trial_id, []).append(result)
        status = {t: s for t, (_, s) in statuses.items()}
        busy = {t for t, _ in backend.busy_trial_ids()}
        running = [t for t, s in status.items() if s == Status.in_progress]
        paused = [t for t, s in status.items() if s == Status.paused]
        with_checkpoint = [
            t for t in status if checkpoint.latest(backend.trial_dir(t) / "checkpoints")
        ]
        roll = rng.random()
        if backend.new_trial_id() >= trials and not running and paused:
            # Wind down: every paused trial is stopped or resumed.
            for trial_id in paused:
                if rng.random() < 0.5 and len(busy) < workers:
                    backend.resume_trial(trial_id)
                    busy.add(trial_id)
                else:
                    backend.stop_trial(trial_id)
        elif len(busy) < workers and backend.new_trial_id() < trials and roll < 0.5:
            config = {"steps": rng.randint(2, 12), "step_seconds": rng.choice([0.0, 0.005, 0.02]),
                      "crash_at": rng.choice([-1] * 6 + [1, 3, 5])}
            if with_checkpoint and rng.random() < 0.15:
                backend.start_trial(config, checkpoint_trial_id=rng.choice(with_checkpoint))
                act("start_from_checkpoint")
            else:
                backend.start_trial(config)
                act("start")
        elif running and roll < 0.65:
            backend.pause_trial(rng.choice(running))
            act("pause")
        elif running and roll < 0.72:
            backend.stop_trial(rng.choice(running))
            act("stop")
        elif paused and len(busy) < workers and roll < 0.85:
            backend.resume_trial(rng.choice(paused))
            act("resume")
        elif paused and roll < 0.9:
            backend.stop_trial(rng.choice(paused))
            act("stop_paused")
        elif paused and with_checkpoint and roll < 0.95:
            target = rng.choice(paused)
            source = rng.choice(with_checkpoint)
            if target not in busy and source != target:
                backend.copy_checkpoint(source, target)
                act("copy")


def _check_processes(report: ChaosReport) -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    if children:
        report.violations.append(
            f"processes left: {[(p.pid, p.status()) for p in children]}"
        )


def _check_results(
    root: Path, trials: int, delivered: dict[int, list[dict[str, Any]]], report: ChaosReport
) -> None:
    for trial_id in range(trials):
        folder = root / str(trial_id)
        written = [json.loads(line) for line in (folder / "results.jsonl").read_text()
                   .splitlines() if line.strip()]
        key = [(r["pid"], r["step"]) for r in written]
        got = [(r["pid"], r["step"]) for r in delivered.get(trial_id, [])]
        report.delivered += len(got)
        if len(got) != len(set(got)):
            report.violations.append(f"trial {trial_id}: a result was delivered twice")
        positions = [key.index(k) for k in got if k in key]
        if len(positions) != len(got):
            report.violations.append(f"trial {trial_id}: delivered a result it never wrote")
        if positions != sorted(positions):
            report.violations.append(f"trial {trial_id}: results delivered out of order")
        history = [json.loads(line) for line in (folder / "status.jsonl").read_text()
                   .splitlines() if line]
        interruptions = [h["time"] for h in history
                         if h["status"] in (Status.paused, Status.stopped)]
        for result in written:
            if (result["pid"], result["step"]) in set(got):
                continue
            stamp = result["st_worker_timestamp"]
            if not any(stamp >= t - _STAMP_TOLERANCE for t in interruptions):
                report.violations.append(
                    f"trial {trial_id}: result {result['step']} of pid {result['pid']} was "
                    "written while the trial ran and never delivered"
                )
            else:
                report.undelivered_after_pause += 1


def _check_histories(root: Path, trials: int, report: ChaosReport) -> None:
    for trial_id in range(trials):
        path = root / str(trial_id) / "status.jsonl"
        previous = None
        for line in path.read_text().splitlines():
            status = json.loads(line)["status"]
            if status not in ALLOWED[previous]:
                report.violations.append(
                    f"trial {trial_id}: status went from {previous} to {status}"
                )
            previous = status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--trials", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="localbackend-chaos-") as folder:
        result = run_chaos(Path(folder) / "exp", trials=args.trials, workers=args.workers,
                           seed=args.seed)
    print(f"{result.trials} trials in {result.seconds:.1f} s; actions {result.actions}; "
          f"{result.delivered} results delivered, {result.undelivered_after_pause} written after "
          "a pause or stop and held back")
    for violation in result.violations:
        print("VIOLATION:", violation)
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""Retries of failed trials from their checkpoints, and checkpoint retention.

Real trial processes (``tests/scripts/limits_trial.py``); what is checked is
what a tuner sees: statuses, failure reasons, results delivered exactly
once, the status history, and which checkpoint folders are left.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend, Status
from localbackend._files import published_checkpoints
from tests.helpers import collect, format_logs, script, status_history, until_status

TRIAL = script("limits_trial.py")


def _backend(experiment_dir: Path, trial: Path = TRIAL, **options: Any) -> LocalBackend:
    return LocalBackend(
        trial, experiment_dir=experiment_dir, binary=[sys.executable], grace_period=1.0,
        **options,
    )


def _script(tmp_path: Path, text: str) -> Path:
    """A trial script with ``text``."""
    entry = tmp_path / "trial.py"
    entry.write_text(text)
    return entry


def _checkpoints(backend: LocalBackend, trial_id: int) -> list[int]:
    return [n for n, _ in published_checkpoints(backend.trial_dir(trial_id) / "checkpoints")]


def test_a_trial_that_crashes_twice_is_resumed_each_time_and_every_result_arrives_once(
    experiment_dir: Path,
) -> None:
    with _backend(experiment_dir, max_failures=2) as backend:
        backend.start_trial({"mode": "crash_until", "crashes": 2, "crash_at": 1, "epochs": 5})
        statuses, results = collect(backend, [0], until_status(Status.completed), timeout=60)
        assert [r["epoch"] for _, r in results] == [0, 1, 2, 3, 4], format_logs(backend)
        assert [r["st_worker_iter"] for _, r in results] == [0, 1, 2, 3, 4]
        stdout = "".join(backend.stdout(0))
        assert "starting at epoch 2" in stdout and "starting at epoch 3" in stdout
        retries = [h for h in status_history(backend, 0) if h.get("retry")]
        assert [h["retry"] for h in retries] == [1, 2]
        assert [h["run"] for h in retries] == [1, 2]
        assert all("exit code 3" in h["reason"] for h in retries)
        trial, _ = statuses[0]
        assert trial.failure_reason is None


def test_a_crash_loop_stops_being_retried_and_says_so(experiment_dir: Path) -> None:
    with _backend(experiment_dir, max_failures=2) as backend:
        backend.start_trial({"mode": "crash"})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=60)
        trial, _ = statuses[0]
        assert trial.failure_kind == "exit"
        assert trial.failure_reason.startswith("exit code 1; not retried again"), trial
        assert "crash loop" in trial.failure_reason
        assert len([h for h in status_history(backend, 0) if h.get("retry")]) == 2


def test_without_max_failures_a_failure_is_final(experiment_dir: Path) -> None:
    with _backend(experiment_dir) as backend:
        backend.start_trial({"mode": "crash"})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=30)
        assert statuses[0][0].failure_reason == "exit code 1"
        assert not [h for h in status_history(backend, 0) if h.get("retry")]


def test_a_time_limit_is_not_retried(experiment_dir: Path) -> None:
    with _backend(experiment_dir, time_limit=0.5, max_failures=3) as backend:
        backend.start_trial({"mode": "sleep", "seconds": 60})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=30)
        assert statuses[0][0].failure_reason == "time limit (0.5 s)"


def test_keep_checkpoints_keeps_the_newest_k_of_each_trial(experiment_dir: Path) -> None:
    with _backend(experiment_dir, keep_checkpoints=1) as backend:
        backend.start_trial({"mode": "steps", "seconds": 0, "steps": 6})
        collect(backend, [0], until_status(Status.completed), timeout=30)
        assert _checkpoints(backend, 0) == [6]  # numbered from 1; save() alone keeps 2


def test_keep_best_keeps_only_the_best_finished_trials_checkpoints(
    experiment_dir: Path,
) -> None:
    script_dir = experiment_dir.parent / "scripts"
    script_dir.mkdir()
    entry = script_dir / "loss_trial.py"
    entry.write_text(LOSS_TRIAL)
    with _backend(experiment_dir, entry, keep_best=2, metric="loss", mode="min") as backend:
        for loss in (4, 1, 3, 2):
            backend.start_trial({"loss": loss, "block": 0})
        collect(backend, [0, 1, 2, 3], until_status(Status.completed), timeout=30)
        kept = [t for t in range(4) if _checkpoints(backend, t)]
        assert kept == [1, 3], format_logs(backend)
        deleted = [h for h in status_history(backend, 0) if h.get("action")]
        assert deleted and "not among the 2 best" in deleted[0]["reason"]
        # PBT-like: a copy of the best trial's checkpoint into a new trial, which
        # then pauses; a paused trial's checkpoint is never deleted, whatever its loss.
        backend.start_trial({"loss": 100, "block": 1}, checkpoint_trial_id=1)
        collect(backend, [4], lambda _s, r: len(r) >= 1, timeout=30)
        backend.pause_trial(4)
        collect(backend, [4], until_status(Status.paused), timeout=30)
        backend.start_trial({"loss": 0.5, "block": 0})
        collect(backend, [5], until_status(Status.completed), timeout=30)
        kept = [t for t in range(6) if _checkpoints(backend, t)]
        assert kept == [1, 4, 5]
        backend.stop_all()


def test_a_budget_that_paused_trials_prevent_meeting_is_reported_once(
    experiment_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    entry = _script(tmp_path, LOSS_TRIAL)
    with _backend(experiment_dir, entry, checkpoint_budget=150_000, metric="loss") as backend:
        # Two paused trials hold 2 x 100 kB: over the budget, and untouchable.
        for loss in (1, 2):
            backend.start_trial({"loss": loss, "block": 1, "size": 100_000})
        collect(backend, [0, 1], lambda _s, r: len(r) >= 2, timeout=30)
        for trial_id in (0, 1):
            backend.pause_trial(trial_id)
        collect(backend, [0, 1], until_status(Status.paused), timeout=30)
        with caplog.at_level(logging.WARNING, logger="localbackend"):
            for loss in (5, 3):
                backend.start_trial({"loss": loss, "block": 0, "size": 100_000})
            collect(backend, [2, 3], until_status(Status.completed), timeout=30)
        assert [t for t in range(4) if _checkpoints(backend, t)] == [0, 1]
        warnings = [r for r in caplog.records if "checkpoint_budget" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
        assert "paused" in warnings[0].getMessage()
        assert any(h.get("action") for h in status_history(backend, 2))
        backend.stop_all()


LOSS_TRIAL = '''
import argparse, os, time
from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--loss", type=float)
parser.add_argument("--block", type=int, default=0)
parser.add_argument("--size", type=int, default=10)
args, _ = parser.parse_known_args()
with checkpoint.save() as folder:
    (folder / "weights").write_bytes(os.urandom(args.size))
report(loss=args.loss)
if args.block:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
'''


def test_keep_best_after_a_restore_still_knows_the_best(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry = _script(tmp_path, LOSS_TRIAL)
    options: dict[str, Any] = {"keep_best": 1, "metric": "loss", "mode": "min"}
    with _backend(experiment_dir, entry, **options) as backend:
        for loss in (1, 5):
            backend.start_trial({"loss": loss})
        collect(backend, [0, 1], until_status(Status.completed), timeout=30)
        assert [t for t in range(2) if _checkpoints(backend, t)] == [0]
    restored = LocalBackend.restore(experiment_dir)
    try:
        restored.start_trial({"loss": 3})
        collect(restored, [2], until_status(Status.completed), timeout=30)
        assert [t for t in range(3) if _checkpoints(restored, t)] == [0]
    finally:
        restored.close()


def test_a_copy_sharing_its_files_is_counted_once_against_the_budget(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry = _script(tmp_path, LOSS_TRIAL)
    with _backend(experiment_dir, entry, checkpoint_budget=150_000, metric="loss") as backend:
        backend.start_trial({"loss": 1, "size": 100_000})
        collect(backend, [0], until_status(Status.completed), timeout=30)
        backend.copy_checkpoint(0, 1)
        backend.start_trial({"loss": 2, "size": 10}, checkpoint_trial_id=0)
        collect(backend, [1], until_status(Status.completed), timeout=30)
        # About 100 kB on disk, shared by both trials: under the budget, nothing goes.
        assert _checkpoints(backend, 0) and _checkpoints(backend, 1)
        assert not any(h.get("action") for t in (0, 1) for h in status_history(backend, t))


@pytest.mark.parametrize("copy_saves", [False, True])
def test_a_budget_is_met_by_deleting_a_copy_together_with_its_source(
    experiment_dir: Path, tmp_path: Path, copy_saves: bool
) -> None:
    # A copy shares its source's files by hard link: deleting either alone
    # frees nothing of them, deleting both frees them all. The worst two are
    # a source and its copy; the best trial alone fits the budget.
    entry = _script(tmp_path, LOSS_TRIAL.replace(
        "with checkpoint.save() as folder:\n    (folder",
        "if args.size:\n    with checkpoint.save() as folder:\n        (folder"))
    with _backend(experiment_dir, entry, checkpoint_budget=500_000, metric="loss",
                  mode="min") as backend:
        backend.start_trial({"loss": 2, "size": 400_000})
        collect(backend, [0], until_status(Status.completed), timeout=30)
        backend.start_trial({"loss": 3, "size": 10 if copy_saves else 0}, checkpoint_trial_id=0)
        collect(backend, [1], until_status(Status.completed), timeout=30)
        assert _checkpoints(backend, 0) and _checkpoints(backend, 1)  # 400 kB, counted once
        backend.start_trial({"loss": 1, "size": 200_000})
        collect(backend, [2], until_status(Status.completed), timeout=30)
        kept = [t for t in range(3) if _checkpoints(backend, t)]
        assert kept == [2], format_logs(backend)
        for trial_id in (0, 1):
            actions = [h for h in status_history(backend, trial_id) if h.get("action")]
            assert actions and "over checkpoint_budget" in actions[0]["reason"]


def test_a_budget_counts_a_checkpoint_deleted_by_hand_as_gone(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry = _script(tmp_path, LOSS_TRIAL)
    with _backend(experiment_dir, entry, checkpoint_budget=250_000, metric="loss") as backend:
        for loss in (1, 2):
            backend.start_trial({"loss": loss, "size": 100_000})
        collect(backend, [0, 1], until_status(Status.completed), timeout=30)
        backend.delete_checkpoint(0)
        backend.start_trial({"loss": 3, "size": 100_000})
        collect(backend, [2], until_status(Status.completed), timeout=30)
        # 200 kB on disk: under the budget, nothing more goes.
        assert [t for t in range(3) if _checkpoints(backend, t)] == [1, 2]
        assert not any(h.get("action") for t in (1, 2) for h in status_history(backend, t))


# Killed inside checkpoint.save(), before it published: what it wrote stays
# in an unfinished save's folder.
KILLED_MID_SAVE = """
import os, signal
from localbackend import checkpoint, report

report(loss=9.0)
with checkpoint.save() as folder:
    (folder / "weights").write_bytes(os.urandom(300_000))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_budget_deletes_what_a_save_killed_halfway_left(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry = _script(tmp_path, KILLED_MID_SAVE)
    with _backend(experiment_dir, entry, checkpoint_budget=250_000, metric="loss") as backend:
        backend.start_trial({})
        collect(backend, [0], until_status(Status.failed), timeout=30)
        left = backend.trial_dir(0) / "checkpoints"
        assert not left.exists() or not any(left.iterdir()), sorted(left.rglob("*"))
        actions = [h for h in status_history(backend, 0) if h.get("action")]
        assert actions and "over checkpoint_budget" in actions[0]["reason"]


# Killed right after its third save was published, before that save pruned
# the older ones (the fault injected: the kill, at that moment).
KILLED_AFTER_A_PUBLISH = """
import os, signal
import localbackend.checkpoint as checkpoint_module
from localbackend import checkpoint, report

synced = checkpoint_module.fsync_directory
calls = []

def sync_then_die(path):
    synced(path)
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint_module.fsync_directory = sync_then_die
for step in range(5):
    checkpoint.save_json({"step": step})
    report(step=step)
"""


def test_keep_checkpoints_holds_after_a_run_killed_between_a_publish_and_its_pruning(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry = _script(tmp_path, KILLED_AFTER_A_PUBLISH)
    with _backend(experiment_dir, entry, keep_checkpoints=1) as backend:
        backend.start_trial({})
        statuses, _ = collect(backend, [0], until_status(Status.failed), timeout=30)
        assert statuses[0][0].failure_reason == "killed by SIGKILL", format_logs(backend)
        assert _checkpoints(backend, 0) == [3]


def test_a_failure_reason_outlives_a_retention_deletion_and_a_restore(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry = _script(tmp_path, LOSS_TRIAL + "\nif args.loss > 4:\n    raise SystemExit(3)\n")
    with _backend(experiment_dir, entry, keep_best=1, metric="loss") as backend:
        backend.start_trial({"loss": 5})
        collect(backend, [0], until_status(Status.failed), timeout=30)
        backend.start_trial({"loss": 1})
        collect(backend, [1], until_status(Status.completed), timeout=30)
        assert not _checkpoints(backend, 0)
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][0].failure_reason == "exit code 3"
    restored = LocalBackend.restore(experiment_dir)
    try:
        statuses, _ = restored.fetch_status_results([0])
        assert statuses[0][0].failure_reason == "exit code 3"
    finally:
        restored.close()

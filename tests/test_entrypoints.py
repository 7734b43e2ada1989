"""Run the example trial scripts in entrypoints/ as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from localbackend import checkpoint
from localbackend._protocol import (
    ENV_CHECKPOINT_DIR,
    ENV_ITERATION_START,
    ENV_RESULTS_FILE,
    ST_WORKER_ITER,
    ST_WORKER_TIME,
    ST_WORKER_TIMESTAMP,
)

ROOT = Path(__file__).resolve().parent.parent
TRAIN_NUMPY = ROOT / "entrypoints" / "train_numpy.py"
SYNE_TUNE_STYLE = ROOT / "entrypoints" / "syne_tune_style.py"
PREFIX = "[tune-metric]: "
CHILD_TIMEOUT = 60.0


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def run(script: Path, *args: str, env: dict[str, str], cwd: Path | None = None) -> str:
    """Run a script to completion and return its stdout; fail showing its output."""
    result = subprocess.run(
        [sys.executable, str(script), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def stdout_metrics(stdout: str) -> list[dict[str, Any]]:
    lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
    return [json.loads(line[len(PREFIX) :]) for line in lines]


def file_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    # A line without "\n" is still being written.
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]]


def curve(results: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    return [(r["epoch"], r["loss"], r["accuracy"]) for r in results]


class Trial:
    """One run of train_numpy.py, with its own results file and output files."""

    def __init__(self, tmp_path: Path, name: str, checkpoint_dir: Path) -> None:
        self.results = tmp_path / f"{name}.jsonl"
        self.checkpoint_dir = checkpoint_dir
        self.stdout = tmp_path / f"{name}.out"
        self.stderr = tmp_path / f"{name}.err"

    def env(self, iteration_start: int = 0) -> dict[str, str]:
        return child_env(
            **{
                ENV_RESULTS_FILE: str(self.results),
                ENV_CHECKPOINT_DIR: str(self.checkpoint_dir),
                ENV_ITERATION_START: str(iteration_start),
            }
        )

    def output(self) -> str:
        return f"stdout:\n{self.stdout.read_text()}\nstderr:\n{self.stderr.read_text()}"


@pytest.fixture
def spawn() -> Iterator[Callable[[Trial, list[str]], subprocess.Popen[bytes]]]:
    """Start train_numpy.py in the background; every child is killed and reaped after."""
    children: list[subprocess.Popen[bytes]] = []

    def start(trial: Trial, args: list[str]) -> subprocess.Popen[bytes]:
        with open(trial.stdout, "wb") as out, open(trial.stderr, "wb") as err:
            child = subprocess.Popen(
                [sys.executable, str(TRAIN_NUMPY), *args],
                env=trial.env(),
                stdout=out,
                stderr=err,
            )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def wait_until(condition: Callable[[], bool], child: subprocess.Popen[bytes], trial: Trial) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"child exited with {child.returncode} too early\n{trial.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {CHILD_TIMEOUT} s\n{trial.output()}")
        time.sleep(0.005)


def terminate(child: subprocess.Popen[bytes], trial: Trial) -> float:
    """Send SIGTERM; return how long the child took to exit, which must be 0."""
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"child ignored SIGTERM\n{trial.output()}")
    assert child.returncode == 0, trial.output()
    return time.monotonic() - sent


def uninterrupted_curve(tmp_path: Path, args: list[str]) -> list[tuple[int, float, float]]:
    reference = Trial(tmp_path, "reference", tmp_path / "reference-ckpt")
    run(TRAIN_NUMPY, *args, env=reference.env())
    return curve(file_metrics(reference.results))


def saved_state(checkpoint_dir: Path) -> dict[str, Any]:
    latest = checkpoint.latest(checkpoint_dir)
    assert latest is not None
    state: dict[str, Any] = json.loads((latest / "state.json").read_text())
    return state


def test_train_numpy_runs_by_hand(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(TRAIN_NUMPY), "--epochs", "10", "--seed", "1"],
        env=child_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    results = stdout_metrics(result.stdout)
    assert [r["epoch"] for r in results] == list(range(1, 11))
    assert [r[ST_WORKER_ITER] for r in results] == list(range(10))
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in results)
    assert results[-1]["loss"] < results[0]["loss"]  # it does learn
    assert "no checkpoint folder" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written without a checkpoint folder
    assert elapsed < 10, elapsed  # well under a second of work, plus start-up


def test_train_numpy_reports_to_results_file_and_checkpoints(tmp_path: Path) -> None:
    trial = Trial(tmp_path, "trial", tmp_path / "ckpt")
    stdout = run(TRAIN_NUMPY, "--epochs", "3", env=trial.env())
    assert PREFIX not in stdout
    results = file_metrics(trial.results)
    assert [r["epoch"] for r in results] == [1, 2, 3]
    for r in results:
        assert {ST_WORKER_ITER, ST_WORKER_TIME, ST_WORKER_TIMESTAMP} <= r.keys()
    assert saved_state(trial.checkpoint_dir)["epoch"] == 3
    assert sorted(p.name for p in trial.checkpoint_dir.iterdir()) == [
        "ckpt-00000002",
        "ckpt-00000003",
    ]


def test_train_numpy_takes_checkpoint_dir_from_argv(tmp_path: Path) -> None:
    target = tmp_path / "from argv"
    results = tmp_path / "results.jsonl"
    env = child_env(**{ENV_RESULTS_FILE: str(results)})
    run(TRAIN_NUMPY, "--epochs", "2", f"--st_checkpoint_dir={target}", env=env)
    run(TRAIN_NUMPY, "--epochs", "3", "--st_checkpoint_dir", str(target), env=env)
    assert [r["epoch"] for r in file_metrics(results)] == [1, 2, 3]
    assert saved_state(target)["epoch"] == 3


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resumed_run_reports_what_an_uninterrupted_run_reports(
    tmp_path: Path, optimizer: str
) -> None:
    args = ["--optimizer", optimizer, "--lr", "0.02", "--seed", "3", "--batch_size", "50"]
    trial = Trial(tmp_path, "trial", tmp_path / "ckpt")
    run(TRAIN_NUMPY, *args, "--epochs", "3", env=trial.env())
    run(TRAIN_NUMPY, *args, "--epochs", "6", env=trial.env(iteration_start=3))
    results = file_metrics(trial.results)
    assert [r[ST_WORKER_ITER] for r in results] == list(range(6))
    assert curve(results) == uninterrupted_curve(tmp_path, [*args, "--epochs", "6"])

    # Re-running a finished trial reports nothing new.
    run(TRAIN_NUMPY, *args, "--epochs", "6", env=trial.env(iteration_start=6))
    assert len(file_metrics(trial.results)) == 6


def test_sigterm_between_epochs_saves_and_exits_zero(tmp_path: Path, spawn: Any) -> None:
    trial = Trial(tmp_path, "trial", tmp_path / "ckpt")
    # Slow epochs so the signal arrives while the trial sleeps after a report.
    child = spawn(trial, ["--epochs", "1000", "--epoch_seconds", "0.5"])
    wait_until(lambda: len(file_metrics(trial.results)) >= 2, child, trial)
    took = terminate(child, trial)
    assert took < 5.0, f"SIGTERM took {took:.1f} s\n{trial.output()}"
    reported = len(file_metrics(trial.results))
    state = saved_state(trial.checkpoint_dir)
    assert (state["epoch"], state["position"]) == (reported, 0)

    run(TRAIN_NUMPY, "--epochs", str(reported + 2), env=trial.env(iteration_start=reported))
    assert curve(file_metrics(trial.results)) == uninterrupted_curve(
        tmp_path, ["--epochs", str(reported + 2)]
    )


def test_sigterm_mid_epoch_saves_position_and_resumes_exactly(tmp_path: Path, spawn: Any) -> None:
    # Tiny batches make an epoch hundreds of steps long, so SIGTERM almost
    # always lands inside one; try a few times to be sure we test that case.
    args = ["--batch_size", "2", "--seed", "5"]
    for attempt in range(5):
        trial = Trial(tmp_path, f"trial{attempt}", tmp_path / f"ckpt{attempt}")
        child = spawn(trial, [*args, "--epochs", "1000"])
        results = trial.results
        wait_until(lambda: len(file_metrics(results)) >= 1, child, trial)  # noqa: B023
        terminate(child, trial)
        state = saved_state(trial.checkpoint_dir)
        if state["position"] > 0:
            break
    else:
        pytest.fail("SIGTERM never arrived mid-epoch in 5 attempts")
    reported = len(file_metrics(trial.results))
    assert state["epoch"] == reported
    assert "SIGTERM during epoch" in trial.stderr.read_text()

    epochs = str(reported + 2)
    run(TRAIN_NUMPY, *args, "--epochs", epochs, env=trial.env(iteration_start=reported))
    assert curve(file_metrics(trial.results)) == uninterrupted_curve(
        tmp_path, [*args, "--epochs", epochs]
    )


def test_syne_tune_style_prints_tune_metrics_and_resumes(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    first = stdout_metrics(
        run(SYNE_TUNE_STYLE, "--epochs", "3", "--st_checkpoint_dir", str(folder), env=child_env())
    )
    assert [r["epoch"] for r in first] == [1, 2, 3]
    assert [r[ST_WORKER_ITER] for r in first] == [0, 1, 2]
    for r in first:
        assert isinstance(r["loss"], float)
        assert r[ST_WORKER_TIMESTAMP] > 0 and r[ST_WORKER_TIME] >= 0
    assert json.loads((folder / "checkpoint.json").read_text())["epoch"] == 3
    assert [p.name for p in folder.iterdir()] == ["checkpoint.json"]  # no temp file left

    resumed = stdout_metrics(
        run(SYNE_TUNE_STYLE, "--epochs", "5", f"--st_checkpoint_dir={folder}", env=child_env())
    )
    assert [r["epoch"] for r in resumed] == [4, 5]
    uninterrupted = stdout_metrics(run(SYNE_TUNE_STYLE, "--epochs", "5", env=child_env()))
    assert [r["loss"] for r in first + resumed] == [r["loss"] for r in uninterrupted]

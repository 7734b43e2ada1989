"""``localbackend tune``'s limit flags reach the backend, are checked, and stay on resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from localbackend._cores import usable_cores
from localbackend._protocol import THREAD_COUNT_VARIABLES
from localbackend.cli import _build_parser
from localbackend.cli._tune import backend_limits, threads_per_trial
from tests.test_cli_tune import SPACE, TRAIN, cli


def _options(root: Path) -> dict[str, object]:
    snapshot = json.loads((root / "experiment.json").read_text())
    return snapshot["options"]  # type: ignore[no-any-return]


def test_limit_flags_become_the_backends_options(tmp_path: Path) -> None:
    root = tmp_path / "run"
    done = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss", "--scheduler",
        "random", "--max-trials", "2", "--workers", "1", "--experiment-dir", str(root),
        "--seed", "1", "--view", "plain", "-p", "epochs=2",
        "--time-limit", "120", "--memory-limit", "1GiB", "--heartbeat-timeout", "60",
        "--max-failures", "1", "--keep-checkpoints", "1", "--keep-best", "1",
        "--checkpoint-budget", "100MiB", "--cpus-per-trial", "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    options = _options(root)
    assert options["limits"] == {
        "time_limit": 120.0, "memory_limit": 1 << 30, "heartbeat_timeout": 60.0,
        "max_failures": 1,
    }
    assert options["retention"] == {
        "keep_checkpoints": 1, "keep_best": 1, "metric": "loss", "mode": "min",
        "checkpoint_budget": 100 << 20,
    }
    assert options["cpus_per_trial"] == 1
    again = cli("tune", "--resume", str(root), "--time-limit", "5")
    assert again.returncode != 0
    assert "--time-limit cannot change on resume (saved: 120, given: 5)" in again.stderr
    # Given again with the saved values, in any spelling of them, the flags are fine.
    same = cli(
        "tune", "--resume", str(root), "--max-trials", "3", "--view", "plain",
        "--time-limit", "120.0", "--memory-limit", str(1 << 30), "--heartbeat-timeout", "60",
        "--max-failures", "1", "--keep-checkpoints", "1", "--keep-best", "1",
        "--checkpoint-budget", "100MiB", "--cpus-per-trial", "1",
    )
    assert same.returncode == 0, same.stdout + same.stderr
    changed = cli("tune", "--resume", str(root), "--memory-limit", "2GiB")
    assert changed.returncode != 0
    assert "--memory-limit cannot change on resume (saved: 1 GiB, given: 2 GiB)" in (
        changed.stderr), changed.stderr


@pytest.mark.parametrize("flag, value, said", [
    ("--memory-limit", "lots", "memory_limit='lots' is not a size"),
    ("--memory-limit", "1" + "0" * 30, "memory_limit=1" + "0" * 30 + " must be"),
    ("--max-failures", "1" + "0" * 30, "max_failures=1" + "0" * 30 + " must be"),
    ("--keep-checkpoints", "1" + "0" * 30, "keep_checkpoints=1" + "0" * 30 + " must be"),
])
def test_a_bad_limit_is_one_clear_line(tmp_path: Path, flag: str, value: str, said: str) -> None:
    done = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss",
        "--experiment-dir", str(tmp_path / "run"), flag, value,
    )
    assert done.returncode != 0
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_threads_per_trial_auto_splits_the_cores_between_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "run"
    done = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss", "--scheduler",
        "random", "--max-trials", "2", "--workers", "2", "--experiment-dir", str(root),
        "--seed", "1", "--view", "plain", "-p", "epochs=1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = max(1, usable_cores() // 2)
    assert _options(root)["threads_per_trial"] == expected
    for trial in ("0", "1"):
        command = json.loads((root / trial / "command.json").read_text())
        assert command["env"]["OMP_NUM_THREADS"] == str(expected), command
        assert command["env"]["OPENBLAS_NUM_THREADS"] == str(expected), command


@pytest.mark.parametrize(
    ("value", "workers", "options", "environ", "expected"),
    [
        ("auto", 2, {}, {}, "split"),
        ("auto", 1, {}, {}, None),  # one trial at a time keeps the libraries' default
        ("auto", 2, {}, {"OMP_NUM_THREADS": "4"}, None),  # the user's choice stands
        ("auto", 2, {"pinned": True}, {}, None),  # pinned trials get a thread per core
        ("auto", 2, {"elsewhere": True}, {}, None),  # Dask workers' cores are not known here
        ("none", 8, {}, {}, None),
        ("3", 2, {"pinned": True}, {"OMP_NUM_THREADS": "4"}, 3),
    ],
)
def test_threads_per_trial_choices(
    monkeypatch: pytest.MonkeyPatch, value: str, workers: int, options: dict[str, bool],
    environ: dict[str, str], expected: object,
) -> None:
    for name in THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, setting in environ.items():
        monkeypatch.setenv(name, setting)
    if expected == "split":
        expected = max(1, usable_cores() // workers)
    chosen = threads_per_trial(
        value, workers, pinned=options.get("pinned", False),
        elsewhere=options.get("elsewhere", False),
    )
    assert chosen == expected


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5", "\u00b2"])
def test_a_bad_thread_count_is_one_clear_line(tmp_path: Path, value: str) -> None:
    done = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss",
        "--experiment-dir", str(tmp_path / "run"), "--threads-per-trial", value,
    )
    assert done.returncode != 0
    assert f"--threads-per-trial {value!r} is not a thread count" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_auto_counts_only_the_trials_that_can_run_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in THREAD_COUNT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    args = _build_parser().parse_args(
        ["tune", "train.py", "--metric", "loss", "--workers", "8", "--max-trials", "1"]
    )
    # One trial at a time, whatever --workers says: the libraries keep their default.
    options = SimpleNamespace(workers=8, max_trials=1, metric="loss", mode="min")
    assert "threads_per_trial" not in backend_limits(args, options)  # type: ignore[arg-type]
    options = SimpleNamespace(workers=8, max_trials=2, metric="loss", mode="min")
    expected = max(1, usable_cores() // 2)
    assert backend_limits(args, options)["threads_per_trial"] == expected  # type: ignore[arg-type]

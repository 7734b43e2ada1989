"""``localbackend tune``'s limit flags reach the backend, are checked, and stay on resume."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert "--time-limit" in again.stderr


def test_a_bad_limit_is_one_clear_line(tmp_path: Path) -> None:
    done = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss",
        "--experiment-dir", str(tmp_path / "run"), "--memory-limit", "lots",
    )
    assert done.returncode != 0
    assert "memory_limit='lots' is not a size" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

"""Bad input: a clear error of ours that names the bad value, and no state changed.

Each case runs against one backend holding a trial in every status. After the
error, the trial table, the trial folders and the experiment folder listing
must be exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localbackend import (
    BackendConfigurationError,
    CheckpointCopyError,
    ConfigError,
    EntryPointError,
    ExperimentError,
    InvalidTransitionError,
    LocalBackend,
    LocalBackendError,
    Status,
    TrialNotFoundError,
)
from localbackend.launchers import LocalLauncher
from tests.crash_helpers import STEPS
from tests.helpers import format_logs, wait_for

HOLD = {"steps": 100000, "step_seconds": 0.05}


@dataclass
class Case:
    name: str
    call: Callable[[LocalBackend, Path], Any]
    error: type[LocalBackendError]
    names: str


def _not_executable(tmp: Path) -> Path:
    path = tmp / "not-executable.sh"
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o644)
    return path


def _newer_experiment(tmp: Path) -> Path:
    folder = tmp / "newer"
    folder.mkdir(exist_ok=True)
    (folder / "experiment.json").write_text('{"format_version": 7, "trials": {}}')
    return folder


def _a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("")
    return path


CASES = [
    Case("unknown id", lambda b, t: b.resume_trial(99), TrialNotFoundError, "99"),
    Case("negative id", lambda b, t: b.pause_trial(-1), TrialNotFoundError, "-1"),
    Case("str id", lambda b, t: b.resume_trial("0"), TrialNotFoundError, "'0'"),
    Case("float id", lambda b, t: b.stop_trial(1.5), TrialNotFoundError, "1.5"),
    Case("bool id", lambda b, t: b.pause_trial(True), TrialNotFoundError, "True"),
    Case("fetch unknown id", lambda b, t: b.fetch_status_results([0, 42]),
         TrialNotFoundError, "42"),
    Case("stdout of unknown id", lambda b, t: b.stdout(7), TrialNotFoundError, "7"),
    Case("resume Completed", lambda b, t: b.resume_trial(0), InvalidTransitionError,
         "Completed"),
    Case("resume Failed", lambda b, t: b.resume_trial(1), InvalidTransitionError, "Failed"),
    Case("resume Stopped", lambda b, t: b.resume_trial(2), InvalidTransitionError, "Stopped"),
    Case("resume running", lambda b, t: b.resume_trial(4), InvalidTransitionError,
         "InProgress"),
    Case("copy onto running", lambda b, t: b.copy_checkpoint(3, 4), InvalidTransitionError,
         "trial 4"),
    Case("copy onto itself", lambda b, t: b.copy_checkpoint(3, 3), CheckpointCopyError,
         "trial 3 to trial 3"),
    Case("copy without checkpoint", lambda b, t: b.copy_checkpoint(1, 2), CheckpointCopyError,
         "has no checkpoint"),
    Case("start from trial without checkpoint",
         lambda b, t: b.start_trial({"steps": 1}, checkpoint_trial_id=1), CheckpointCopyError,
         "trial 1"),
    Case("copy to far-future id", lambda b, t: b.copy_checkpoint(3, 50), TrialNotFoundError,
         "50"),
    Case("NaN value", lambda b, t: b.start_trial({"lr": float("nan")}), ConfigError, "nan"),
    Case("infinite value", lambda b, t: b.start_trial({"lr": float("-inf")}), ConfigError,
         "-inf"),
    Case("NaN in a list", lambda b, t: b.start_trial({"lrs": [0.1, float("nan")]}),
         ConfigError, "'lrs'"),
    Case("object value", lambda b, t: b.start_trial({"model": object()}), ConfigError,
         "object"),
    Case("set value", lambda b, t: b.start_trial({"tags": {"a"}}), ConfigError, "set"),
    Case("bytes value", lambda b, t: b.start_trial({"blob": b"x"}), ConfigError, "bytes"),
    Case("key with space", lambda b, t: b.start_trial({"learning rate": 1}), ConfigError,
         "'learning rate'"),
    Case("key with dash first", lambda b, t: b.start_trial({"-x": 1}), ConfigError, "'-x'"),
    Case("key with a trailing newline", lambda b, t: b.start_trial({"lr\n": 1}), ConfigError,
         "'lr\\n'"),
    Case("empty key", lambda b, t: b.start_trial({"": 1}), ConfigError, "''"),
    Case("key with shell chars", lambda b, t: b.start_trial({"a;rm": 1}), ConfigError,
         "'a;rm'"),
    Case("non-str key", lambda b, t: b.start_trial({3: 1}), ConfigError, "'3'"),
    Case("reserved key", lambda b, t: b.start_trial({"st_checkpoint_dir": "/tmp"}),
         ConfigError, "st_checkpoint_dir"),
    Case("config not a dict", lambda b, t: b.start_trial([("a", 1)]), ConfigError, "list"),
    Case("NaN in resume config", lambda b, t: b.resume_trial(3, {"lr": float("nan")}),
         ConfigError, "nan"),
    Case("missing entry point", lambda b, t: LocalBackend(t / "nope.py"), EntryPointError,
         "nope.py"),
    Case("entry point is a folder", lambda b, t: LocalBackend(t), EntryPointError,
         "is not a file"),
    Case("entry point not executable without binary",
         lambda b, t: LocalBackend(_not_executable(t), binary=[]), EntryPointError,
         "not-executable.sh"),
    Case("binary missing", lambda b, t: LocalBackend(STEPS, binary="no-such-python-xyz"),
         BackendConfigurationError, "no-such-python-xyz"),
    Case("binary bad quotes", lambda b, t: LocalBackend(STEPS, binary="python '-u"),
         BackendConfigurationError, "python '-u"),
    Case("experiment_dir is a file",
         lambda b, t: LocalBackend(STEPS, experiment_dir=_a_file(t)),
         BackendConfigurationError, "a-file"),
    Case("experiment_dir not writable",
         lambda b, t: LocalBackend(STEPS, experiment_dir="/proc/localbackend-exp").start_trial(
             {"steps": 1}), BackendConfigurationError, "/proc/localbackend-exp"),
    Case("negative grace", lambda b, t: LocalBackend(STEPS, grace_period=-1),
         BackendConfigurationError, "-1"),
    Case("NaN grace", lambda b, t: LocalBackend(STEPS, grace_period=float("nan")),
         BackendConfigurationError, "nan"),
    Case("gpus_to_use out of range",
         lambda b, t: LocalBackend(STEPS, num_gpus=2, gpus_to_use=[0, 5]),
         BackendConfigurationError, "[0, 5]"),
    Case("gpus_to_use repeated", lambda b, t: LocalBackend(STEPS, num_gpus=2, gpus_to_use=[1, 1]),
         BackendConfigurationError, "[1, 1]"),
    Case("more GPUs per trial than GPUs",
         lambda b, t: LocalBackend(STEPS, num_gpus=1, num_gpus_per_trial=2),
         BackendConfigurationError, "num_gpus_per_trial=2"),
    Case("negative num_gpus", lambda b, t: LocalBackend(STEPS, num_gpus=-2),
         BackendConfigurationError, "-2"),
    Case("env value not str", lambda b, t: LocalBackend(STEPS, env={"THREADS": 4}),
         BackendConfigurationError, "THREADS"),
    Case("launcher not a Launcher", lambda b, t: LocalBackend(STEPS, launcher=object()),
         BackendConfigurationError, "launcher=<object object"),
    Case("launcher class, not an instance",
         lambda b, t: LocalBackend(STEPS, launcher=LocalLauncher),  # type: ignore[arg-type]
         BackendConfigurationError, "LocalLauncher"),
    Case("restore on a launcher that is not one",
         lambda b, t: LocalBackend.restore(b.experiment_dir, launcher="local"),  # type: ignore[arg-type]
         BackendConfigurationError, "launcher='local'"),
    Case("restore non-experiment", lambda b, t: LocalBackend.restore(t), ExperimentError,
         str(Path("x").parent)),
    Case("restore newer format", lambda b, t: LocalBackend.restore(_newer_experiment(t)),
         ExperimentError, "format version 7"),
    Case("read_log bad stream", lambda b, t: b.read_log(0, stream="stdin"),
         BackendConfigurationError, "stdin"),
    Case("read_log negative offset", lambda b, t: b.read_log(0, offset=-3),
         BackendConfigurationError, "-3"),
    Case("wait negative timeout", lambda b, t: b.wait(timeout=-1), BackendConfigurationError,
         "-1"),
    Case("set_path after a trial", lambda b, t: b.set_path(str(t / "elsewhere")),
         LocalBackendError, "elsewhere"),
]


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """Trials 0..4: Completed, Failed, Stopped, Paused (with a checkpoint), InProgress."""
    root = tmp_path_factory.mktemp("bad-input")
    os.chdir(root)
    backend = LocalBackend(STEPS, experiment_dir=root / "exp", grace_period=0.5)
    try:
        backend.start_trial({"steps": 1, "step_seconds": 0})
        backend.start_trial({"steps": "not-a-number"})
        backend.start_trial(HOLD)
        backend.start_trial(HOLD)
        backend.start_trial(HOLD)
        ckpt = backend.trial_dir(3) / "checkpoints"
        wait_for(lambda: any(ckpt.glob("ckpt-*")) if ckpt.exists() else False, timeout=30,
                 what="trial 3's first checkpoint", on_fail=lambda: format_logs(backend))
        backend.pause_trial(3)
        backend.stop_trial(2)
        wait_for(lambda: _statuses(backend)[:2] == [Status.completed, Status.failed],
                 timeout=30, what="trials 0 and 1 to finish", on_fail=lambda: format_logs(backend))
        wait_for(lambda: {t for t, _ in backend.busy_trial_ids()} == {4}, timeout=30,
                 what="only trial 4 to be busy", on_fail=lambda: format_logs(backend))
        assert _statuses(backend) == [
            Status.completed, Status.failed, Status.stopped, Status.paused, Status.in_progress
        ]
        yield backend
    finally:
        backend.close()


def _statuses(backend: LocalBackend) -> list[str]:
    statuses, _ = backend.fetch_status_results(list(range(backend.new_trial_id())))
    return [statuses[t][1] for t in sorted(statuses)]


def _state(backend: LocalBackend, tmp: Path) -> tuple[Any, ...]:
    records = backend._table.records
    # Trial 4 runs and checkpoints all along, so its folder is left out (and
    # not even walked: files come and go in it).
    trial_files = sorted(
        str(p.relative_to(backend.experiment_dir))
        for trial_id in range(4)
        for p in backend.trial_dir(trial_id).rglob("*")
        if "checkpoints" in p.parts or p.name in ("config.json", "command.json")
    )
    return (
        backend.new_trial_id(),
        [(r.status, r.config, r.runs) for r in records],
        trial_files,
        sorted(p.name for p in tmp.iterdir()),
        sorted(p.name for p in Path.cwd().iterdir()),
        dict(os.environ),
    )


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_raises_our_error_naming_the_value(
    case: Case, populated: LocalBackend, tmp_path: Path
) -> None:
    os.chdir(tmp_path)
    for prepare in (_a_file, _not_executable, _newer_experiment):
        prepare(tmp_path)  # make the fixtures cases need, before the snapshot
    before = _state(populated, tmp_path)
    with pytest.raises(case.error) as caught:
        case.call(populated, tmp_path)
    message = str(caught.value)
    expected = str(tmp_path) if case.name == "restore non-experiment" else case.names
    assert expected in message, f"{message!r} does not name {expected!r}"
    assert _state(populated, tmp_path) == before

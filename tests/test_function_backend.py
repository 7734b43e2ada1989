"""FunctionBackend: a Python function as a trial, in its own process tree."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localbackend import (
    BackendConfigurationError,
    FunctionBackend,
    LocalBackend,
    LocalBackendError,
    Status,
    checkpoint,
    report,
)
from tests.helpers import collect, format_logs, until_status, wait_for


def train(lr: float, epochs: int, gate: str = "", st_checkpoint_dir: str = "") -> dict[str, Any]:
    """Resumes from its checkpoint; waits for ``gate`` (if given) after each epoch."""
    state = checkpoint.load_json() or {"epoch": 0, "runs": 0}
    state["runs"] += 1
    for epoch in range(state["epoch"] + 1, epochs + 1):
        state["epoch"] = epoch
        checkpoint.save_json(state)
        report(epoch=epoch, loss=lr / epoch, runs=state["runs"], lr_type=type(lr).__name__,
               checkpoint_arg=bool(st_checkpoint_dir))
        if gate:
            wait_until(Path(gate))
    return {"final_epoch": state["epoch"]}


def wait_until(path: Path) -> None:
    import time

    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def fails(x: int) -> None:
    raise RuntimeError(f"bad x={x}")


def test_a_function_trial_reports_checkpoints_and_resumes(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with FunctionBackend(train, experiment_dir=tmp_path / "exp", grace_period=5.0) as backend:
        trial = backend.start_trial({"lr": 1.0, "epochs": 3, "gate": str(gate)})
        assert (backend.trial_dir(trial.trial_id) / "function.pkl").exists()
        _, first = collect(backend, [0], lambda _, results: len(results) >= 1)
        backend.pause_trial(0)
        wait_for(lambda: not backend.busy_trial_ids(), what="the pause",
                 on_fail=lambda: format_logs(backend))
        gate.touch()
        backend.resume_trial(0)
        _, rest = collect(backend, [0], until_status(Status.completed))
    results = [r for _, r in first + rest]
    assert [(r.get("epoch"), r.get("runs")) for r in results] == [
        (1, 1), (2, 2), (3, 2), (None, None)], format_logs(backend)
    assert results[0]["lr_type"] == "float"  # types survive: the config is read as JSON
    assert results[0]["checkpoint_arg"] is True
    assert results[-1]["final_epoch"] == 3


def test_an_exception_fails_the_trial_with_its_traceback(tmp_path: Path) -> None:
    with FunctionBackend(fails, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({"x": 7, "unused": 1})
        statuses, _ = collect(backend, [0], until_status(Status.failed))
    trial, _ = statuses[0]
    assert trial.failure_kind == "exit"
    assert "RuntimeError: bad x=7" in trial.stderr_tail


@pytest.mark.parametrize("make", [
    lambda: (lambda x: x),
    lambda: _local_function(),
], ids=["lambda", "local function"])
def test_a_function_that_cannot_be_pickled_by_reference_is_named(
    make: Any, tmp_path: Path
) -> None:
    fn = make()
    with pytest.raises(BackendConfigurationError, match=r"fn='tests\.test_function_backend\..*"
                       r"cannot be pickled by reference") as caught:
        FunctionBackend(fn, experiment_dir=tmp_path / "exp")
    assert fn.__qualname__ in str(caught.value)
    assert not (tmp_path / "exp").exists()


def _local_function() -> Any:
    def inner(x: int) -> None:
        pass

    return inner


def test_fixed_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendConfigurationError, match="binary"):
        FunctionBackend(train, binary="python")


def test_a_pickled_backend_starts_new_trials_of_the_same_function(tmp_path: Path) -> None:
    backend = FunctionBackend(train, experiment_dir=tmp_path / "exp")
    try:
        backend.start_trial({"lr": 0.5, "epochs": 1})
        collect(backend, [0], until_status(Status.completed))
        loaded = pickle.loads(pickle.dumps(backend))  # as Syne Tune's Tuner.save does
    finally:
        backend.close()
    try:
        assert isinstance(loaded, FunctionBackend)
        loaded.start_trial({"lr": 0.25, "epochs": 1})
        _, results = collect(loaded, [1], until_status(Status.completed))
        assert [r["loss"] for _, r in results if "loss" in r] == [0.25]
    finally:
        loaded.close()
    # restore reads the function back from a trial folder.
    with FunctionBackend.restore(tmp_path / "exp") as restored:
        restored.start_trial({"lr": 0.125, "epochs": 1})
        _, results = collect(restored, [2], until_status(Status.completed))
        assert [r["loss"] for _, r in results if "loss" in r] == [0.125]


def test_a_function_of_a_script_read_from_standard_input_is_named(tmp_path: Path) -> None:
    # `python -` gives __main__ the file name "<stdin>", which no trial can run.
    driver = (
        "from localbackend import BackendConfigurationError, FunctionBackend\n"
        "def train(x):\n"
        "    return {'x': x}\n"
        "try:\n"
        f"    FunctionBackend(train, experiment_dir={str(tmp_path / 'exp')!r})\n"
        "except BackendConfigurationError as err:\n"
        "    print('REFUSED', err)\n"
    )
    done = subprocess.run([sys.executable, "-"], input=driver, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert "REFUSED fn='__main__.train'" in done.stdout, done.stdout + done.stderr
    assert "<stdin>" in done.stdout
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("call", [
    {"checkpoint_trial_id": 99},
    {"limits": {"time_limit": -1}},
], ids=["no such checkpoint trial", "bad limit"])
def test_a_failed_start_leaves_no_trial_folder(call: dict[str, Any], tmp_path: Path) -> None:
    with FunctionBackend(train, experiment_dir=tmp_path / "exp") as backend:
        with pytest.raises(LocalBackendError):
            backend.start_trial({"lr": 0.5, "epochs": 1}, **call)
        assert not (tmp_path / "exp" / "0").exists()
        assert backend.start_trial({"lr": 0.5, "epochs": 1}).trial_id == 0
        collect(backend, [0], until_status(Status.completed))


def test_a_function_experiment_restored_as_a_local_backend_runs_the_function(
    tmp_path: Path,
) -> None:
    with FunctionBackend(train, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({"lr": 0.5, "epochs": 1})
        collect(backend, [0], until_status(Status.completed))
    with LocalBackend.restore(tmp_path / "exp") as restored:
        assert isinstance(restored, FunctionBackend)
        restored.start_trial({"lr": 0.25, "epochs": 1})
        _, results = collect(restored, [1], until_status(Status.completed))
        assert [r["loss"] for _, r in results if "loss" in r] == [0.25], format_logs(restored)

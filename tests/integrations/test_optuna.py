"""A real Optuna study runs its trials as LocalBackend processes, prunes, and fails cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from localbackend import IntegrationError, LocalBackend  # noqa: E402
from localbackend.integrations.optuna import OptunaRunner  # noqa: E402
from tests.helpers import format_logs  # noqa: E402
from tests.integrations.conftest import EXAMPLES, SCRIPTS  # noqa: E402

pytestmark = pytest.mark.integration

SCRIPT = SCRIPTS / "lb_epochs.py"


def config_from(trial: Any) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", 1e-3, 1.0, log=True),
        "epochs": 12,
        "epoch_seconds": 0.05,
    }


def results_of(backend: LocalBackend, trial_id: int) -> list[dict[str, Any]]:
    path = backend.trial_dir(trial_id) / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def last_status(backend: LocalBackend, trial_id: int) -> str:
    lines = (backend.trial_dir(trial_id) / "status.jsonl").read_text().splitlines()
    return str(json.loads(lines[-1])["status"])


def test_a_pruner_stops_bad_trials_for_real(experiment_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    # Two good trials run to the end first; the two bad ones that follow
    # lag the median at their first step.
    for lr in (1.0, 0.9, 0.001, 0.002):
        study.enqueue_trial({"lr": lr})
    with LocalBackend(SCRIPT, experiment_dir=experiment_dir, grace_period=5.0) as backend:
        told = OptunaRunner(study, backend, metric="loss", step="epoch").optimize(
            config_from, n_trials=4, n_parallel=2
        )
        logs = format_logs(backend)
        states = {t.params["lr"]: t.state for t in study.trials}
        assert states == {1.0: TrialState.COMPLETE, 0.9: TrialState.COMPLETE,
                          0.001: TrialState.PRUNED, 0.002: TrialState.PRUNED}, logs
        assert len(told) == 4
        for frozen in study.trials:
            trial_id = frozen.user_attrs["localbackend_trial_id"]
            reported = results_of(backend, trial_id)
            if frozen.state == TrialState.PRUNED:
                assert last_status(backend, trial_id) == "Stopped", logs
                assert len(reported) < 12, logs
                pid = reported[0]["pid"]
                assert not psutil.pid_exists(pid), f"pruned trial {trial_id}'s process {pid} lives"
            else:
                assert frozen.value == reported[-1]["loss"], logs
                assert sorted(frozen.intermediate_values) == list(range(1, 13)), logs
        # The first two trials ran at the same time.
        first, second = (results_of(backend, t) for t in (0, 1))
        assert first[0]["st_worker_timestamp"] < second[-1]["st_worker_timestamp"]
        assert second[0]["st_worker_timestamp"] < first[-1]["st_worker_timestamp"]
        assert backend.busy_trial_ids() == []


class PruneAll(optuna.pruners.BasePruner):  # type: ignore[misc]
    def prune(self, study: Any, trial: Any) -> bool:
        return True


def test_a_slot_held_by_an_ending_process_is_waited_for(experiment_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=PruneAll())
    script = SCRIPTS / "slow_to_stop.py"
    with LocalBackend(script, experiment_dir=experiment_dir, grace_period=5.0) as backend:
        OptunaRunner(study, backend, metric="ready").optimize(
            lambda trial: {"linger": 0.5}, n_trials=2, n_parallel=1
        )
        assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
        history = (backend.trial_dir(0) / "status.jsonl").read_text().splitlines()
        stopped_at = json.loads(history[-1])["time"]
        second_started = json.loads(
            (backend.trial_dir(1) / "status.jsonl").read_text().splitlines()[0]
        )["time"]
        # One process at a time: the second trial started after the first ended.
        exit_time = json.loads((backend.trial_dir(0) / "exit.json").read_text())["time"]
        assert stopped_at < exit_time <= second_started


def test_a_failed_trial_is_told_fail_with_its_stderr(experiment_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.enqueue_trial({"crash": 1})
    study.enqueue_trial({"crash": 0})

    def config(trial: Any) -> dict[str, Any]:
        return {"crash": trial.suggest_int("crash", 0, 1), "epochs": 2}

    with LocalBackend(SCRIPT, experiment_dir=experiment_dir, grace_period=5.0) as backend:
        OptunaRunner(study, backend, metric="loss").optimize(config, n_trials=2, n_parallel=2)
    failed, completed = sorted(study.trials, key=lambda t: -t.params["crash"])
    assert failed.state == TrialState.FAIL
    assert "crashing on purpose" in failed.user_attrs["stderr_tail"]
    assert completed.state == TrialState.COMPLETE
    # Steps default to the 0-based result counter.
    assert sorted(completed.intermediate_values) == [0, 1]


def test_a_trial_without_the_metric_is_told_fail(experiment_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    with LocalBackend(SCRIPT, experiment_dir=experiment_dir) as backend:
        OptunaRunner(study, backend, metric="accuracy").optimize(
            lambda trial: {"epochs": 1}, n_trials=1
        )
    assert study.trials[0].state == TrialState.FAIL
    assert "without reporting 'accuracy'" in study.trials[0].user_attrs["fail_reason"]


def test_bad_arguments_raise_errors_that_say_what_to_do(experiment_dir: Path) -> None:
    with LocalBackend(SCRIPT, experiment_dir=experiment_dir) as backend:
        with pytest.raises(IntegrationError, match="single-objective"):
            OptunaRunner(optuna.create_study(directions=["minimize", "maximize"]), backend,
                         metric="loss")
        runner = OptunaRunner(optuna.create_study(), backend, metric="loss")
        with pytest.raises(IntegrationError, match="n_parallel=0"):
            runner.optimize(config_from, n_trials=1, n_parallel=0)


def test_an_error_in_the_config_function_fails_the_trial_and_stops_the_others(
    experiment_dir: Path,
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    calls: list[int] = []

    def config(trial: Any) -> dict[str, Any]:
        calls.append(trial.number)
        if len(calls) == 2:
            raise RuntimeError("no config for you")
        return {"epochs": 40, "epoch_seconds": 0.05}

    with LocalBackend(SCRIPT, experiment_dir=experiment_dir, grace_period=5.0) as backend:
        with pytest.raises(RuntimeError, match="no config"):
            OptunaRunner(study, backend, metric="loss").optimize(config, n_trials=3, n_parallel=2)
        assert backend.busy_trial_ids() == []
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]


def test_the_example_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "optuna_pruning.py"), "--n-trials", "6",
         "--epochs", "6", "--experiment-dir", str(tmp_path / "example")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "best value" in completed.stdout


class PruneAtFirstStep(optuna.pruners.BasePruner):  # type: ignore[misc]
    def prune(self, study: Any, trial: Any) -> bool:
        return bool(trial.intermediate_values)


def test_results_after_the_prune_never_reach_the_study(experiment_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=PruneAtFirstStep())
    with LocalBackend(SCRIPTS / "reports_after_sigterm.py", experiment_dir=experiment_dir,
                      grace_period=5.0) as backend:
        OptunaRunner(study, backend, metric="loss", step="epoch").optimize(
            lambda trial: {}, n_trials=1)
        logs = format_logs(backend)
        (pruned,) = study.trials
        assert pruned.state == TrialState.PRUNED, logs
        written = results_of(backend, 0)
        # The script wrote results after it was told to stop; Optuna saw the first only.
        assert len(written) >= 6, logs
        assert list(pruned.intermediate_values) == [written[0]["epoch"]], logs
        assert backend.fetch_status_results([0])[1] == []


def test_a_failed_trial_has_its_failure_reason_as_a_user_attribute(experiment_dir: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    with LocalBackend(SCRIPT, experiment_dir=experiment_dir, grace_period=5.0) as backend:
        OptunaRunner(study, backend, metric="loss").optimize(
            lambda trial: {"crash": 1, "epochs": 2}, n_trials=1)
    (failed,) = study.trials
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["failure_kind"] == "exit"
    assert "3" in failed.user_attrs["failure_reason"]
    assert failed.user_attrs["fail_reason"] == failed.user_attrs["failure_reason"]

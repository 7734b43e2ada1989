"""Ax's real Orchestrator runs LocalBackendRunner trials: learning curves, early stopping."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("ax")

from ax.adapter.registry import Generators
from ax.core.base_trial import TrialStatus
from ax.core.experiment import Experiment
from ax.core.objective import Objective
from ax.core.optimization_config import OptimizationConfig
from ax.core.parameter import ParameterType, RangeParameter
from ax.core.search_space import SearchSpace
from ax.early_stopping.strategies import ThresholdEarlyStoppingStrategy
from ax.generation_strategy.generation_node import GenerationStep
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.orchestration.orchestrator import (
    FailureRateExceededError,
    Orchestrator,
)
from ax.orchestration.orchestrator_options import OrchestratorOptions

from localbackend import IntegrationError
from localbackend.integrations.ax import (
    LocalBackendMapMetric,
    LocalBackendRunner,
    close_all_backends,
)
from tests.helpers import format_logs, wait_for
from tests.integrations.conftest import EXAMPLES, SCRIPTS

pytestmark = pytest.mark.integration

SCRIPT = SCRIPTS / "lb_epochs.py"


@pytest.fixture(autouse=True)
def close_backends() -> Iterator[None]:
    yield
    close_all_backends()


def make_experiment(runner: LocalBackendRunner) -> Experiment:
    metric = LocalBackendMapMetric("loss", lower_is_better=True, step_key="epoch")
    return Experiment(
        name="lb",
        search_space=SearchSpace([RangeParameter("x", ParameterType.FLOAT, 0.0, 1.0)]),
        optimization_config=OptimizationConfig(Objective(
            expression="-loss", metric_name_to_signature={"loss": metric.signature}
        )),
        metrics=[metric],
        runner=runner,
    )


def sobol(parallel: int) -> GenerationStrategy:
    return GenerationStrategy(nodes=[GenerationStep(
        generator=Generators.SOBOL, num_trials=-1, max_parallelism=parallel,
        generator_kwargs={"seed": 0},
    )])


def options(total_trials: int, **kwargs: Any) -> OrchestratorOptions:
    return OrchestratorOptions(
        total_trials=total_trials, init_seconds_between_polls=0.1,  # type: ignore[arg-type]
        seconds_between_polls_backoff_factor=1.0, min_seconds_before_poll=0.0,
        **kwargs,
    )


def results_of(trial_dir: str) -> list[dict[str, Any]]:
    lines = (Path(trial_dir) / "results.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_the_orchestrator_runs_an_experiment_to_the_end(tmp_path: Path) -> None:
    runner = LocalBackendRunner(
        str(SCRIPT), str(tmp_path / "exp"), fixed_config={"epochs": 4, "lr": 1.0},
        max_parallel=2, grace_period=5.0,
    )
    experiment = make_experiment(runner)
    orchestrator = Orchestrator(experiment, sobol(2), options(4))
    orchestrator.run_all_trials()

    logs = format_logs(runner.backend)
    assert {t.status for t in experiment.trials.values()} == {TrialStatus.COMPLETED}, logs
    assert len(experiment.trials) == 4
    data = experiment.lookup_data().full_df
    for index, trial in experiment.trials.items():
        json.dumps(trial.run_metadata)  # storable as it is
        curve = data[data["trial_index"] == index].sort_values("step")
        reported = results_of(trial.run_metadata["trial_dir"])
        assert list(curve["step"]) == [1, 2, 3, 4], logs
        assert list(curve["mean"]) == pytest.approx([r["loss"] for r in reported])
    assert runner.backend.busy_trial_ids() == []


def test_early_stopping_stops_a_trial_and_its_process_dies(tmp_path: Path) -> None:
    # With lr=5 the loss is (x - 0.3)^2 from the first epoch on; the
    # strategy stops every trial with x far from 0.3.
    runner = LocalBackendRunner(
        str(SCRIPT), str(tmp_path / "exp"),
        fixed_config={"epochs": 20, "lr": 5.0, "epoch_seconds": 0.1},
        max_parallel=2, grace_period=5.0,
    )
    experiment = make_experiment(runner)
    strategy = ThresholdEarlyStoppingStrategy(
        metric_threshold=0.1, min_progression=2, min_curves=None
    )
    orchestrator = Orchestrator(experiment, sobol(2), options(4, early_stopping_strategy=strategy))
    orchestrator.run_all_trials()

    logs = format_logs(runner.backend)
    stopped = [t for t in experiment.trials.values() if t.status == TrialStatus.EARLY_STOPPED]
    arms = [t.arm.parameters for t in experiment.trials.values()]
    assert stopped, f"no trial was stopped: {arms}"
    for trial in stopped:
        assert abs(trial.arm.parameters["x"] - 0.3) > 0.3, logs
        reported = results_of(trial.run_metadata["trial_dir"])
        assert len(reported) < 20, logs
        assert not psutil.pid_exists(reported[0]["pid"]), logs
        history = (Path(trial.run_metadata["trial_dir"]) / "status.jsonl").read_text()
        assert json.loads(history.splitlines()[-1])["status"] == "Stopped"
    for trial in experiment.trials.values():
        if trial.status == TrialStatus.COMPLETED:
            assert abs(trial.arm.parameters["x"] - 0.3) < 0.32


def test_a_failed_trial_is_failed_with_its_stderr(tmp_path: Path) -> None:
    runner = LocalBackendRunner(
        str(SCRIPT), str(tmp_path / "exp"), fixed_config={"epochs": 2, "crash": 1},
    )
    experiment = make_experiment(runner)
    orchestrator = Orchestrator(experiment, sobol(1), options(1))
    # Every trial failed, so Ax ends the optimization with its own error.
    with pytest.raises(FailureRateExceededError):
        orchestrator.run_all_trials()
    trial = experiment.trials[0]
    assert trial.status == TrialStatus.FAILED
    assert "crashing on purpose" in runner.poll_exception(trial)


def test_clone_shares_the_backend_and_a_new_runner_restores_the_folder(tmp_path: Path) -> None:
    runner = LocalBackendRunner(str(SCRIPT), str(tmp_path / "exp"), fixed_config={"epochs": 1},
                                max_parallel=3)
    clone = runner.clone()
    assert clone == runner
    assert clone.backend is runner.backend
    experiment = make_experiment(runner)
    Orchestrator(experiment, sobol(1), options(1)).run_all_trials()
    metadata = experiment.trials[0].run_metadata

    # A restarted driver: a new process would have no backend yet.
    runner.close()
    restarted = LocalBackendRunner.deserialize_init_args(
        json.loads(json.dumps(LocalBackendRunner.serialize_init_args(runner)))
    )
    again = LocalBackendRunner(**restarted)
    assert again.poll_trial_status([experiment.trials[0]]) == {TrialStatus.COMPLETED: {0}}
    assert again.backend.experiment_dir == Path(metadata["experiment_dir"])


def test_trials_still_ending_after_a_stop_leave_capacity_free(tmp_path: Path) -> None:
    runner = LocalBackendRunner(str(SCRIPTS / "slow_to_stop.py"), str(tmp_path / "exp"),
                                fixed_config={"linger": 1.0}, max_parallel=1, grace_period=5.0)
    backend = runner.backend
    trial = backend.start_trial({"linger": 1.0})
    wait_for(lambda: backend.fetch_status_results([trial.trial_id])[1],
             what="the trial to report", on_fail=lambda: format_logs(backend))
    assert runner.poll_available_capacity() == 0
    backend.stop_trial(trial.trial_id)
    assert backend.busy_trial_ids() == [(trial.trial_id, "Stopping")]
    # Ax sees the trial as early-stopped at once; waiting for the process
    # would leave the Orchestrator with no capacity and nothing running.
    assert runner.poll_available_capacity() == 1


def test_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(IntegrationError, match="max_parallel=0"):
        LocalBackendRunner(str(SCRIPT), str(tmp_path / "exp"), max_parallel=0)


def test_the_example_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "ax_early_stopping.py"), "--n-trials", "4",
         "--epochs", "6", "--epoch-seconds", "0.02", "--experiment-dir", str(tmp_path / "example")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "best" in completed.stdout


TUNE_METRIC_SCRIPT = SCRIPTS / "tune_metric_epochs.py"


def test_a_script_printing_tune_metric_lines_reports_under_ax(tmp_path: Path) -> None:
    runner = LocalBackendRunner(str(TUNE_METRIC_SCRIPT), str(tmp_path / "exp"),
                                fixed_config={"epochs": 3}, max_parallel=2)
    experiment = make_experiment(runner)
    Orchestrator(experiment, sobol(2), options(2)).run_all_trials()
    logs = format_logs(runner.backend)
    assert {t.status for t in experiment.trials.values()} == {TrialStatus.COMPLETED}, logs
    data = experiment.lookup_data().full_df
    for index in experiment.trials:
        curve = data[data["trial_index"] == index].sort_values("step")
        assert list(curve["step"]) == [1, 2, 3], logs


def test_a_failed_trial_has_its_failure_reason_as_status_reason(tmp_path: Path) -> None:
    runner = LocalBackendRunner(str(TUNE_METRIC_SCRIPT), str(tmp_path / "exp"),
                                fixed_config={"crash": 1})
    experiment = make_experiment(runner)
    with pytest.raises(FailureRateExceededError):
        Orchestrator(experiment, sobol(1), options(1)).run_all_trials()
    trial = experiment.trials[0]
    assert trial.status == TrialStatus.FAILED
    reason = trial.status_reason or ""
    assert "exit" in reason and "3" in reason, reason
    assert "crashing on purpose" in reason


def test_the_client_api_runs_trials_with_our_runner_and_metric(tmp_path: Path) -> None:
    from ax.api.client import Client
    from ax.api.configs import RangeParameterConfig

    from localbackend.integrations.ax import LocalBackendClientMetric, LocalBackendClientRunner

    client = Client()
    client.configure_experiment(
        parameters=[RangeParameterConfig(name="x", bounds=(0.0, 1.0), parameter_type="float")])
    client.configure_optimization(objective="-loss")
    runner = LocalBackendClientRunner(str(TUNE_METRIC_SCRIPT), str(tmp_path / "exp"),
                                      fixed_config={"epochs": 3}, max_parallel=2)
    client.configure_runner(runner)
    client.configure_metrics([LocalBackendClientMetric("loss", lower_is_better=True,
                                                       step_key="epoch")])
    client.run_trials(max_trials=3, parallelism=2, initial_seconds_between_polls=0)
    logs = format_logs(runner.backend)
    summary = client.summarize()
    assert list(summary["trial_status"]) == ["COMPLETED"] * 3, f"{summary}\n{logs}"
    best, _, _, _ = client.get_best_parameterization()
    assert 0.0 <= best["x"] <= 1.0
    assert runner.backend.busy_trial_ids() == []

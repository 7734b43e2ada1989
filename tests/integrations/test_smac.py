"""SMAC's real facades run their trials through SMACRunner as parallel LocalBackend processes."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("smac")

from ConfigSpace import Categorical, Configuration, ConfigurationSpace, Float
from smac import (
    HyperparameterOptimizationFacade,
    MultiFidelityFacade,
    Scenario,
)
from smac.runhistory import StatusType, TrialInfo

from localbackend import IntegrationError, LocalBackend
from localbackend.integrations.smac import SMACRunner, status_type
from tests.helpers import format_logs, status_history
from tests.integrations.conftest import EXAMPLES, SCRIPTS

pytestmark = pytest.mark.integration

SCRIPT = SCRIPTS / "lb_epochs.py"


def space() -> ConfigurationSpace:
    cs = ConfigurationSpace(seed=0)
    cs.add([Float("x", (0.0, 1.0), default=0.3), Float("lr", (0.01, 1.0), default=0.5),
            Categorical("crash", [0, 1], default=0), Categorical("print_cost", [0, 1], default=0),
            Float("epoch_seconds", (0.0, 1.0), default=0.0)])
    return cs


def results_of(backend: LocalBackend, trial_id: int) -> list[dict[str, Any]]:
    path = backend.trial_dir(trial_id) / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def overlapping(backend: LocalBackend) -> bool:
    """Whether a trial was started while another was still running, by the status history.

    The driver's own record (started, then seen finished) is what shows that
    the runner kept two trials going; the trials' result timestamps would
    not, for trials whose epochs take no time.
    """
    spans = []
    for trial_id in range(backend.new_trial_id()):
        history = status_history(backend, trial_id)
        started = min(h["time"] for h in history if h["status"] == "InProgress")
        ended = max(h["time"] for h in history)
        spans.append((started, ended))
    spans.sort()
    return any(later[0] < earlier[1] for earlier, later in pairwise(spans))


def hpo_space() -> ConfigurationSpace:
    cs = ConfigurationSpace(seed=0)
    cs.add([Float("x", (0.0, 1.0), default=0.3)])
    return cs


def test_the_hyperparameter_optimization_facade_runs_to_the_end(tmp_path: Path) -> None:
    scenario = Scenario(hpo_space(), deterministic=True, n_trials=8, objectives="loss",
                        output_directory=tmp_path / "smac", seed=0)
    with LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp", env={"OMP_NUM_THREADS": "1"},
                      grace_period=5.0) as backend:
        runner = SMACRunner(scenario, backend, n_parallel=2)
        smac = HyperparameterOptimizationFacade(
            scenario, runner, overwrite=True,
            initial_design=HyperparameterOptimizationFacade.get_initial_design(
                scenario, n_configs=4),
        )
        incumbent = smac.optimize()
        logs = format_logs(backend)
        trials = list(smac.runhistory.items())
        assert len(trials) == 8, logs
        assert all(value.status == StatusType.SUCCESS for _, value in trials), logs
        assert backend.new_trial_id() == 8
        # Costs are the last loss each script reported.
        for _, value in trials:
            reported = results_of(backend, value.additional_info["trial_id"])
            assert value.cost == pytest.approx(reported[-1]["loss"])
        assert overlapping(backend), "no two trials ran at the same time\n" + logs
        assert 0.0 <= incumbent["x"] <= 1.0
        assert backend.busy_trial_ids() == []


def test_the_multi_fidelity_facade_passes_budgets_to_the_script(tmp_path: Path) -> None:
    scenario = Scenario(hpo_space(), deterministic=True, n_trials=12, objectives="loss",
                        min_budget=1, max_budget=9, output_directory=tmp_path / "smac", seed=0)
    with LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp", grace_period=5.0) as backend:
        runner = SMACRunner(scenario, backend, n_parallel=2)
        smac = MultiFidelityFacade(
            scenario, runner, overwrite=True,
            initial_design=MultiFidelityFacade.get_initial_design(scenario, n_configs=3),
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=3),
        )
        smac.optimize()
        logs = format_logs(backend)
        budgets = set()
        for key, value in smac.runhistory.items():
            assert value.status == StatusType.SUCCESS, logs
            reported = results_of(backend, value.additional_info["trial_id"])
            # The script ran as many epochs as its budget.
            assert len(reported) == round(key.budget), logs
            budgets.add(key.budget)
        assert len(budgets) >= 2, f"only budgets {budgets} were used\n{logs}"


def direct_runner(tmp_path: Path, **scenario_options: Any) -> tuple[LocalBackend, SMACRunner]:
    options = {"objectives": "loss", **scenario_options}
    scenario = Scenario(space(), deterministic=True, output_directory=tmp_path / "smac",
                        **options)
    backend = LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp", grace_period=2.0)
    return backend, SMACRunner(scenario, backend, n_parallel=2)


def trial_info(**values: Any) -> TrialInfo:
    config = Configuration(
        space(),
        values={"x": 0.5, "lr": 0.5, "crash": 0, "print_cost": 0, "epoch_seconds": 0.0, **values},
    )
    return TrialInfo(config=config, seed=0)


def test_a_crash_is_crashed_with_the_stderr_in_the_info(tmp_path: Path) -> None:
    backend, runner = direct_runner(tmp_path)
    with backend:
        runner.submit_trial(trial_info(crash=1))
        runner.submit_trial(trial_info(crash=0))
        assert runner.count_available_workers() == 0
        collected = []
        while runner.is_running():
            runner.wait()
            collected.extend(runner.iter_results())
        collected.extend(runner.iter_results())
    by_crash = {info.config["crash"]: value for info, value in collected}
    crashed = by_crash[1]
    assert crashed.status == StatusType.CRASHED
    assert crashed.cost == float("inf")
    assert "crashing on purpose" in crashed.additional_info["error"]
    assert crashed.additional_info["exit_code"] == 3
    assert by_crash[0].status == StatusType.SUCCESS


def test_run_returns_smac_s_tuple_and_the_cost_line_convention_works(tmp_path: Path) -> None:
    backend, runner = direct_runner(tmp_path, objectives="cost")
    with backend:
        config = trial_info(print_cost=1).config
        status, cost, runtime, cpu_time, info = runner.run(config, budget=2)
        assert status == StatusType.SUCCESS
        reported = results_of(backend, info["trial_id"])
        assert len(reported) == 2
        # The script reported no "cost", so its "cost=" line on stdout counts.
        assert cost == pytest.approx(reported[-1]["loss"])
        assert runtime > 0 and cpu_time > 0
        assert not runner.is_running()


def test_a_trial_over_the_walltime_limit_is_stopped_as_timeout(tmp_path: Path) -> None:
    backend, runner = direct_runner(tmp_path, trial_walltime_limit=1.0)
    with backend:
        slow = trial_info(epoch_seconds=0.2)
        runner.submit_trial(TrialInfo(config=slow.config, budget=1000))
        runner.wait()
        ((_, value),) = list(runner.iter_results())
        assert value.status == StatusType.TIMEOUT
        pid = results_of(backend, value.additional_info["trial_id"])[0]["pid"]
        while backend.busy_trial_ids():
            backend.wait(timeout=1.0)
        assert not psutil.pid_exists(pid)


def test_scenario_with_several_workers_is_refused(tmp_path: Path) -> None:
    scenario = Scenario(space(), n_workers=2, output_directory=tmp_path / "smac")
    with LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp") as backend, pytest.raises(
        IntegrationError, match="n_workers=1"
    ):
        SMACRunner(scenario, backend)


def test_the_example_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "smac_multi_fidelity.py"), "--n-trials", "8",
         "--max-epochs", "9", "--experiment-dir", str(tmp_path / "example"),
         "--output-dir", str(tmp_path / "smac")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "incumbent" in completed.stdout


@pytest.mark.parametrize(("kind", "expected"), [
    ("time_limit", StatusType.TIMEOUT), ("memory_limit", StatusType.MEMORYOUT),
    ("exit", StatusType.CRASHED), ("signal", StatusType.CRASHED), ("hang", StatusType.CRASHED),
    ("lost", StatusType.CRASHED), ("launch", StatusType.CRASHED), (None, StatusType.CRASHED),
])
def test_failure_kinds_map_to_smac_status_types(kind: Any, expected: StatusType) -> None:
    assert status_type(kind) == expected


def test_a_trial_ended_by_the_backend_time_limit_is_timeout_with_its_reason(
    tmp_path: Path,
) -> None:
    scenario = Scenario(space(), deterministic=True, output_directory=tmp_path / "smac",
                        objectives="loss")
    with LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp", grace_period=2.0,
                      time_limit=1.0) as backend:
        runner = SMACRunner(scenario, backend, n_parallel=1)
        slow = trial_info(epoch_seconds=0.2)
        status, cost, _, _, info = runner.run(slow.config, budget=1000)
    assert status == StatusType.TIMEOUT, info
    assert info["failure_kind"] == "time_limit"
    assert "time limit" in info["error"]
    assert cost == float("inf")


def test_validate_waits_for_the_parallel_trials(tmp_path: Path) -> None:
    scenario = Scenario(hpo_space(), deterministic=False, n_trials=4, objectives="loss",
                        output_directory=tmp_path / "smac", seed=0, max_budget=None)
    with LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp", grace_period=5.0) as backend:
        runner = SMACRunner(scenario, backend, n_parallel=2)
        smac = HyperparameterOptimizationFacade(
            scenario, runner, overwrite=True,
            initial_design=HyperparameterOptimizationFacade.get_initial_design(
                scenario, n_configs=2),
        )
        incumbent = smac.optimize()
        before = backend.new_trial_id()
        cost = runner.validate(smac, incumbent)
        logs = format_logs(backend)
        assert isinstance(cost, float) and cost == cost, logs  # not NaN
        ran = range(before, backend.new_trial_id())
        assert len(ran) >= 1, logs
        losses = [results_of(backend, t)[-1]["loss"] for t in ran]
        assert cost == pytest.approx(sum(losses) / len(losses))
        assert backend.busy_trial_ids() == []


def test_the_scenarios_trial_limits_are_the_keepers(tmp_path: Path) -> None:
    hog = tmp_path / "hog.py"
    hog.write_text(
        "import time\nfrom localbackend import report\n"
        "blocks = [bytearray(8 << 20) for _ in range(50)]\nreport(loss=1.0)\ntime.sleep(60)\n"
    )
    scenario = Scenario(space(), deterministic=True, output_directory=tmp_path / "smac",
                        objectives="loss", trial_memory_limit=100, trial_walltime_limit=30)
    with LocalBackend(hog, experiment_dir=tmp_path / "exp", binary=[sys.executable],
                      grace_period=1.0) as backend:
        runner = SMACRunner(scenario, backend, n_parallel=1)
        status, _, _, _, info = runner.run(trial_info().config)
        command = json.loads((backend.trial_dir(0) / "command.json").read_text())
    assert status == StatusType.MEMORYOUT, info
    assert info["failure_kind"] == "memory_limit"
    assert command["limits"]["memory_limit"] == 100 << 20
    assert command["limits"]["time_limit"] == 30.0

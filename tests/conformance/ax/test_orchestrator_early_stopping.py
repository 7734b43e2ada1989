"""Ax's ``test_orchestrator_with_odd_index_early_stopping_strategy`` with ``LocalBackendRunner``.

Source (MIT License): ax-platform 1.3.1, ``ax/orchestration/tests/test_orchestrator.py``
(https://github.com/facebook/Ax, tag 1.3.1), ``OrchestratorTestMixin``.

Adapted: Ax's test drives ``RunnerWithEarlyStoppingStrategy``, whose trials
change status on a fixed schedule of polls, with ``stop`` mocked away, and a
simulated Branin map metric. Here every trial is a real process
(``tests/integrations/scripts/lb_epochs.py``, 40 epochs of 0.1 s), the
metric is ``LocalBackendMapMetric`` and ``stop`` really ends the process
tree; a spy counts the calls. The sets ``trials_early_stopped_so_far`` and
``trials_completed_so_far``, which Ax's ``MockOrchestrator`` reports, are read
off the experiment's trials. What depends on the mock's poll schedule (the
exact results of each step, the row counts of a fixed number of
timestamps) is replaced by what must hold whatever the timing: trial 1 alone
is early-stopped, by one ``stop``, with the strategy's reason; 0 and 2
complete; each trial has data; the savings estimate is at most Ax's 1/3
(which is for a stop at the very first step). The
strategy stops trial 1 once it has data, since Ax refuses to early-stop a
trial without any, which the mock's trials always had.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import psutil
import pytest

pytest.importorskip("ax")

from ax.core.base_trial import TrialStatus
from ax.core.experiment import Experiment
from ax.early_stopping.strategies import BaseEarlyStoppingStrategy
from ax.generation_strategy.generation_node import GenerationNode
from ax.orchestration.orchestrator import Orchestrator
from ax.orchestration.orchestrator_options import OrchestratorOptions

from localbackend.integrations.ax import LocalBackendRunner, close_all_backends
from tests.helpers import format_logs
from tests.integrations.conftest import SCRIPTS
from tests.integrations.test_ax import make_experiment, results_of, sobol

pytestmark = pytest.mark.integration

# Long enough (4 s) that trial 1 is still running when its first data arrive,
# even on a loaded machine.
EPOCHS = 40


@pytest.fixture(autouse=True)
def close_backends() -> Iterator[None]:
    yield
    close_all_backends()


class OddIndexEarlyStoppingStrategy(BaseEarlyStoppingStrategy):  # type: ignore[misc]
    def _is_harmful(self, trial_indices: set[int], experiment: Experiment) -> bool:
        return False

    # Trials with odd indices will be early stopped
    # Thus, with 3 total trials, trial #1 will be early stopped
    def _should_stop_trials_early(
        self,
        trial_indices: set[int],
        experiment: Experiment,
        current_node: GenerationNode | None = None,
    ) -> dict[int, str | None]:
        return {
            idx: f"Trial {idx} stopped by OddIndexEarlyStoppingStrategy"
            for idx in trial_indices
            if idx % 2 == 1 and has_data(experiment, idx)
        }


def has_data(experiment: Experiment, index: int) -> bool:
    # Added: a real trial has no data in its first moments, and Ax refuses to
    # early-stop a trial without data ("mark trial abandoned instead").
    return not experiment.lookup_data(trial_indices=[index]).full_df.empty


class CountingRunner(LocalBackendRunner):
    stops: ClassVar[list[int]] = []

    def stop(self, trial: Any, reason: str | None = None) -> dict[str, Any]:
        type(self).stops.append(trial.index)
        return super().stop(trial, reason)


def test_orchestrator_with_odd_index_early_stopping_strategy(tmp_path: Any) -> None:
    total_trials = 3
    CountingRunner.stops = []
    runner = CountingRunner(
        str(SCRIPTS / "lb_epochs.py"), str(tmp_path / "exp"),
        fixed_config={"epochs": EPOCHS, "epoch_seconds": 0.1}, max_parallel=3, grace_period=5.0,
    )
    experiment = make_experiment(runner)
    orchestrator = Orchestrator(
        experiment=experiment,
        generation_strategy=sobol(3),
        options=OrchestratorOptions(
            init_seconds_between_polls=0,  # type: ignore[arg-type]
            min_seconds_before_poll=0.0,
            seconds_between_polls_backoff_factor=1.0,
            early_stopping_strategy=OddIndexEarlyStoppingStrategy(),
        ),
    )
    res_list = list(orchestrator.run_trials_and_yield_results(max_trials=total_trials))
    logs = format_logs(runner.backend)
    assert res_list, logs
    # The mock orchestrator's report_results returned these sets; read them off the trials.
    by_status = {status: {i for i, t in experiment.trials.items() if t.status == status}
                 for status in (TrialStatus.EARLY_STOPPED, TrialStatus.COMPLETED)}
    assert by_status[TrialStatus.EARLY_STOPPED] == {1}, logs
    assert by_status[TrialStatus.COMPLETED] == {0, 2}, logs
    assert CountingRunner.stops == [1], logs

    looked_up_data = orchestrator.experiment.lookup_data()
    assert set(looked_up_data.full_df["trial_index"]) == {0, 1, 2}, logs
    stopped_results = results_of(experiment.trials[1].run_metadata["trial_dir"])
    assert len(stopped_results) < EPOCHS, logs
    assert not psutil.pid_exists(stopped_results[0]["pid"]), logs

    ess = orchestrator.options.early_stopping_strategy
    assert ess is not None
    # Ax's 1/3 is for a stop at the first step; a real stop comes a few steps in.
    savings = ess.estimate_early_stopping_savings(orchestrator.experiment)
    assert 0.0 < savings <= 1.0 / 3.0 + 1e-9, savings

    # Verify that the status reason from early stopping strategy is retained.
    early_stopped_trial = orchestrator.experiment.trials[1]
    assert early_stopped_trial.status == TrialStatus.EARLY_STOPPED
    assert early_stopped_trial.status_reason == "Trial 1 stopped by OddIndexEarlyStoppingStrategy"

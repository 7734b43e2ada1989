"""Syne Tune's own flows end to end: promotion of trials stopped at the rung, resume of a tuning."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

pytest.importorskip("syne_tune")

from syne_tune import StoppingCriterion, Tuner
from syne_tune.backend.trial_status import Trial
from syne_tune.config_space import uniform
from syne_tune.experiments import load_experiment
from syne_tune.optimizer.scheduler import SchedulerDecision, TrialScheduler, TrialSuggestion
from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving

from localbackend.integrations.syne_tune import SyneTuneBackend
from tests.helpers import format_logs
from tests.integrations.test_syne_tune import (  # noqa: F401 - the autouse fixture
    EPOCHS_SCRIPT,
    RecordResults,
    make_tuner,
    syne_tune_folder,
)

pytestmark = pytest.mark.integration


class RungPromotion(TrialScheduler):  # type: ignore[misc]
    """Promotion-type halving whose script stops at the rung: ``epochs=2``, then ``epochs=4``.

    Every trial is paused at epoch 2, after its script has already exited;
    once all are paused, the best half is resumed with ``epochs=4``.
    """

    def __init__(self, lrs: list[float]) -> None:
        super().__init__(random_seed=0)
        self.to_start = [{"lr": lr, "epochs": 2} for lr in lrs]
        self.n_trials = len(lrs)
        self.paused: dict[int, float] = {}
        self.to_promote: list[int] | None = None

    def suggest(self) -> TrialSuggestion | None:
        if self.to_start:
            return TrialSuggestion.start_suggestion(self.to_start.pop(0))
        if self.to_promote is None and len(self.paused) == self.n_trials:
            ranked = sorted(self.paused, key=self.paused.__getitem__)
            self.to_promote = ranked[: self.n_trials // 2]
        if self.to_promote:
            trial_id = self.to_promote.pop(0)
            return TrialSuggestion.resume_suggestion(trial_id, {"lr": 1.0, "epochs": 4})
        return None

    def on_trial_result(self, trial: Trial, result: dict[str, Any]) -> str:
        if result["epoch"] == 2 and trial.trial_id not in self.paused:
            self.paused[trial.trial_id] = result["loss"]
            return str(SchedulerDecision.PAUSE)
        return str(SchedulerDecision.CONTINUE)

    def metric_names(self) -> list[str]:
        return ["loss"]

    def metric_mode(self) -> str:
        return "min"


def test_trials_paused_after_their_script_stopped_at_the_rung_are_promoted() -> None:
    lrs = [1.0, 0.5, 0.2, 0.1]
    scheduler = RungPromotion(lrs)
    recorder = RecordResults()
    with SyneTuneBackend(EPOCHS_SCRIPT, grace_period=5.0) as backend:
        # One worker: the scheduler never answers None (which ends the Tuner) before it promotes.
        tuner = make_tuner(backend, scheduler, StoppingCriterion(max_num_trials_completed=2), 1,
                           recorder, wait_trial_completion_when_stopping=True)
        tuner.run()
        logs = format_logs(backend.local)
        statuses, _ = backend.fetch_status_results(list(range(len(lrs))))
    final = {trial_id: status for trial_id, (_, status) in statuses.items()}
    # The two best (highest lr) ran on from their checkpoints to epoch 4, in a second run;
    # the other two stay paused at the rung, as under Syne Tune's own backend.
    assert final == {0: "Completed", 1: "Completed", 2: "Paused", 3: "Paused"}, logs
    assert sorted(recorder.resumed) == [0, 1], logs
    for trial_id in (0, 1):
        assert [(r["epoch"], r["run"]) for r in recorder.of(trial_id)] == [
            (1, 1), (2, 1), (3, 2), (4, 2)], logs
    for trial_id in (2, 3):
        assert [r["epoch"] for r in recorder.of(trial_id)] == [1, 2], logs


def launch_first_tuning(experiment_name: str) -> None:
    """As Syne Tune's ``examples/launch_resume_tuning.py``: the backend is left to the Tuner."""
    scheduler = AsynchronousSuccessiveHalving(
        config_space={"lr": uniform(0.001, 1.0), "epochs": 3},
        metric="loss", time_attr="epoch", max_t=3, random_seed=1,
    )
    tuner = Tuner(
        trial_backend=SyneTuneBackend(str(EPOCHS_SCRIPT), grace_period=5.0),
        scheduler=scheduler,
        stop_criterion=StoppingCriterion(max_num_trials_started=2),
        n_workers=2, tuner_name=experiment_name, suffix_tuner_name=False,
        sleep_time=0.05, print_update_interval=3600,
    )
    tuner.run()


def test_syne_tune_s_resume_tuning_example_flow() -> None:
    experiment_name = "resume-tuning-example"
    launch_first_tuning(experiment_name)

    tuning_experiment = load_experiment(experiment_name, load_tuner=True)
    assert tuning_experiment.tuner is not None  # it was None: the load had failed
    shutil.copy(tuning_experiment.path / "tuner.dill",
                tuning_experiment.path / "tuner-backup.dill")
    tuning_experiment.tuner.stop_criterion = StoppingCriterion(max_num_trials_started=4)
    backend = tuning_experiment.tuner.trial_backend
    try:
        tuning_experiment.tuner.run()
        assert isinstance(backend, SyneTuneBackend)
        logs = format_logs(backend.local)
        assert backend.new_trial_id() >= 4, logs
        statuses, _ = backend.fetch_status_results(list(range(backend.new_trial_id())))
        assert {s for _, s in statuses.values()} <= {"Completed", "Stopped"}, logs
        assert backend.busy_trial_ids() == [], logs
    finally:
        backend.close()

"""Syne Tune in a notebook: ``Tuner.load`` right after ``tuner.run()``, in the same process."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("syne_tune")

from syne_tune import StoppingCriterion, Tuner
from syne_tune.config_space import uniform
from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving

from localbackend import ExperimentMovedError
from localbackend.integrations.syne_tune import SyneTuneBackend
from tests.integrations.conftest import SCRIPTS

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def syne_tune_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "syne-tune"
    monkeypatch.setenv("SYNETUNE_FOLDER", str(folder))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return folder


def test_load_right_after_run_in_the_same_process_carries_the_experiment_on() -> None:
    scheduler = AsynchronousSuccessiveHalving(
        config_space={"lr": uniform(0.001, 1.0), "epochs": 2},
        metric="loss", time_attr="epoch", max_t=2, random_seed=1,
    )
    # As in a notebook: no `with`, no close(); the Tuner calls stop_all() only.
    backend = SyneTuneBackend(SCRIPTS / "st_epochs.py", grace_period=5.0)
    tuner = Tuner(
        trial_backend=backend, scheduler=scheduler,
        stop_criterion=StoppingCriterion(max_num_trials_started=2), n_workers=1,
        sleep_time=0.05, print_update_interval=3600,
        wait_trial_completion_when_stopping=True,
    )
    tuner.run()
    experiment_dir = backend.experiment_dir
    started_first = backend.local.new_trial_id()

    loaded = Tuner.load(str(tuner.tuner_path))  # raised ExperimentLockedError before
    loaded_backend = loaded.trial_backend
    try:
        assert isinstance(loaded_backend, SyneTuneBackend)
        assert loaded_backend.experiment_dir == experiment_dir
        with pytest.raises(ExperimentMovedError, match="restored"):
            backend.fetch_status_results([0])
        loaded.stop_criterion = StoppingCriterion(max_num_trials_started=started_first + 2)
        loaded.run()
        started = loaded_backend.local.new_trial_id()
        assert started >= started_first + 2
        statuses, _ = loaded_backend.fetch_status_results(list(range(started)))
        # ASHA stops a trial once it reaches max_t; none is left running.
        assert {status for _, status in statuses.values()} <= {"Completed", "Stopped"}, statuses
        assert loaded_backend.local.busy_trial_ids() == []
    finally:
        loaded_backend.close()

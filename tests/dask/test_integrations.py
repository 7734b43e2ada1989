"""The tuner adapters, unchanged, on a backend whose trials run on the Dask cluster."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from localbackend import LocalBackend
from localbackend.launchers.dask import DaskLauncher
from tests.dask.conftest import Cluster
from tests.helpers import format_logs

pytestmark = [pytest.mark.dask, pytest.mark.integration]
pytest.importorskip("distributed")


def test_optuna_prunes_trials_that_run_on_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    optuna = pytest.importorskip("optuna")
    from localbackend.integrations.optuna import OptunaRunner
    from tests.integrations.test_optuna import SCRIPT, config_from, results_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for lr in (1.0, 0.9, 0.001, 0.002):
        study.enqueue_trial({"lr": lr})
    with LocalBackend(SCRIPT, experiment_dir=tmp_path / "exp", grace_period=5.0,
                      launcher=DaskLauncher(cluster.address)) as backend:
        OptunaRunner(study, backend, metric="loss", step="epoch").optimize(
            config_from, n_trials=4, n_parallel=2
        )
        logs = format_logs(backend)
        states = {t.params["lr"]: t.state.name for t in study.trials}
        assert states == {1.0: "COMPLETE", 0.9: "COMPLETE", 0.001: "PRUNED",
                          0.002: "PRUNED"}, logs
        for frozen in study.trials:
            if frozen.state.name == "PRUNED":
                pid = results_of(backend, frozen.user_attrs["localbackend_trial_id"])[0]["pid"]
                assert not psutil.pid_exists(pid), f"a pruned trial's process {pid} lives"
        assert backend.busy_trial_ids() == []


def test_syne_tune_asha_stops_trials_that_run_on_the_cluster(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("syne_tune")
    monkeypatch.setenv("SYNETUNE_FOLDER", str(tmp_path / "syne-tune"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from syne_tune import StoppingCriterion
    from syne_tune.config_space import uniform
    from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving

    from localbackend.integrations.syne_tune import SyneTuneBackend
    from tests.integrations.test_syne_tune import EPOCHS_SCRIPT, RecordResults, make_tuner

    points = [{"lr": 1.0}, {"lr": 0.01}, {"lr": 0.005}]
    scheduler = AsynchronousSuccessiveHalving(
        config_space={"lr": uniform(0.001, 1.0), "epochs": 30, "epoch_seconds": 0.02},
        metric="loss", time_attr="epoch", max_t=30, grace_period=1, reduction_factor=3,
        searcher_kwargs={"points_to_evaluate": points}, random_seed=1,
    )
    recorder = RecordResults()
    with SyneTuneBackend(EPOCHS_SCRIPT, grace_period=5.0,
                         launcher=DaskLauncher(cluster.address)) as backend:
        tuner = make_tuner(backend, scheduler, StoppingCriterion(max_num_trials_started=2), 1,
                           recorder, wait_trial_completion_when_stopping=True)
        tuner.run()
        logs = format_logs(backend.local)
        assert backend.busy_trial_ids() == [], logs
        assert recorder.of(0)[-1]["epoch"] == 30, logs
        for trial_id in (1, 2):
            assert [r["epoch"] for r in recorder.of(trial_id)] == [1], logs
        assert tuner.best_config()[0] == 0

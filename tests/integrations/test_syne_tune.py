"""Syne Tune's real Tuner drives SyneTuneBackend: ASHA, PBT, pause/resume, save/load."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("syne_tune")

from syne_tune import StoppingCriterion, Tuner
from syne_tune.backend.trial_status import Trial
from syne_tune.config_space import uniform
from syne_tune.optimizer.scheduler import (
    SchedulerDecision,
    TrialScheduler,
    TrialSuggestion,
)
from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving
from syne_tune.optimizer.schedulers.pbt import PopulationBasedTraining
from syne_tune.results_callback import StoreResultsCallback
from syne_tune.tuner_callback import TunerCallback

from localbackend import InvalidTransitionError
from localbackend.integrations.syne_tune import SyneTuneBackend
from tests.helpers import format_logs, remove_tree_under_writers, wait_for
from tests.integrations.conftest import EXAMPLES, SCRIPTS

pytestmark = pytest.mark.integration

EPOCHS_SCRIPT = SCRIPTS / "st_epochs.py"
GATED_SCRIPT = SCRIPTS / "st_gated.py"


@pytest.fixture(autouse=True)
def syne_tune_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the Tuner's results under tmp_path instead of ~/syne-tune."""
    folder = tmp_path / "syne-tune"
    monkeypatch.setenv("SYNETUNE_FOLDER", str(folder))
    # Syne Tune's own LocalBackend sets this at import time unless it is set.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return folder


@pytest.fixture
def backend() -> Iterator[SyneTuneBackend]:
    with SyneTuneBackend(EPOCHS_SCRIPT, grace_period=5.0) as st_backend:
        yield st_backend


class RecordResults(TunerCallback):  # type: ignore[misc]
    """Every result the Tuner handed to the scheduler, with the decision taken."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, Any], str]] = []
        self.resumed: list[int] = []

    def on_trial_result(self, trial: Trial, status: str, result: dict[str, Any],
                        decision: str) -> None:
        self.seen.append((trial.trial_id, result, decision))

    def on_resume_trial(self, trial: Trial) -> None:
        self.resumed.append(trial.trial_id)

    def of(self, trial_id: int) -> list[dict[str, Any]]:
        return [result for tid, result, _ in self.seen if tid == trial_id]


def make_tuner(backend: SyneTuneBackend, scheduler: Any, stop: Any, n_workers: int,
               recorder: RecordResults, **kwargs: Any) -> Tuner:
    return Tuner(
        trial_backend=backend,
        scheduler=scheduler,
        stop_criterion=stop,
        n_workers=n_workers,
        sleep_time=0.05,
        print_update_interval=3600,
        callbacks=[StoreResultsCallback(), recorder],
        **kwargs,
    )


def status_history(backend: SyneTuneBackend, trial_id: int) -> list[dict[str, Any]]:
    path = backend.local.trial_dir(trial_id) / "status.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_asha_stops_the_worse_trials_and_their_processes_end(
    backend: SyneTuneBackend,
) -> None:
    # One worker, so the order is fixed: the good config reaches every rung
    # first, and each worse one is stopped at its first rung.
    points = [{"lr": 1.0}, {"lr": 0.01}, {"lr": 0.005}]
    scheduler = AsynchronousSuccessiveHalving(
        config_space={"lr": uniform(0.001, 1.0), "epochs": 30, "epoch_seconds": 0.02},
        metric="loss", time_attr="epoch", max_t=30, grace_period=1, reduction_factor=3,
        searcher_kwargs={"points_to_evaluate": points}, random_seed=1,
    )
    recorder = RecordResults()
    tuner = make_tuner(backend, scheduler, StoppingCriterion(max_num_trials_started=2), 1,
                       recorder, wait_trial_completion_when_stopping=True)
    tuner.run()

    logs = format_logs(backend.local)
    assert backend.busy_trial_ids() == [], logs
    assert [recorder.of(0)[-1]["epoch"]] == [30], logs
    for trial_id in (1, 2):
        statuses = [entry["status"] for entry in status_history(backend, trial_id)]
        assert statuses[-1] == "Stopped", logs
        assert [r["epoch"] for r in recorder.of(trial_id)] == [1], logs
        lines = [line for line in backend.stdout(trial_id) if "[tune-metric]" in line]
        assert len(lines) < 30, "a stopped trial ran to the end\n" + logs
    assert tuner.best_config()[0] == 0


def test_pbt_starts_new_trials_from_a_copy_of_the_best_checkpoint(tmp_path: Path) -> None:
    points = [{"lr": 1.0}, {"lr": 0.01}]
    scheduler = PopulationBasedTraining(
        config_space={"lr": uniform(0.001, 1.0), "epochs": 8, "epoch_seconds": 0.1},
        metric="loss", time_attr="epoch", max_t=8, population_size=2,
        perturbation_interval=2, searcher_kwargs={"points_to_evaluate": points},
        random_seed=3,
    )
    recorder = RecordResults()
    with SyneTuneBackend(EPOCHS_SCRIPT, grace_period=5.0) as backend:
        tuner = make_tuner(backend, scheduler, StoppingCriterion(max_num_trials_started=2), 2,
                           recorder, wait_trial_completion_when_stopping=True)
        tuner.run()
        logs = format_logs(backend.local)
        assert backend.new_trial_id() >= 3, logs
        # Trial 1 (the worse) is stopped and replaced by trial 2, which starts
        # from trial 0's checkpoint: its first epoch follows trial 0's.
        assert status_history(backend, 1)[-1]["status"] == "Stopped", logs
        clone = recorder.of(2)
        assert clone and clone[0]["epoch"] > 1, logs
        # The source's checkpoint says run 1, so the clone's first run is run 2.
        assert clone[0]["run"] == 2, "the copied checkpoint was not the source's\n" + logs


class PromoteBest(TrialScheduler):  # type: ignore[misc]
    """Promotion-type successive halving: pause every trial at ``milestone``; then resume the best.

    Syne Tune 0.16 no longer ships a scheduler that pauses, so this small one
    exercises PAUSE and resume through the real Tuner.
    """

    def __init__(self, configs: list[dict[str, Any]], milestone: int) -> None:
        super().__init__(random_seed=0)
        self.configs = list(configs)
        self.milestone = milestone
        self.paused: dict[int, float] = {}
        self.promoted: int | None = None

    def suggest(self) -> TrialSuggestion | None:
        if self.configs:
            return TrialSuggestion.start_suggestion(self.configs.pop(0))
        if self.promoted is None and self.paused:
            self.promoted = min(self.paused, key=self.paused.__getitem__)
            return TrialSuggestion.resume_suggestion(self.promoted)
        return None

    def on_trial_result(self, trial: Trial, result: dict[str, Any]) -> str:
        if trial.trial_id != self.promoted and result["epoch"] >= self.milestone:
            self.paused[trial.trial_id] = result["loss"]
            return str(SchedulerDecision.PAUSE)
        return str(SchedulerDecision.CONTINUE)

    def metric_names(self) -> list[str]:
        return ["loss"]

    def metric_mode(self) -> str:
        return "min"


def test_a_pausing_scheduler_pauses_and_resumes_from_the_checkpoint(
    backend: SyneTuneBackend,
) -> None:
    configs = [{"lr": lr, "epochs": 5, "epoch_seconds": 0.2} for lr in (0.1, 1.0, 0.5)]
    scheduler = PromoteBest(configs, milestone=2)
    recorder = RecordResults()
    tuner = make_tuner(backend, scheduler, StoppingCriterion(max_wallclock_time=120), 1,
                       recorder)
    tuner.run()

    logs = format_logs(backend.local)
    assert recorder.resumed == [1], logs
    for trial_id in (0, 2):
        assert status_history(backend, trial_id)[-1]["status"] == "Paused", logs
    assert [e["status"] for e in status_history(backend, 1)][-1] == "Completed", logs
    delivered = recorder.of(1)
    epochs = [result["epoch"] for result in delivered]
    assert epochs == sorted(set(epochs)), f"duplicate or stale results {epochs}\n{logs}"
    assert epochs[-1] == 5, logs
    after_resume = [result for result in delivered if result["epoch"] > 2]
    assert after_resume and all(result["run"] == 2 for result in after_resume), logs


def test_a_trial_paused_after_its_script_ended_is_paused_and_resumes_with_its_new_config(
    backend: SyneTuneBackend,
) -> None:
    # A promotion scheduler's script stops at the rung (epochs=2); the Tuner
    # pauses it there and later promotes it with epochs=4.
    trial = backend.start_trial({"epochs": 2})
    first = fetch_until(backend, trial.trial_id, lambda status, _: status == "Completed")
    assert [r["epoch"] for r in first] == [1, 2]
    backend.pause_trial(trial.trial_id)
    statuses, _ = backend.fetch_status_results([trial.trial_id])
    assert statuses[trial.trial_id][1] == "Paused"
    resumed = backend.resume_trial(trial.trial_id, new_config={"epochs": 4})
    assert resumed.status == "InProgress"
    again = fetch_until(backend, trial.trial_id, lambda status, _: status == "Completed")
    assert [(r["epoch"], r["run"]) for r in again] == [(3, 2), (4, 2)], format_logs(backend.local)
    # LocalBackend itself runs a Completed trial again only when asked to.
    with pytest.raises(InvalidTransitionError, match="Completed"):
        backend.local.resume_trial(trial.trial_id)


def test_a_failed_trial_keeps_its_status_on_resume_and_its_reason_in_metadata(
    backend: SyneTuneBackend,
) -> None:
    trial = backend.start_trial({"epochs": "not-a-number"})  # argparse exits 2
    fetch_until(backend, trial.trial_id, lambda status, _: status == "Failed")
    backend.pause_trial(trial.trial_id)
    assert backend.resume_trial(trial.trial_id).status == "Failed"
    statuses, _ = backend.fetch_status_results([trial.trial_id])
    found, status = statuses[trial.trial_id]
    assert status == "Failed"
    assert found.metadata["failure_kind"] == "exit", found.metadata
    assert "2" in found.metadata["failure_reason"], found.metadata
    assert found.metadata["exit_code"] == 2
    assert backend._trial_dict[trial.trial_id].metadata["failure_kind"] == "exit"


def test_syne_tune_local_backend_surface(tmp_path: Path) -> None:
    with SyneTuneBackend(str(EPOCHS_SCRIPT), f"{sys.executable} -u", False, False, True,
                         experiment_dir=tmp_path / "exp", grace_period=5.0) as ours:
        assert ours.binary == f"{sys.executable} -u"
        assert ours.entry_point == str(EPOCHS_SCRIPT)
        assert ours.local_path == ours.experiment_dir == tmp_path / "exp"
        trial = ours.start_trial({"epochs": 1, "name": "x"})
        assert ours.trial_path(trial.trial_id) == ours.local.trial_dir(trial.trial_id)
        assert ours.checkpoint_trial_path(trial.trial_id) == (
            ours.trial_path(trial.trial_id) / "checkpoints")
        fetch_until(ours, trial.trial_id, lambda status, _: status == "Completed")
        assert ours.checkpoint_trial_path(trial.trial_id).is_dir()
        # Syne Tune's names for the logs, and its readers of them.
        folder = ours.trial_path(trial.trial_id)
        assert (folder / "std.out").read_text() == (folder / "stdout.log").read_text()
        assert "[tune-metric]" in (folder / "std.out").read_text()
        assert (folder / "std.err").exists()
        other = tmp_path / "other.py"
        other.write_text(EPOCHS_SCRIPT.read_text())
        ours.entry_point = str(other)  # a plain attribute in Syne Tune's LocalBackend
        assert ours.entry_point == str(other) == str(ours.local.entrypoint_path())
    with SyneTuneBackend(EPOCHS_SCRIPT, experiment_dir=tmp_path / "e2") as default:
        assert default.binary == sys.executable


def test_stop_all_hides_results_the_tuner_never_fetched(backend: SyneTuneBackend) -> None:
    trial = backend.start_trial({"epochs": 100_000, "epoch_seconds": 0.001})
    wait_for(lambda: sum("[tune-metric]" in line for line in backend.stdout(trial.trial_id)) > 5,
             what="results to be written", on_fail=lambda: format_logs(backend.local))
    backend.stop_all()
    statuses, results = backend.fetch_status_results([trial.trial_id])
    assert statuses[trial.trial_id][1] == "Stopped"
    assert results == []


def fetch_until(backend: Any, trial_id: int, done: Any, timeout: float = 30.0
                ) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []

    def step() -> bool:
        statuses, new = backend.fetch_status_results([trial_id])
        results.extend(result for _, result in new)
        return bool(done(statuses[trial_id][1], results))

    wait_for(step, timeout=timeout, what="results", interval=0.02,
             on_fail=lambda: "".join(backend.stdout(trial_id) + backend.stderr(trial_id)))
    return results


def syne_tune_local_backend(entry_point: Path) -> Any:
    from syne_tune.backend import LocalBackend as SyneTuneLocalBackend

    return SyneTuneLocalBackend(entry_point=str(entry_point))


def finish_syne_tune_processes(st_backend: Any, earlier: Sequence[Any] = ()) -> None:
    """Reap what Syne Tune's backend leaves: it kills a paused process but never waits for it."""
    for process in [*earlier, *st_backend.trial_subprocess.values()]:
        process.wait(timeout=30)


def test_values_with_spaces_reach_the_script_whole(backend: SyneTuneBackend) -> None:
    value = "two words; and 'quotes'"
    trial = backend.start_trial({"epochs": 1, "name": value})
    results = fetch_until(backend, trial.trial_id, lambda status, _: status == "Completed")
    assert [result["name"] for result in results] == [value]

    # Syne Tune's own LocalBackend splits its command line on spaces.
    theirs = syne_tune_local_backend(EPOCHS_SCRIPT)
    try:
        their_trial = theirs.start_trial({"epochs": 1, "name": value})
        their_results = fetch_until(theirs, their_trial.trial_id,
                                    lambda status, _: status == "Completed")
    finally:
        finish_syne_tune_processes(theirs)
    assert [result["name"] for result in their_results] == ["two"]


def run_gated_trial(backend: Any, gate: Path, before_resume: Any = None) -> list[dict[str, Any]]:
    """Pause after epoch 1 while epoch 2 is already written; resume; return what arrives."""
    trial = backend.start_trial({"gate": str(gate)})
    trial_id = trial.trial_id
    first = fetch_until(backend, trial_id, lambda _, results: results)
    assert [(r["epoch"], r["run"]) for r in first] == [(1, 1)]
    gate.touch()
    wait_for(lambda: sum("[tune-metric]" in line for line in backend.stdout(trial_id)) == 2,
             what="epoch 2 to be written")
    backend.pause_trial(trial_id, result=first[-1])
    if before_resume is not None:
        before_resume()
    return fetch_after_resume(backend, trial_id)


def fetch_after_resume(backend: Any, trial_id: int) -> list[dict[str, Any]]:
    def run_ended() -> bool:
        return all(tid != trial_id for tid, _ in backend.busy_trial_ids())

    wait_for(run_ended, what="the paused run to end")
    backend.resume_trial(trial_id)
    return fetch_until(backend, trial_id, lambda status, _: status == "Completed")


def test_no_result_of_the_paused_run_arrives_after_the_resume(
    tmp_path: Path, syne_tune_folder: Path
) -> None:
    with SyneTuneBackend(GATED_SCRIPT, grace_period=5.0) as ours:
        after_resume = run_gated_trial(ours, tmp_path / "gate-ours")
    assert [(r["epoch"], r["run"]) for r in after_resume] == [(1, 2), (2, 2)]

    # Syne Tune's own LocalBackend re-reads the whole log and delivers the
    # paused run's epoch 2 as if the resumed run had reported it.
    theirs = syne_tune_local_backend(GATED_SCRIPT)
    paused_run: list[Any] = []
    try:
        their_after_resume = run_gated_trial(
            theirs, tmp_path / "gate-theirs",
            before_resume=lambda: paused_run.append(theirs.trial_subprocess[0]),
        )
    finally:
        finish_syne_tune_processes(theirs, paused_run)
    assert (2, 1) in [(r["epoch"], r["run"]) for r in their_after_resume]


def test_tuner_save_and_load_keep_the_backend(syne_tune_folder: Path) -> None:
    points = [{"lr": 1.0}, {"lr": 0.5}]
    scheduler = AsynchronousSuccessiveHalving(
        config_space={"lr": uniform(0.001, 1.0), "epochs": 2},
        metric="loss", time_attr="epoch", max_t=2,
        searcher_kwargs={"points_to_evaluate": points}, random_seed=1,
    )
    recorder = RecordResults()
    with SyneTuneBackend(EPOCHS_SCRIPT, grace_period=5.0) as backend:
        tuner = make_tuner(backend, scheduler, StoppingCriterion(max_num_trials_started=1), 2,
                           recorder, wait_trial_completion_when_stopping=True)
        tuner.run()
        experiment_dir = backend.experiment_dir
        best = tuner.best_config()
        final = {tid: status for tid, (_, status) in
                 backend.fetch_status_results([0, 1])[0].items()}
    assert (tuner.tuner_path / "tuner.dill").exists()

    loaded = Tuner.load(str(tuner.tuner_path))
    loaded_backend = loaded.trial_backend
    try:
        assert isinstance(loaded_backend, SyneTuneBackend)
        assert loaded_backend.experiment_dir == experiment_dir
        assert loaded_backend.trial_ids == [0, 1]
        assert loaded.best_config() == best
        statuses, results = loaded_backend.fetch_status_results([0, 1])
        assert {tid: status for tid, (_, status) in statuses.items()} == final
        assert results == []
        assert loaded_backend.stdout(0)
    finally:
        loaded_backend.close()


def test_the_example_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "syne_tune_asha.py"), "--max-trials", "4",
         "--epochs", "4", "--experiment-dir", str(tmp_path / "example")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "best config" in completed.stdout
    assert not [p for p in psutil.Process().children(recursive=True) if p.is_running()]


def test_a_with_block_that_raises_keeps_its_error_when_closing_fails_too(
    tmp_path: Path,
) -> None:
    root = tmp_path / "exp"
    ours = SyneTuneBackend(EPOCHS_SCRIPT, experiment_dir=root, grace_period=5.0)
    with pytest.raises(ValueError, match="the block's own error") as caught, ours:
        ours.start_trial({"epochs": 1})
        remove_tree_under_writers(root)
        raise ValueError("the block's own error")
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "deleted or moved" in notes and str(root) in notes, notes

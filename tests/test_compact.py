"""Records of trials that cannot change are kept packed, and come back whole when touched."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

from localbackend import LocalBackend, Status
from localbackend._paths import ExperimentPaths
from localbackend.core._compact import TrialRecords
from localbackend.core._limits import TrialLimits
from localbackend.core._trials import TrialRecord
from tests.helpers import (
    collect,
    format_logs,
    script,
    status_history,
    until_status,
    wait_for,
    wait_not_busy,
)

GRACE = 0.5

# A value for every field a packed record keeps, none of them a default.
NON_DEFAULT: dict[str, Any] = {
    "config": {"lr": 0.1, "layers": [1, 2], "name": "x", "nested": {"a": None}},
    "creation_time": datetime.datetime(2026, 1, 2, 3, 4, 5, 678901),
    "status": Status.failed,
    "runs": 3,
    "pid": 4242,
    "accepting": False,
    "iterations": 17,
    "run_start_time": 1234.5,
    "exit_code": 3,
    "exit_signal": "SIGKILL",
    "stderr_tail": "Traceback\nValueError: bad",
    # The second 01:30 of a night the clocks go back (fold=1), which == does not tell.
    "training_end_time": datetime.datetime(2026, 10, 25, 1, 30, 0, 1, fold=1),
    "failure_reason": "exit code 3",
    "failure_kind": "exit",
    "delete_checkpoint_on_exit": True,
    "gpus": ["0", "1"],
    "cpus": ["2"],
    "limits": TrialLimits(time_limit=5.0, max_failures=2),
    "used_time": 8.25,
    "timed_runs": frozenset({0, 2}),
    "retries": [1.5, 2.5],
    "last_metric": 0.125,
}
# Fields a packed record never has otherwise than empty: it would be live.
LIVE_ONLY = {"alive_runs", "attached", "from_results_file", "from_stdout", "status_unfetched"}
# Fields made again, not kept: its id (the index), files, readers and journal.
REBUILT = {"trial_id", "paths", "results_reader", "stdout_reader", "journal"}


def _record(tmp_path: Path) -> TrialRecord:
    paths = ExperimentPaths(tmp_path).trial(0)
    record = TrialRecord.new(0, {}, paths, None)
    for name, value in NON_DEFAULT.items():
        setattr(record, name, value)
    record.results_reader.set_state((("dev", 7), True, 5, 1234, False))
    record.stdout_reader.offset, record.stdout_reader.line_number = 99, 4
    return record


def test_every_field_comes_back_from_a_packed_record(tmp_path: Path) -> None:
    names = {f.name for f in dataclasses.fields(TrialRecord)}
    assert names == set(NON_DEFAULT) | LIVE_ONLY | REBUILT, "a new field needs a value here"
    original = _record(tmp_path)
    records = TrialRecords()
    records.append(original)
    records.pack(0)
    assert records.is_packed(0)
    back = records[0]
    assert back is not original and not records.is_packed(0)
    for name in NON_DEFAULT:
        assert getattr(back, name) == getattr(original, name), name
    assert back.training_end_time is not None and back.training_end_time.fold == 1
    assert back.limits is original.limits  # shared, not copied
    assert back.paths.root == original.paths.root
    for reader in ("results_reader", "stdout_reader"):
        old, new = getattr(original, reader), getattr(back, reader)
        assert (type(new), new.path, new.trial_id, new.state()) == \
            (type(old), old.path, old.trial_id, old.state())
    summary = next(records.summaries())
    assert (summary.status, summary.alive, summary.last_metric) == (Status.failed, False, 0.125)


def test_a_packed_trial_reads_as_its_record_would_without_being_unpacked(
    tmp_path: Path,
) -> None:
    original = _record(tmp_path)
    records = TrialRecords()
    records.append(original)
    records.pack(0)
    light = records.packed_trial(0)
    assert light is not None and records.is_packed(0)
    back = records[0]
    assert records.packed_trial(0) is None  # unpacked now: read from the record
    trial, status = light
    assert status == back.status == Status.failed
    assert dataclasses.asdict(trial) == dataclasses.asdict(back.as_trial())
    assert trial.training_end_time is not None and trial.training_end_time.fold == 1
    assert trial.config is not original.config  # the tuner gets its own copy


def test_a_record_that_could_change_or_holds_an_odd_value_stays_unpacked(tmp_path: Path) -> None:
    records = TrialRecords()
    running = TrialRecord.new(0, {}, ExperimentPaths(tmp_path).trial(0), None)
    odd = TrialRecord.new(1, {"when": object()}, ExperimentPaths(tmp_path).trial(1), None)
    aware = TrialRecord.new(2, {}, ExperimentPaths(tmp_path).trial(2), None)
    aware.training_end_time = datetime.datetime.now(datetime.UTC)
    for record in (odd, aware):
        record.status = Status.completed
    for record in (running, odd, aware):
        records.append(record)
        records.pack(record.trial_id)
    assert not any(records.is_packed(t) for t in range(3))
    assert records[1] is odd and records[2] is aware


def _packed(backend: LocalBackend, trial_id: int) -> bool:
    backend.busy_trial_ids()  # a pass over the live trials packs those that left them
    return bool(backend._table.records.is_packed(trial_id))


def test_a_packed_paused_trial_resumes_from_its_checkpoint_and_delivers_each_result_once(
    experiment_dir: Path,
) -> None:
    with LocalBackend(
        script("checkpointing.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        trial_id = backend.start_trial({"epochs": 5, "block_at": 2}).trial_id
        _, results = collect(
            backend, [trial_id], lambda _s, r: any(x["epoch"] == 2 for _, x in r)
        )
        backend.pause_trial(trial_id)
        wait_not_busy(backend, [trial_id])
        _, more = backend.fetch_status_results([trial_id])
        results += more
        wait_for(lambda: _packed(backend, trial_id), timeout=10, what="the record packed",
                 on_fail=lambda: format_logs(backend))
        backend.resume_trial(trial_id)
        _, more = collect(backend, [trial_id], until_status(Status.completed))
        results += more
        assert [r["epoch"] for _, r in results] == [0, 1, 2, 3, 4], format_logs(backend)
        assert [r["st_worker_iter"] for _, r in results] == [0, 1, 2, 3, 4]
        assert "starting at epoch 3" in "".join(backend.stdout(trial_id))


def test_finished_trials_read_the_same_packed_as_unpacked(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        ids = [backend.start_trial({"n": 2, "exit_code": code}).trial_id for code in (0, 3)]
        statuses, _ = collect(backend, ids, until_status(Status.completed, Status.failed))
        for trial_id in ids:
            wait_for(lambda t=trial_id: _packed(backend, t), timeout=10,
                     what=f"trial {trial_id} packed", on_fail=lambda: format_logs(backend))
        again, results = backend.fetch_status_results(ids)
        assert results == []
        for trial_id in ids:
            assert again[trial_id][1] == statuses[trial_id][1]
            assert dataclasses.asdict(again[trial_id][0]) == \
                dataclasses.asdict(statuses[trial_id][0])
        assert again[ids[1]][0].exit_code == 3
        # The fetch read them from their packed bytes: they were not unpacked.
        assert all(backend._table.records.is_packed(t) for t in ids)


def test_retention_ranks_packed_trials_and_deletes_a_packed_ones_checkpoint(
    experiment_dir: Path,
) -> None:
    with LocalBackend(
        script("checkpointing.py"), experiment_dir=experiment_dir, grace_period=GRACE,
        keep_best=1, metric="epoch", mode="min",
    ) as backend:
        first = backend.start_trial({"epochs": 3}).trial_id
        collect(backend, [first], until_status(Status.completed))
        wait_for(lambda: _packed(backend, first), timeout=10, what="trial 0 packed",
                 on_fail=lambda: format_logs(backend))
        second = backend.start_trial({"epochs": 2}).trial_id
        collect(backend, [second], until_status(Status.completed))
        # The second ends at a lower epoch, so the packed first trial's checkpoint goes.
        assert (backend.trial_dir(second) / "checkpoints").exists(), format_logs(backend)
        assert not (backend.trial_dir(first) / "checkpoints").exists(), format_logs(backend)
        history = [h for h in status_history(backend, first) if h.get("action")]
        assert history and "not among the 1 best" in history[0]["reason"]
        assert _packed(backend, first) and _packed(backend, second)


def test_reading_a_packed_trials_logs_and_folder_leaves_it_packed(experiment_dir: Path) -> None:
    # stdout, stderr, read_log and trial_dir take no lock, so that another
    # thread can call them while a call waits: they must change nothing.
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        trial_id = backend.start_trial({"n": 2}).trial_id
        collect(backend, [trial_id], until_status(Status.completed))
        wait_for(lambda: _packed(backend, trial_id), timeout=10, what="the record packed",
                 on_fail=lambda: format_logs(backend))
        assert "".join(backend.stdout(trial_id)) == "reported 2 results\n"
        assert backend.stderr(trial_id) == []
        assert backend.read_log(trial_id)[0] == "reported 2 results\n"
        assert backend.trial_dir(trial_id) == experiment_dir / str(trial_id)
        assert backend._table.records.is_packed(trial_id)

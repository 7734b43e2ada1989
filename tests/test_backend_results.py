"""Results: read incrementally, delivered exactly once and in order, torn and bad lines handled."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localbackend import BackendConfigurationError, LocalBackend, Status
from tests.helpers import (
    collect,
    format_logs,
    script,
    until_status,
    wait_for_trial_file,
    wait_not_busy,
)

GRACE = 0.5
FINISHED = (Status.completed, Status.failed)


def backend_for(name: str, experiment_dir: Path, **options: Any) -> LocalBackend:
    return LocalBackend(script(name), experiment_dir=experiment_dir, grace_period=GRACE, **options)


def bad_line_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -- exactly once, in order ----------------------------------------------------


def test_many_results_over_many_fetches_arrive_once_and_in_order(experiment_dir: Path) -> None:
    n = 5000
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({"n": n, "pause_every": 100})
        fetches = 0

        def until(statuses: dict[int, Any], results: list[Any]) -> bool:
            nonlocal fetches
            fetches += 1
            return statuses[0][1] in FINISHED

        statuses, results = collect(backend, [0], until)
        assert statuses[0][1] == Status.completed, format_logs(backend)
        assert [r["i"] for _, r in results] == list(range(n))
        assert [r["st_worker_iter"] for _, r in results] == list(range(n))
        # Nothing is left over, and nothing comes twice.
        assert backend.fetch_status_results([0])[1] == []
        assert backend.fetch_status_results([0])[1] == []


def test_concurrent_trials_each_deliver_their_results_in_order(experiment_dir: Path) -> None:
    n = 2000
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        for raw in (0, 1, 0):
            backend.start_trial({"n": n, "raw": raw, "pause_every": 200})
        statuses, results = collect(backend, [0, 1, 2], until_status(*FINISHED))
        assert all(s == Status.completed for _, s in statuses.values())
        for trial_id in (0, 1, 2):
            assert [r["i"] for t, r in results if t == trial_id] == list(range(n))


def _fetch_without_wait(
    backend: LocalBackend, ids: list[int], until: Any
) -> tuple[dict[int, Any], list[Any]]:
    """Poll ``fetch_status_results`` alone, as Syne Tune's Tuner does, until ``until`` holds."""
    results: list[Any] = []
    deadline = time.monotonic() + 30
    while True:
        statuses, new = backend.fetch_status_results(ids)
        results.extend(new)
        if until(statuses, results):
            return statuses, results
        assert time.monotonic() < deadline, f"{len(results)} results\n{format_logs(backend)}"
        time.sleep(0.01)


@pytest.mark.parametrize("fetching", ["wait", "fetch alone"])
def test_every_result_of_many_running_trials_arrives_while_they_run(
    experiment_dir: Path, fetching: str
) -> None:
    # A pass over the running trials reads only the files inotify says were
    # written: every result must still arrive before any trial exits.
    n, ids = 150, list(range(8))
    with backend_for("tune_metric.py", experiment_dir) as backend:
        for _ in ids:
            backend.start_trial({"n": n, "hold": 1})

        def all_arrived(statuses: dict[int, Any], results: list[Any]) -> bool:
            return len(results) == 2 * n * len(ids)

        if fetching == "wait":
            statuses, results = collect(backend, ids, all_arrived)
        else:
            statuses, results = _fetch_without_wait(backend, ids, all_arrived)
        assert all(s == Status.in_progress for _, s in statuses.values()), format_logs(backend)
        for trial_id in ids:
            for source in ("stdout", "file"):
                got = [r["k"] for t, r in results if t == trial_id and r["source"] == source]
                assert got == list(range(n)), (trial_id, source, format_logs(backend))
        for trial_id in ids:
            (backend.trial_dir(trial_id) / "release").touch()
        _, rest = collect(backend, ids, until_status(Status.completed))
        assert rest == []


def test_fetching_some_trials_leaves_the_others_results_queued(experiment_dir: Path) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({"n": 2})
        backend.start_trial({"n": 3})
        collect(backend, [0], until_status(*FINISHED))
        wait_not_busy(backend, [1])
        statuses, results = backend.fetch_status_results([1])
        assert list(statuses) == [1]
        assert [(t, r["i"]) for t, r in results] == [(1, 0), (1, 1), (1, 2)]
        assert backend.fetch_status_results([0, 1])[1] == []


def test_results_written_before_pause_are_delivered(experiment_dir: Path) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({"n": 3, "hold": 1})
        wait_for_trial_file(backend, 0, "reported")
        backend.pause_trial(0)
        statuses, results = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused
        assert [r["i"] for _, r in results] == [0, 1, 2]


@pytest.mark.parametrize("action", ["pause_trial", "stop_trial"])
def test_results_written_after_pause_or_stop_stay_on_disk_but_are_not_delivered(
    action: str, experiment_dir: Path
) -> None:
    with backend_for("checkpointing.py", experiment_dir) as backend:
        backend.start_trial({"epochs": 4, "block_at": 1, "report_on_term": 1})
        wait_for_trial_file(backend, 0, "blocked")
        _, before = collect(backend, [0], lambda _s, r: len(r) == 2)
        getattr(backend, action)(0)
        wait_not_busy(backend, [0])
        on_disk = (backend.trial_dir(0) / "results.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in on_disk] == [0, 1, -1]
        statuses, late = backend.fetch_status_results([0])
        assert late == []
        assert statuses[0][1] == (Status.paused if action == "pause_trial" else Status.stopped)
        assert [r["epoch"] for _, r in before] == [0, 1]


def test_nothing_is_replayed_after_resume(experiment_dir: Path) -> None:
    with backend_for("checkpointing.py", experiment_dir) as backend:
        backend.start_trial({"epochs": 4, "block_at": 1, "report_on_term": 1})
        wait_for_trial_file(backend, 0, "blocked")
        _, before = collect(backend, [0], lambda _s, r: len(r) == 2)
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        assert backend.fetch_status_results([0])[1] == []
        backend.resume_trial(0)
        statuses, after = collect(backend, [0], until_status(*FINISHED))
        assert statuses[0][1] == Status.completed, format_logs(backend)
        assert [r["epoch"] for _, r in after] == [2, 3]
        iterations = [r["st_worker_iter"] for _, r in before + after]
        assert iterations == sorted(set(iterations))
        assert backend.fetch_status_results([0])[1] == []


# -- torn and bad lines -------------------------------------------------------------


def test_torn_last_line_waits_until_it_is_complete(
    experiment_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localbackend")
    with backend_for("torn_lines.py", experiment_dir) as backend:
        backend.start_trial({"mode": "torn"})
        wait_for_trial_file(backend, 0, "half-written")
        _, results = backend.fetch_status_results([0])
        assert [r["i"] for _, r in results] == [0]
        # The half line is not a result yet, however often we look.
        for _ in range(3):
            assert backend.fetch_status_results([0])[1] == []
        assert backend.wait(timeout=0.05) == []
        (backend.trial_dir(0) / "finish").touch()
        wait_for_trial_file(backend, 0, "finished")
        _, results = collect(backend, [0], lambda _s, r: len(r) >= 1)
        assert [r for _, r in results] == [
            {"i": 1, "pad": "xyz", **{k: results[0][1][k] for k in results[0][1] if k[:3] == "st_"}}
        ]
        (backend.trial_dir(0) / "exit").touch()
        statuses, rest = collect(backend, [0], until_status(*FINISHED))
        assert rest == []
        assert statuses[0][1] == Status.completed
    assert bad_line_warnings(caplog) == []


def test_garbage_lines_are_skipped_with_a_warning_naming_trial_file_and_line(
    experiment_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localbackend")
    with backend_for("torn_lines.py", experiment_dir) as backend:
        backend.start_trial({"mode": "garbage"})
        statuses, results = collect(backend, [0], until_status(*FINISHED))
        results_file = backend.trial_dir(0) / "results.jsonl"
    assert statuses[0][1] == Status.completed
    assert [r["i"] for _, r in results] == [0, 1, 3]
    warnings = bad_line_warnings(caplog)
    for line_number in (2, 3, 5, 6):
        matching = [w for w in warnings if f"line {line_number} " in w]
        assert len(matching) == 1, (line_number, warnings)
        assert "trial 0" in matching[0]
        assert str(results_file) in matching[0]
    assert len(warnings) == 4, warnings


def test_unfinished_last_line_at_exit_is_delivered_when_it_is_json(
    experiment_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localbackend")
    with backend_for("torn_lines.py", experiment_dir) as backend:
        backend.start_trial({"mode": "final_ok"})
        statuses, results = collect(backend, [0], until_status(*FINISHED))
        assert statuses[0][1] == Status.completed
        assert [r["i"] for _, r in results] == [0, 1]
        assert backend.fetch_status_results([0])[1] == []
    assert bad_line_warnings(caplog) == []


def test_unfinished_last_line_at_exit_that_is_not_json_is_warned_about(
    experiment_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localbackend")
    with backend_for("torn_lines.py", experiment_dir) as backend:
        backend.start_trial({"mode": "final_bad"})
        statuses, results = collect(backend, [0], until_status(*FINISHED))
        results_file = backend.trial_dir(0) / "results.jsonl"
        assert statuses[0][1] == Status.completed
        assert [r["i"] for _, r in results] == [0]
    warnings = bad_line_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "trial 0" in warnings[0]
    assert str(results_file) in warnings[0]
    assert "line 2" in warnings[0]


def test_results_with_odd_timestamps_never_make_fetch_raise(experiment_dir: Path) -> None:
    with backend_for("torn_lines.py", experiment_dir) as backend:
        backend.start_trial({"mode": "odd_timestamps"})
        backend.start_trial({"mode": "odd_timestamps"})
        wait_not_busy(backend, [0, 1])
        statuses, results = backend.fetch_status_results([0, 1])
        assert all(s == Status.completed for _, s in statuses.values())
        for trial_id in (0, 1):
            assert [r["i"] for t, r in results if t == trial_id] == [0, 1, 2]


# -- results on stdout ----------------------------------------------------------------


def test_tune_metric_lines_on_stdout_are_results_each_source_in_order(
    experiment_dir: Path,
) -> None:
    with backend_for("tune_metric.py", experiment_dir) as backend:
        backend.start_trial({"n": 50})
        statuses, results = collect(backend, [0], until_status(*FINISHED))
        assert statuses[0][1] == Status.completed
    from_stdout = [r["k"] for _, r in results if r["source"] == "stdout"]
    from_file = [r["k"] for _, r in results if r["source"] == "file"]
    assert from_stdout == list(range(50))
    assert from_file == list(range(50))
    assert all("st_worker_timestamp" in r for _, r in results)


def test_bad_tune_metric_line_is_skipped_with_a_warning(
    experiment_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="localbackend")
    with backend_for("tune_metric.py", experiment_dir) as backend:
        backend.start_trial({"n": 2, "bad": 1})
        statuses, results = collect(backend, [0], until_status(*FINISHED))
        stdout_file = backend.trial_dir(0) / "stdout.log"
    assert statuses[0][1] == Status.completed
    assert sorted((r["source"], r["k"]) for _, r in results) == [
        ("file", 0), ("file", 1), ("stdout", 0), ("stdout", 1),
    ]
    warnings = bad_line_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "trial 0" in warnings[0]
    assert str(stdout_file) in warnings[0]
    assert "line 2 " in warnings[0]


# -- wait ----------------------------------------------------------------------


def test_wait_returns_at_once_when_nothing_can_change(experiment_dir: Path) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        returned: list[Any] = []
        waiter = threading.Thread(target=lambda: returned.append(backend.wait()), daemon=True)
        waiter.start()
        waiter.join(timeout=20)
        assert returned == [[]], "wait() with no trial blocked"
        backend.start_trial({"n": 1})
        collect(backend, [0], until_status(*FINISHED))
        wait_not_busy(backend, [0])
        assert backend.wait(timeout=30) == []  # finished and fetched: returns at once


def test_wait_is_level_triggered_and_times_out_with_an_empty_list(experiment_dir: Path) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({"n": 2, "hold": 1})
        wait_for_trial_file(backend, 0, "reported")
        assert backend.wait(timeout=30) == [0]
        # Nothing was fetched, so it is still waiting: wait returns at once again.
        assert backend.wait(timeout=30) == [0]
        assert backend.wait(timeout=0) == [0]
        _, results = backend.fetch_status_results([0])
        assert [r["i"] for _, r in results] == [0, 1]
        assert backend.wait(timeout=0.1) == []
        assert backend.wait(timeout=0) == []
        (backend.trial_dir(0) / "release").touch()
        # The exit is a status change: it wakes wait too.
        assert backend.wait(timeout=30) == [0]
        statuses, results = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.completed
        assert results == []


def test_wait_wakes_on_a_new_result(experiment_dir: Path) -> None:
    with backend_for("torn_lines.py", experiment_dir) as backend:
        backend.start_trial({"mode": "torn"})
        wait_for_trial_file(backend, 0, "half-written")
        backend.fetch_status_results([0])
        assert backend.wait(timeout=0.05) == []
        (backend.trial_dir(0) / "finish").touch()
        assert backend.wait(timeout=30) == [0]
        _, results = backend.fetch_status_results([0])
        assert [r["i"] for _, r in results] == [1]
        (backend.trial_dir(0) / "exit").touch()
        collect(backend, [0], until_status(*FINISHED))


def test_wait_reports_every_trial_with_news(experiment_dir: Path) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({"n": 1, "hold": 1})
        backend.start_trial({"n": 1, "hold": 1})
        backend.start_trial({"n": 0, "hold": 1})
        for trial_id in (0, 1, 2):
            wait_for_trial_file(backend, trial_id, "reported")
        assert sorted(backend.wait(timeout=30)) == [0, 1]
        backend.fetch_status_results([0])
        assert backend.wait(timeout=30) == [1]
        backend.stop_all()


@pytest.mark.parametrize("timeout", [-1, -0.5, "1", float("nan"), True])
def test_wait_with_a_bad_timeout_raises(timeout: Any, experiment_dir: Path) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend, pytest.raises(
        BackendConfigurationError, match="timeout"
    ):
        backend.wait(timeout=timeout)


def test_a_timeout_too_large_for_a_float_waits_as_long_as_it_takes(
    experiment_dir: Path,
) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({})
        assert backend.wait(timeout=10**400) == [0]


# -- logs ---------------------------------------------------------------------------


def test_read_log_reads_incrementally_from_an_offset(experiment_dir: Path) -> None:
    with backend_for("tune_metric.py", experiment_dir) as backend:
        backend.start_trial({"n": 3})
        collect(backend, [0], until_status(*FINISHED))
        whole = (backend.trial_dir(0) / "stdout.log").read_bytes()
        text, offset = backend.read_log(0)
        assert text == whole.decode()
        assert offset == len(whole)
        assert backend.read_log(0, offset=offset) == ("", offset)
        first_line = whole.split(b"\n")[0] + b"\n"
        text, offset = backend.read_log(0, "stdout", len(first_line))
        assert text == whole[len(first_line):].decode()
        assert offset == len(whole)
        assert backend.read_log(0, "stderr") == ("", 0)


def test_read_log_never_splits_a_utf8_character(experiment_dir: Path) -> None:
    with backend_for("split_utf8.py", experiment_dir) as backend:
        backend.start_trial({})
        wait_for_trial_file(backend, 0, "half")
        text, offset = backend.read_log(0, "stdout", 0)
        assert (text, offset) == ("ab", 2)
        assert backend.read_log(0, "stdout", offset) == ("", 2)
        (backend.trial_dir(0) / "go").touch()
        collect(backend, [0], until_status(*FINISHED))
        text, offset = backend.read_log(0, "stdout", offset)
        assert (text, offset) == ("écd\n", 7)
        assert backend.read_log(0, "stdout", offset) == ("", 7)


def test_read_log_of_stderr(experiment_dir: Path) -> None:
    with backend_for("fail.py", experiment_dir) as backend:
        backend.start_trial({"code": 1})
        collect(backend, [0], until_status(*FINISHED))
        text, offset = backend.read_log(0, stream="stderr")
        assert text.startswith("error line 0\n")
        assert text.endswith("Traceback: ValueError: boom\n")
        assert offset == len(text.encode())


@pytest.mark.parametrize(
    ("stream", "offset", "named"),
    [("stdin", 0, "stdin"), ("STDOUT", 0, "STDOUT"), ("stdout", -1, "-1"), ("stdout", 1.5, "1.5")],
)
def test_read_log_with_bad_arguments_raises(
    stream: str, offset: Any, named: str, experiment_dir: Path
) -> None:
    with backend_for("report_then_exit.py", experiment_dir) as backend:
        backend.start_trial({"n": 0})
        with pytest.raises(BackendConfigurationError) as caught:
            backend.read_log(0, stream, offset)
        assert named in str(caught.value)
        collect(backend, [0], until_status(*FINISHED))

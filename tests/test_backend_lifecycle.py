"""LocalBackend's public methods end to end: start, pause, resume, stop, paths, settings."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from localbackend import (
    InvalidTransitionError,
    LocalBackend,
    LocalBackendError,
    Status,
    Trial,
    TrialResult,
)
from tests.helpers import (
    collect,
    format_logs,
    script,
    status_history,
    until_status,
    wait_for_trial_file,
    wait_not_busy,
)

GRACE = 0.5
# Tests that see a trial still "Stopping" right after a pause need the grace period
# to outlast the few statements in between, even on a loaded machine.
STOPPING_GRACE = 1.0


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def finish(backend: LocalBackend, trial_ids: list[int]) -> tuple[dict[int, Any], list[Any]]:
    return collect(backend, trial_ids, until_status(Status.completed, Status.failed))


# -- starting and finishing ----------------------------------------------------


def test_a_trial_runs_in_an_experiment_folder_whose_name_is_not_utf8(tmp_path: Path) -> None:
    # The folder's name decodes to a lone surrogate, which reaches the trial's
    # argv, environment and working folder, and command.json, which records them.
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/exp-\xff"))
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=folder, grace_period=GRACE
    ) as backend:
        backend.start_trial({"n": 2})
        statuses, _ = finish(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        command = json.loads((folder / "0" / "command.json").read_bytes())
        assert command["env"]["LOCALBACKEND_TRIAL_DIR"].encode("utf-8", "surrogateescape") == (
            os.fsencode(folder / "0")
        )


def test_start_trial_returns_a_trial_result_and_ids_count_up(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        assert backend.new_trial_id() == 0
        first = backend.start_trial({"n": 1})
        assert isinstance(first, TrialResult)
        assert first.trial_id == 0
        assert first.config == {"n": 1}
        assert first.status == Status.in_progress
        assert first.metrics == []
        assert isinstance(first.creation_time, datetime.datetime)
        assert backend.new_trial_id() == 1
        second = backend.start_trial({"n": 2})
        assert second.trial_id == 1
        assert backend.new_trial_id() == 2
        finish(backend, [0, 1])


def test_completed_trial_delivers_its_results_with_worker_fields(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"n": 3})
        statuses, results = finish(backend, [0])
        trial, status = statuses[0]
        assert status == Status.completed, format_logs(backend)
        assert isinstance(trial, Trial)
        assert trial.trial_id == 0
        assert trial.config == {"n": 3}
        assert trial.exit_code == 0
        assert trial.exit_signal is None
        assert trial.trial_dir == backend.trial_dir(0)
        assert [tid for tid, _ in results] == [0, 0, 0]
        metrics = [r for _, r in results]
        assert [m["i"] for m in metrics] == [0, 1, 2]
        assert [m["st_worker_iter"] for m in metrics] == [0, 1, 2]
        for m in metrics:
            assert isinstance(m["st_worker_timestamp"], float)
            assert m["st_worker_time"] >= 0
        assert backend.busy_trial_ids() == []


def test_raw_json_lines_get_the_fields_schedulers_need(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"n": 3, "raw": 1})
        _, results = finish(backend, [0])
        metrics = [r for _, r in results]
        assert [m["i"] for m in metrics] == [0, 1, 2]
        assert [m["st_worker_iter"] for m in metrics] == [0, 1, 2]
        assert all("st_worker_timestamp" in m and "st_worker_time" in m for m in metrics)


def test_trial_folder_holds_config_command_logs_results_and_history(
    experiment_dir: Path,
) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"n": 2})
        finish(backend, [0])
        folder = backend.trial_dir(0)
        assert folder == experiment_dir / "0"
        assert read_json(folder / "config.json") == {"n": 2}
        command = read_json(folder / "command.json")
        assert command["argv"] == [
            sys.executable, str(script("report_then_exit.py")), "--n", "2",
            "--st_checkpoint_dir", str(folder / "checkpoints"),
        ]
        assert command["env"]["LOCALBACKEND_TRIAL_ID"] == "0"
        assert (folder / "stdout.log").read_text() == "reported 2 results\n"
        assert (folder / "stderr.log").read_text() == ""
        assert len((folder / "results.jsonl").read_text().splitlines()) == 2
        assert read_json(folder / "exit.json")["returncode"] == 0
        assert [h["status"] for h in status_history(backend, 0)] == [
            Status.in_progress, Status.completed,
        ]
    assert (experiment_dir / "experiment.json").exists()


def test_stdout_and_stderr_return_lines(experiment_dir: Path) -> None:
    with LocalBackend(script("fail.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"code": 2})
        finish(backend, [0])
        assert backend.stdout(0) == []
        lines = backend.stderr(0)
        assert lines[0] == "error line 0\n"
        assert lines[-1] == "Traceback: ValueError: boom\n"
        assert len(lines) == 31


def test_non_zero_exit_is_failed_with_exit_code_and_stderr_tail(experiment_dir: Path) -> None:
    with LocalBackend(script("fail.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"code": 3})
        statuses, _ = finish(backend, [0])
        trial, status = statuses[0]
        assert status == Status.failed
        assert trial.exit_code == 3
        assert trial.exit_signal is None
        tail = trial.stderr_tail.splitlines()
        assert tail[-1] == "Traceback: ValueError: boom"
        assert "error line 29" in tail
        assert "error line 0" not in tail  # only the tail, not all 31 lines
        history = status_history(backend, 0)
        assert history[-1]["status"] == Status.failed
        assert history[-1]["returncode"] == 3
        assert read_json(backend.trial_dir(0) / "exit.json")["returncode"] == 3


def test_death_by_signal_is_failed_with_exit_signal(experiment_dir: Path) -> None:
    with LocalBackend(script("fail.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"mode": "signal"})
        statuses, _ = finish(backend, [0])
        trial, status = statuses[0]
        assert status == Status.failed
        assert trial.exit_code is None
        assert trial.exit_signal == "SIGKILL"
        assert status_history(backend, 0)[-1]["signal"] == "SIGKILL"


def test_exit_zero_is_completed_even_after_writing_to_stderr(experiment_dir: Path) -> None:
    with LocalBackend(script("fail.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"code": 0})
        statuses, _ = finish(backend, [0])
        trial, status = statuses[0]
        assert status == Status.completed
        assert trial.exit_code == 0
        assert backend.grace_period == 10.0


# -- pause, resume, stop --------------------------------------------------------


def test_pause_then_resume_continues_from_the_checkpoint(experiment_dir: Path) -> None:
    with LocalBackend(
        script("checkpointing.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"epochs": 5, "block_at": 1})
        wait_for_trial_file(backend, 0, "blocked")
        _, before = collect(backend, [0], lambda _s, r: len(r) == 2)
        backend.pause_trial(0)
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused
        wait_not_busy(backend, [0])
        resumed = backend.resume_trial(0)
        assert resumed.status == Status.in_progress
        assert resumed.trial_id == 0
        statuses, after = finish(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        epochs = [r["epoch"] for _, r in before + after]
        assert epochs == [0, 1, 2, 3, 4]
        # The iteration counter carries on across the resume.
        assert [r["st_worker_iter"] for _, r in before + after] == [0, 1, 2, 3, 4]
        assert backend.stdout(0) == ["starting at epoch 0\n", "starting at epoch 2\n"]
        assert [h["status"] for h in status_history(backend, 0)] == [
            Status.in_progress, Status.paused, Status.in_progress, Status.completed,
        ]


def test_resume_with_new_config_runs_the_same_command_in_the_same_folder(
    experiment_dir: Path,
) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"hold": 1, "x": "old"})
        first = read_json(wait_for_trial_file(backend, 0, "argv-0.json"))
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        result = backend.resume_trial(0, new_config={"hold": 1, "x": "new value"})
        assert result.config == {"hold": 1, "x": "new value"}
        second = read_json(wait_for_trial_file(backend, 0, "argv-1.json"))
        folder = backend.trial_dir(0)
        assert first["argv"] == [
            "--hold", "1", "--x", "old", "--st_checkpoint_dir", str(folder / "checkpoints"),
        ]
        assert second["argv"] == [
            "--hold", "1", "--x", "new value", "--st_checkpoint_dir", str(folder / "checkpoints"),
        ]
        assert second["env"]["LOCALBACKEND_TRIAL_DIR"] == str(folder)
        assert second["cwd"] == first["cwd"]
        assert read_json(folder / "config.json") == {"hold": 1, "x": "new value"}
        assert read_json(folder / "command.json")["run"] == 1
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][0].config == {"hold": 1, "x": "new value"}
        backend.stop_trial(0)


def test_resume_without_new_config_keeps_the_config(experiment_dir: Path) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"hold": 1, "x": "a b"})
        wait_for_trial_file(backend, 0, "argv-0.json")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        assert backend.resume_trial(0).config == {"hold": 1, "x": "a b"}
        second = read_json(wait_for_trial_file(backend, 0, "argv-1.json"))
        assert second["argv"][:4] == ["--hold", "1", "--x", "a b"]
        backend.stop_trial(0)


def test_stop_trial_of_running_and_of_paused_trials(experiment_dir: Path) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"hold": 1})
        backend.start_trial({"hold": 1})
        wait_for_trial_file(backend, 0, "argv-0.json")
        wait_for_trial_file(backend, 1, "argv-0.json")
        backend.stop_trial(0)
        backend.pause_trial(1)
        statuses, _ = backend.fetch_status_results([0, 1])
        assert statuses[0][1] == Status.stopped
        assert statuses[1][1] == Status.paused
        wait_not_busy(backend, [0, 1])
        backend.stop_trial(1)
        statuses, _ = backend.fetch_status_results([0, 1])
        assert statuses[1][1] == Status.stopped
        assert [h["status"] for h in status_history(backend, 1)] == [
            Status.in_progress, Status.paused, Status.stopped,
        ]
        assert backend.busy_trial_ids() == []


def test_busy_trial_ids_lists_running_and_stopping_trials(experiment_dir: Path) -> None:
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=STOPPING_GRACE
    ) as backend:
        assert backend.busy_trial_ids() == []
        backend.start_trial({})
        assert backend.busy_trial_ids() == [(0, Status.in_progress)]
        wait_for_trial_file(backend, 0, "ready-0")
        backend.pause_trial(0)
        # The process ignores SIGTERM, so it lives on until the grace period ends.
        assert backend.busy_trial_ids() == [(0, Status.stopping)]
        wait_not_busy(backend, [0])
        assert backend.busy_trial_ids() == []


def test_stop_of_a_paused_trial_whose_process_is_still_ending(experiment_dir: Path) -> None:
    with LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=STOPPING_GRACE
    ) as backend:
        backend.start_trial({})
        wait_for_trial_file(backend, 0, "ready-0")
        backend.pause_trial(0)
        backend.stop_trial(0)
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.stopped
        wait_not_busy(backend, [0])
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.stopped
        assert [h["status"] for h in status_history(backend, 0)] == [
            Status.in_progress, Status.paused, Status.stopped,
        ]


def test_fetching_no_trials_returns_nothing(experiment_dir: Path) -> None:
    with LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir) as backend:
        assert backend.fetch_status_results([]) == ({}, [])
        backend.start_trial({"n": 2})
        wait_not_busy(backend, [0])
        assert backend.fetch_status_results([]) == ({}, [])
        assert len(backend.fetch_status_results(iter([0]))[1]) == 2


def test_status_history_records_every_change_with_its_time(experiment_dir: Path) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"hold": 1})
        wait_for_trial_file(backend, 0, "argv-0.json")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        backend.resume_trial(0)
        wait_for_trial_file(backend, 0, "argv-1.json")
        backend.stop_trial(0)
        history = status_history(backend, 0)
    assert [h["status"] for h in history] == [
        Status.in_progress, Status.paused, Status.in_progress, Status.stopped,
    ]
    assert [h["run"] for h in history] == [0, 0, 1, 1]
    assert [h["reason"] for h in history] == [
        "start_trial", "pause_trial", "resume_trial", "stop_trial",
    ]
    times = [h["time"] for h in history]
    assert all(isinstance(t, float) for t in times)
    assert times == sorted(times)


def _reach(backend: LocalBackend, status: str) -> None:
    """Bring trial 0 (print_argv.py or fail.py) to ``status``."""
    if status == Status.in_progress:
        wait_for_trial_file(backend, 0, "argv-0.json")
    elif status == Status.stopped:
        wait_for_trial_file(backend, 0, "argv-0.json")
        backend.stop_trial(0)
        wait_not_busy(backend, [0])
    elif status == Status.paused:
        wait_for_trial_file(backend, 0, "argv-0.json")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
    else:
        collect(backend, [0], until_status(status))


def _backend_for(status: str, experiment_dir: Path) -> tuple[LocalBackend, dict[str, Any]]:
    if status in (Status.completed, Status.failed):
        code = 0 if status == Status.completed else 4
        return LocalBackend(script("fail.py"), experiment_dir=experiment_dir), {"code": code}
    backend = LocalBackend(script("print_argv.py"), experiment_dir=experiment_dir,
                           grace_period=GRACE)
    return backend, {"hold": 1}


def _snapshot(backend: LocalBackend) -> tuple[Any, ...]:
    statuses, _ = backend.fetch_status_results([0])
    trial, status = statuses[0]
    return (
        status, trial.exit_code, trial.exit_signal, trial.stderr_tail, trial.config,
        status_history(backend, 0), read_json(backend.trial_dir(0) / "command.json"),
    )


@pytest.mark.parametrize("status", [Status.completed, Status.failed, Status.stopped])
@pytest.mark.parametrize("action", ["pause_trial", "stop_trial"])
def test_pause_or_stop_of_a_finished_trial_does_nothing(
    status: str, action: str, experiment_dir: Path
) -> None:
    backend, config = _backend_for(status, experiment_dir)
    with backend:
        backend.start_trial(config)
        _reach(backend, status)
        before = _snapshot(backend)
        assert before[0] == status
        getattr(backend, action)(0)
        assert _snapshot(backend) == before
        assert backend.busy_trial_ids() == []


def test_pausing_a_paused_trial_does_nothing(experiment_dir: Path) -> None:
    backend, config = _backend_for(Status.paused, experiment_dir)
    with backend:
        backend.start_trial(config)
        _reach(backend, Status.paused)
        before = _snapshot(backend)
        backend.pause_trial(0)
        assert _snapshot(backend) == before


@pytest.mark.parametrize(
    "status", [Status.in_progress, Status.completed, Status.failed, Status.stopped]
)
def test_resume_of_a_trial_that_is_not_paused_raises_and_changes_nothing(
    status: str, experiment_dir: Path
) -> None:
    backend, config = _backend_for(status, experiment_dir)
    with backend:
        backend.start_trial(config)
        _reach(backend, status)
        before = _snapshot(backend)
        with pytest.raises(InvalidTransitionError) as caught:
            backend.resume_trial(0, new_config={"hold": 2})
        assert caught.value.trial_id == 0
        assert caught.value.status == status
        assert "trial 0" in str(caught.value)
        assert status in str(caught.value)
        assert _snapshot(backend) == before
        assert backend.new_trial_id() == 1


def test_stop_all_stops_running_trials_and_waits_for_their_processes(
    experiment_dir: Path,
) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({})  # exits at once
        collect(backend, [0], until_status(Status.completed))
        for _ in range(3):
            backend.start_trial({"hold": 1})
        for trial_id in (1, 2, 3):
            wait_for_trial_file(backend, trial_id, "argv-0.json")
        backend.pause_trial(3)
        backend.stop_all()
        # stop_all returns once every process has ended.
        assert backend.busy_trial_ids() == []
        statuses, _ = backend.fetch_status_results([0, 1, 2, 3])
        assert {t: s for t, (_, s) in statuses.items()} == {
            0: Status.completed, 1: Status.stopped, 2: Status.stopped, 3: Status.paused,
        }


def test_close_ends_every_trial_and_can_be_called_twice(experiment_dir: Path) -> None:
    backend = LocalBackend(
        script("ignore_sigterm.py"), experiment_dir=experiment_dir, grace_period=GRACE
    )
    try:
        backend.start_trial({})
        backend.start_trial({})
        wait_for_trial_file(backend, 0, "ready-0")
        wait_for_trial_file(backend, 1, "ready-0")
    finally:
        backend.close()
    backend.close()
    assert backend.busy_trial_ids() == []
    # The autouse fixture checks that no process was left behind.


def _inotify_instances() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += "inotify" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify")
def test_calls_after_close_open_no_watcher_again(experiment_dir: Path) -> None:
    backend = LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    )
    before = _inotify_instances()
    try:
        backend.start_trial({"n": 2})
        collect(backend, [0], until_status(Status.completed))
    finally:
        backend.close()
    assert _inotify_instances() == before
    statuses, _ = backend.fetch_status_results([0])
    assert statuses[0][1] == Status.completed
    assert backend.wait(timeout=0) == []
    assert _inotify_instances() == before


def test_results_and_statuses_of_many_trials(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        for n in (1, 2, 3, 4):
            backend.start_trial({"n": n})
        statuses, results = finish(backend, [0, 1, 2, 3])
        assert all(s == Status.completed for _, s in statuses.values())
        for trial_id in range(4):
            mine = [r["i"] for t, r in results if t == trial_id]
            assert mine == list(range(trial_id + 1))


# -- what the trial process sees ---------------------------------------------------

AWKWARD = {
    "spaces": "a 0",
    "quote": "a'; echo x",
    "double": 'say "hi"',
    "semicolon": "x;y && touch pwned",
    "newline": "line one\nline two",
    "unicode": "héllo wörld ✓ 日本",
    "negative": "-5",
    "dashes": "--lr",
    "empty": "",
    "dollar": "$HOME `id` $(touch pwned)",
    "glob": "*",
}


def test_awkward_argument_values_arrive_intact(experiment_dir: Path, tmp_path: Path) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({**AWKWARD, "number": -5, "ratio": 0.5, "flag": True})
        collect(backend, [0], until_status(Status.completed))
        seen = read_json(backend.trial_dir(0) / "argv-0.json")
    expected: list[str] = []
    for key, value in AWKWARD.items():
        expected += [f"--{key}", value]
    expected += ["--number", "-5", "--ratio", "0.5", "--flag", "True"]
    expected += ["--st_checkpoint_dir", str(experiment_dir / "0" / "checkpoints")]
    assert seen["argv"] == expected
    assert not (tmp_path / "pwned").exists()


def test_pass_args_as_json_gives_the_config_file(experiment_dir: Path) -> None:
    config = {**AWKWARD, "number": -5, "nested": {"a": [1, 2]}}
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, pass_args_as_json=True
    ) as backend:
        backend.start_trial(config)
        collect(backend, [0], until_status(Status.completed))
        seen = read_json(backend.trial_dir(0) / "argv-0.json")
    folder = experiment_dir / "0"
    assert seen["argv"] == [
        "--st_config_json_filename", str(folder / "config.json"),
        "--st_checkpoint_dir", str(folder / "checkpoints"),
    ]
    assert read_json(folder / "config.json") == config
    assert seen["env"]["LOCALBACKEND_CONFIG_FILE"] == str(folder / "config.json")


def test_trial_environment_and_session(experiment_dir: Path) -> None:
    with LocalBackend(script("print_argv.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({})
        collect(backend, [0], until_status(Status.completed))
        seen = read_json(backend.trial_dir(0) / "argv-0.json")
    folder = experiment_dir / "0"
    env = seen["env"]
    assert env["LOCALBACKEND_TRIAL_ID"] == "0"
    assert env["LOCALBACKEND_TRIAL_DIR"] == str(folder)
    assert env["LOCALBACKEND_CHECKPOINT_DIR"] == str(folder / "checkpoints")
    assert env["LOCALBACKEND_RESULTS_FILE"] == str(folder / "results.jsonl")
    assert env["LOCALBACKEND_CONFIG_FILE"] == str(folder / "config.json")
    # Each trial runs in a session of its own, as its leader.
    assert seen["sid"] == seen["pid"]
    assert seen["sid"] != os.getsid(0)
    assert seen["cwd"] == os.getcwd()


def test_binary_as_a_string_is_split_into_words(
    experiment_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, binary="python -u"
    ) as backend:
        backend.start_trial({"a": "b"})
        collect(backend, [0], until_status(Status.completed))
        seen = read_json(backend.trial_dir(0) / "argv-0.json")
        command = read_json(backend.trial_dir(0) / "command.json")
    assert seen["orig_argv"][:3] == ["python", "-u", str(script("print_argv.py"))]
    assert command["argv"][:2] == ["python", "-u"]
    assert seen["argv"][:2] == ["--a", "b"]


def test_binary_as_a_list_is_used_word_for_word(experiment_dir: Path) -> None:
    binary = [sys.executable, "-X", "utf8", "-B"]
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, binary=binary
    ) as backend:
        backend.start_trial({})
        collect(backend, [0], until_status(Status.completed))
        seen = read_json(backend.trial_dir(0) / "argv-0.json")
    assert seen["orig_argv"][1:5] == ["-X", "utf8", "-B", str(script("print_argv.py"))]


def test_empty_binary_runs_an_executable_entry_point_itself(
    experiment_dir: Path, tmp_path: Path
) -> None:
    entry_point = tmp_path / "run me.py"
    entry_point.write_text(f"#!{sys.executable}\n" + script("print_argv.py").read_text())
    entry_point.chmod(0o755)
    with LocalBackend(
        entry_point, experiment_dir=experiment_dir, binary=[],
        env={"PYTHONPATH": str(script("print_argv.py").parent)},
    ) as backend:
        backend.start_trial({"a": "b c"})
        collect(backend, [0], until_status(Status.completed))
        seen = read_json(backend.trial_dir(0) / "argv-0.json")
        command = read_json(backend.trial_dir(0) / "command.json")
    assert command["argv"][0] == str(entry_point)
    assert seen["argv"][:2] == ["--a", "b c"]


def test_env_is_merged_over_the_inherited_environment(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LB_TEST_INHERITED", "inherited")
    monkeypatch.setenv("LB_TEST_OVERRIDDEN", "old")
    monkeypatch.delenv("LB_TEST_ADDED", raising=False)
    environ_before = dict(os.environ)
    with LocalBackend(
        script("print_argv.py"),
        experiment_dir=experiment_dir,
        env={"LB_TEST_OVERRIDDEN": "new", "LB_TEST_ADDED": "a b; c ✓"},
        num_gpus=2,
    ) as backend:
        backend.start_trial({})
        collect(backend, [0], until_status(Status.completed))
        env = read_json(backend.trial_dir(0) / "argv-0.json")["env"]
        assert dict(os.environ) == environ_before
    assert env["LB_TEST_INHERITED"] == "inherited"
    assert env["LB_TEST_OVERRIDDEN"] == "new"
    assert env["LB_TEST_ADDED"] == "a b; c ✓"
    assert dict(os.environ) == environ_before


def test_the_backend_never_changes_os_environ(experiment_dir: Path) -> None:
    environ_before = dict(os.environ)
    with LocalBackend(
        script("checkpointing.py"),
        experiment_dir=experiment_dir,
        grace_period=GRACE,
        env={"LB_TEST_X": "1"},
        num_gpus=1,
    ) as backend:
        backend.start_trial({"epochs": 3, "block_at": 0})
        wait_for_trial_file(backend, 0, "blocked")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        backend.resume_trial(0)
        collect(backend, [0], until_status(Status.completed))
        backend.start_trial({"epochs": 1}, checkpoint_trial_id=0)
        collect(backend, [1], until_status(Status.completed))
        assert dict(os.environ) == environ_before
    assert dict(os.environ) == environ_before


# -- paths and settings ------------------------------------------------------------


def test_default_experiment_dir_is_new_and_under_localbackend_runs(tmp_path: Path) -> None:
    # conftest runs each test in tmp_path.
    with LocalBackend(script("report_then_exit.py")) as first, LocalBackend(
        script("report_then_exit.py")
    ) as second:
        assert first.experiment_dir != second.experiment_dir
        assert first.experiment_dir.parent == tmp_path / "localbackend-runs"
        assert not first.experiment_dir.exists()  # created with the first trial
        first.start_trial({"n": 1})
        collect(first, [0], until_status(Status.completed))
        assert first.trial_dir(0) == first.experiment_dir / "0"
        assert first.trial_dir(0).is_dir()
    # Nothing else is written into the working folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["localbackend-runs"]


def test_set_path_before_the_first_trial_moves_the_experiment(
    experiment_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere" / "run"
    with LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir) as backend:
        backend.set_path(str(target), tuner_name="my-tuner")
        assert backend.experiment_dir == target
        backend.set_path(None)  # nothing to move
        assert backend.experiment_dir == target
        backend.start_trial({"n": 1})
        collect(backend, [0], until_status(Status.completed))
        assert backend.trial_dir(0) == target / "0"
        assert (target / "0" / "results.jsonl").exists()
    assert not experiment_dir.exists()


def test_set_path_after_the_first_trial_raises_and_keeps_the_folder(
    experiment_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "too-late"
    with LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"n": 1})
        with pytest.raises(LocalBackendError) as caught:
            backend.set_path(str(target))
        assert str(target) in str(caught.value)
        assert backend.experiment_dir == experiment_dir
        assert not target.exists()
        collect(backend, [0], until_status(Status.completed))
        assert backend.trial_dir(0) == experiment_dir / "0"


def test_entrypoint_path_and_set_entrypoint(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir
    ) as backend:
        assert backend.entrypoint_path() == script("report_then_exit.py")
        backend.set_entrypoint(script("print_argv.py"))
        assert backend.entrypoint_path() == script("print_argv.py")
        backend.start_trial({"n": 1})
        collect(backend, [0], until_status(Status.completed))
        assert (backend.trial_dir(0) / "argv-0.json").exists()
        with pytest.raises(LocalBackendError, match=r"missing\.py"):
            backend.set_entrypoint("missing.py")
        assert backend.entrypoint_path() == script("print_argv.py")


def test_on_tuner_save_writes_nothing_before_the_first_trial(experiment_dir: Path) -> None:
    with LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir) as backend:
        backend.on_tuner_save()
        assert not experiment_dir.exists()
        backend.start_trial({"n": 1})
        collect(backend, [0], until_status(Status.completed))
        backend.on_tuner_save()
        assert isinstance(read_json(experiment_dir / "experiment.json"), dict)


# -- importing -----------------------------------------------------------------


def test_import_pulls_in_only_stdlib_and_the_declared_dependencies() -> None:
    code = textwrap.dedent(
        """
        import json, os, sys
        environ = dict(os.environ)
        before = set(sys.modules)
        import localbackend
        new = sorted({name.split(".")[0] for name in set(sys.modules) - before})
        print(json.dumps({"new": new, "environ_same": dict(os.environ) == environ,
                          "stdlib": sorted(sys.stdlib_module_names)}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
        check=True,
    )
    seen = json.loads(out.stdout)
    allowed = set(seen["stdlib"]) | {"localbackend", "psutil", "orjson"}
    # Private helper modules of the stdlib (e.g. _ctypes) are stdlib too.
    outside = [m for m in seen["new"] if m not in allowed and m.lstrip("_") not in allowed]
    assert outside == [], f"import localbackend pulled in {outside}"
    assert seen["environ_same"]


def test_shlex_quoted_interpreter_path_works(experiment_dir: Path) -> None:
    with LocalBackend(
        script("report_then_exit.py"),
        experiment_dir=experiment_dir,
        binary=f"{shlex.quote(sys.executable)} -u",
    ) as backend:
        backend.start_trial({"n": 2})
        _, results = finish(backend, [0])
        assert [r["i"] for _, r in results] == [0, 1]


def test_no_file_watch_outlives_a_trial_that_completed_or_failed(experiment_dir: Path) -> None:
    # A watch left behind per failed trial would use up the inotify limit.
    with LocalBackend(script("fail.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"mode": "exit"})
        statuses, _ = finish(backend, [0])
        assert statuses[0][1] == Status.failed, format_logs(backend)
        assert backend._file_watcher()._watches == {}


def test_a_finished_trial_keeps_little_and_runs_again_in_its_own_folder(
    experiment_dir: Path,
) -> None:
    # A record is kept for the experiment's life: once a trial can no longer
    # change, its folder's Path goes, and comes back (the same folder) when it
    # runs again.
    with LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir) as backend:
        backend.start_trial({"n": 2})
        statuses, results = finish(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        backend.wait(timeout=0)  # the record leaves the live set here
        record = backend._table.records[0]
        assert record.paths._root is None
        assert record.paths.root == experiment_dir / "0"
        assert record.paths.results == experiment_dir / "0" / "results.jsonl"
        assert record.paths._root is None  # built on each use, not kept
        trial, status = backend.fetch_status_results([0])[0][0]
        assert (trial.trial_dir, status) == (experiment_dir / "0", Status.completed)

        backend.resume_trial(0, completed=True)
        assert record.paths._root == experiment_dir / "0"
        statuses, more = finish(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        # Each result once: the resumed run's two after the first run's two.
        assert [r["i"] for _, r in results + more] == [0, 1, 0, 1]
        lines = (experiment_dir / "0" / "results.jsonl").read_text().splitlines()
        assert len(lines) == 4


def test_a_paused_trial_keeps_little_until_it_is_resumed(experiment_dir: Path) -> None:
    # What ASHA does with every trial it does not promote at once.
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE,
    ) as backend:
        backend.start_trial({"n": 1, "hold": 1})
        wait_for_trial_file(backend, 0, "reported")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        statuses, results = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused, format_logs(backend)
        backend.wait(timeout=0)
        record = backend._table.records[0]
        assert record.paths._root is None
        (experiment_dir / "0" / "release").touch()  # the next run goes through its gate
        backend.resume_trial(0)
        assert record.paths._root == experiment_dir / "0"
        statuses, more = finish(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        assert [r["i"] for _, r in results + more] == [0, 0]


def test_a_forgotten_trial_folder_pickles_as_its_folder(tmp_path: Path) -> None:
    import pickle

    from localbackend._paths import ExperimentPaths

    paths = ExperimentPaths(tmp_path).trial(7)
    paths.forget()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(paths, protocol=protocol))
        assert copy == paths and copy.results == tmp_path / "7" / "results.jsonl"


def test_trial_paths_compare_by_folder_however_they_were_made(tmp_path: Path) -> None:
    from localbackend._paths import ExperimentPaths, TrialPaths

    made = ExperimentPaths(tmp_path).trial(3)
    given = TrialPaths(tmp_path / "3")
    assert made == given and hash(made) == hash(given)
    assert repr(made) == f"TrialPaths(root={tmp_path / '3'!r})"
    made.forget()
    given.forget()  # nothing to build it again from: it keeps its folder
    assert made == given and given._root == tmp_path / "3"
    assert made.stdout == given.stdout == tmp_path / "3" / "stdout.log"
    made.keep()
    assert made._root == tmp_path / "3"

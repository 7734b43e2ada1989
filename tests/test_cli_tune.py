"""``localbackend tune`` end to end, as a subprocess on the shipped example."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend
from localbackend.cli import main

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "entrypoints" / "train_numpy.py"
SPACE = REPO / "entrypoints" / "search_space.json"

def _main_job() -> str:
    """The README's main-job command, from ``localbackend tune`` on."""
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "localbackend tune " in line)
    return line[line.index("localbackend tune "):].replace(".venv/bin/", "")


MAIN_JOB = _main_job()
TIMEOUT = 120.0
needs_restore = pytest.mark.skipif(
    not hasattr(LocalBackend, "restore"), reason="LocalBackend.restore is not there yet"
)


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli(
    *args: str, cwd: Path | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localbackend.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=cwd,
    )


def popen_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "localbackend.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )


def shown(result: subprocess.CompletedProcess[str] | tuple[str, str]) -> str:
    out, err = (result.stdout, result.stderr) if not isinstance(result, tuple) else result
    return f"--- stdout ---\n{out[-6000:]}\n--- stderr ---\n{err[-4000:]}"


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def histories(experiment: Path) -> dict[int, list[dict[str, Any]]]:
    return {
        int(folder.name): jsonl(folder / "status.jsonl")
        for folder in experiment.iterdir()
        if folder.name.isdigit()
    }


def wait_until(condition: Any, timeout: float, what: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"tune ended before {what}\n{shown((out, err))}")
        if time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"timed out waiting for {what}\n{shown((out, err))}")
        time.sleep(0.05)


def assert_results_continue(experiment: Path) -> None:
    """Per trial, the delivered epochs only grow: resumes continue, nothing is delivered twice."""
    per_trial: dict[int, list[int]] = {}
    for row in jsonl(experiment / "results.jsonl"):
        per_trial.setdefault(row["trial_id"], []).append(row["epoch"])
    assert per_trial
    for trial_id, epochs in per_trial.items():
        assert all(b > a for a, b in zip(epochs, epochs[1:])), (trial_id, epochs)


def test_main_job_asha_pauses_and_promotes(tmp_path: Path) -> None:
    experiment = tmp_path / "main-job"
    words = shlex.split(MAIN_JOB)[1:]
    # Same command, smaller: faster epochs and fewer trials keep the suite quick.
    result = cli(
        *words, "--max-trials", "12", "-p", "epoch_seconds=0.02", "--seed", "0",
        "--experiment-dir", str(experiment), cwd=REPO,
    )
    assert result.returncode == 0, shown(result)
    assert f"experiment folder: {experiment}" in result.stdout
    assert "paused at rung epoch=1" in result.stdout, shown(result)
    assert "promoted from rung" in result.stdout, shown(result)
    assert "best trial" in result.stdout

    runs = histories(experiment)
    assert len(runs) == 12
    paused_then_resumed = [
        trial_id
        for trial_id, history in runs.items()
        if any(
            (a["status"], b["status"], b["reason"]) == ("Paused", "InProgress", "resume_trial")
            for a, b in zip(history, history[1:])
        )
    ]
    assert paused_then_resumed, runs
    promoted = {e["trial"] for e in jsonl(experiment / "events.jsonl") if e["event"] == "promote"}
    assert promoted == set(paused_then_resumed)
    assert_results_continue(experiment)
    best = json.loads((experiment / "best.json").read_text())
    assert best["metric"] == "loss" and best["trial_id"] in runs
    header = (experiment / "results.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "trial_id" and "loss" in header and "config.lr" in header
    state = json.loads((experiment / "tuner.json").read_text())
    assert state["state"] == "finished"


def test_pbt_copies_checkpoints_and_beats_the_median(tmp_path: Path) -> None:
    experiment = tmp_path / "pbt"
    result = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss", "--scheduler", "pbt",
        "--population", "4", "--pbt-interval", "2", "-p", "epochs=8", "-p", "hidden=24",
        "-p", "epoch_seconds=0.02", "--seed", "1", "--experiment-dir", str(experiment),
        "--workers", "2",
    )
    assert result.returncode == 0, shown(result)
    copies = [e for e in jsonl(experiment / "events.jsonl") if e["event"] == "copy"]
    assert copies, shown(result)
    assert "resumed from a copy of trial" in result.stdout
    results = jsonl(experiment / "results.jsonl")
    for copy in copies:
        # The target continues from the source's checkpoint, not from its own.
        after = [
            r["epoch"]
            for r in results
            if r["trial_id"] == copy["trial"] and r["st_worker_timestamp"] > copy["time"]
        ]
        if after:
            assert after[0] >= copy["source_resource"] + 1, (copy, after)
    runs = histories(experiment)
    assert all(history[-1]["status"] == "Completed" for history in runs.values()), runs
    best_by_trial: dict[int, float] = {}
    for row in results:
        best_by_trial[row["trial_id"]] = min(best_by_trial.get(row["trial_id"], 1e9), row["loss"])
    best = json.loads((experiment / "best.json").read_text())
    assert best["value"] == min(best_by_trial.values())
    assert best["value"] < statistics.median(best_by_trial.values())


@needs_restore
def test_ctrl_c_pauses_trials_and_resume_carries_on(tmp_path: Path) -> None:
    experiment = tmp_path / "interrupted"
    args = (
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss", "-p", "epochs=9",
        "-p", "epoch_seconds=0.15", "--max-trials", "5", "--seed", "3",
        "--experiment-dir", str(experiment), "--grace-period", "5",
    )
    proc = popen_cli(*args)
    wait_until(
        lambda: len(jsonl(experiment / "results.jsonl")) >= 4, 60, "four results", proc
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, shown((out, err))
    assert f"localbackend tune --resume {experiment}" in out
    state = json.loads((experiment / "tuner.json").read_text())
    assert state["state"] == "interrupted"
    for history in histories(experiment).values():
        assert history[-1]["status"] != "InProgress", history

    status = cli("status", str(experiment))
    assert status.returncode == 0 and "interrupted" in status.stdout, shown(status)

    resumed = cli("tune", "--resume", str(experiment))
    assert resumed.returncode == 0, shown(resumed)
    assert f"resuming the tune in {experiment}" in resumed.stdout
    assert json.loads((experiment / "tuner.json").read_text())["state"] == "finished"
    assert_results_continue(experiment)


@needs_restore
def test_resume_after_the_driver_was_killed(tmp_path: Path) -> None:
    experiment = tmp_path / "crashed"
    proc = popen_cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss", "-p", "epochs=9",
        "-p", "epoch_seconds=0.15", "--max-trials", "4", "--seed", "4",
        "--experiment-dir", str(experiment),
    )
    wait_until(lambda: len(jsonl(experiment / "results.jsonl")) >= 3, 60, "results", proc)
    proc.kill()
    proc.communicate(timeout=30)
    status = cli("status", str(experiment))
    assert "crashed" in status.stdout, shown(status)
    resumed = cli("tune", "--resume", str(experiment))
    assert resumed.returncode == 0, shown(resumed)
    assert_results_continue(experiment)
    for history in histories(experiment).values():
        assert history[-1]["status"] in ("Completed", "Paused"), history


def test_time_budget_pauses_running_trials(tmp_path: Path) -> None:
    experiment = tmp_path / "budget"
    result = cli(
        "tune", str(TRAIN), "--metric", "loss", "--scheduler", "random", "-p", "epochs=200",
        "-p", "epoch_seconds=0.1", "-p", "lr=loguniform(1e-3,1e-1)", "--max-time", "1.5",
        "--workers", "1", "--experiment-dir", str(experiment),
    )
    assert result.returncode == 0, shown(result)
    assert "time budget reached" in result.stdout
    assert json.loads((experiment / "tuner.json").read_text())["state"] == "budget"
    assert histories(experiment)[0][-1]["status"] == "Paused"


def test_stop_one_trial_then_the_whole_run(tmp_path: Path) -> None:
    experiment = tmp_path / "stopped"
    proc = popen_cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss",
        "-p", "epoch_seconds=0.3", "--max-trials", "30", "--seed", "5",
        "--experiment-dir", str(experiment), "--grace-period", "5",
    )
    wait_until(lambda: (experiment / "1" / "status.jsonl").exists(), 60, "trial 1", proc)
    follow = subprocess.Popen(
        [sys.executable, "-m", "localbackend.cli", "logs", str(experiment), "0", "--stderr",
         "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    try:
        running = cli("status", str(experiment))
        assert "tune: running (driver pid" in running.stdout, shown(running)
        second = cli("tune", "--resume", str(experiment))
        assert second.returncode == 2 and "is still running" in second.stderr, shown(second)
        one = cli("stop", str(experiment), "0", "99")
        assert "stopped trials 0" in one.stdout, shown(one)
        assert "no such trials: 99" in one.stderr
        assert one.returncode == 1
        assert histories(experiment)[0][-1]["status"] == "Stopped"

        whole = cli("stop", str(experiment))
        assert whole.returncode == 0, shown(whole)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, shown((out, err))
        assert "stopped on request" in out
        # logs --follow ends by itself once its trial is over.
        _, follow_err = follow.communicate(timeout=30)
        assert follow.returncode == 0, follow_err
    finally:
        for child in (proc, follow):
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert json.loads((experiment / "tuner.json").read_text())["state"] == "stopped"
    for history in histories(experiment).values():
        assert history[-1]["status"] != "InProgress"
    again = cli("stop", str(experiment))
    assert again.returncode == 1 and "no tune is running" in again.stderr


def test_live_table(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    result = cli(
        "tune", str(TRAIN), "--metric", "loss", "-p", "epochs=3", "-p", "epoch_seconds=0.02",
        "-p", "lr=loguniform(1e-3,1e-1)", "--max-trials", "3", "--view", "live",
        "--experiment-dir", str(tmp_path / "live"),
    )
    assert result.returncode == 0, shown(result)
    assert "progress:" in result.stdout and "last loss" in result.stdout
    assert "best trial" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-p", "lr=uniform(0.5)"], "uniform needs two numbers"),
        (["-p", "lr=normal(0,1)"], "unknown spec normal"),
        (["-p", "lr=loguniform(1e-3,1"], "loguniform(...) is not closed"),
        (["-p", "lr=Int(16,256"], "int(...) is not closed"),
        (["-p", "lr=loguniform(0,1)"], "lower bound > 0"),
        (["-p", "lr=uniform(0.5,0.1)"], "lower < upper"),
        (["-p", "lr"], "'lr' is not name=spec"),
        (["--scheduler", "hyperband"], "invalid choice: 'hyperband'"),
        (["--config", "missing.json"], "'missing.json' does not exist"),
        (["--metric", "acc", "-p", "epochs=2"], "but not 'acc'"),
        (["-p", "lr=0.1"], "asha needs the largest 'epoch'"),
        (["--workers", "0", "-p", "epochs=2"], "--workers 0 must be > 0"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], expected: str) -> None:
    words = ["tune", str(TRAIN), "--metric", "loss", *args]
    if "--metric" in args:
        words = ["tune", str(TRAIN), *args]
    result = cli(*words, "--max-trials", "2")
    assert result.returncode == 2, shown(result)
    assert expected in result.stderr, shown(result)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_script_and_bad_resume_folder(tmp_path: Path) -> None:
    missing = cli("tune", "nothere.py", "--metric", "loss", "-p", "epochs=2")
    assert missing.returncode == 2 and "'nothere.py' does not exist" in missing.stderr
    (tmp_path / "empty").mkdir()
    resume = cli("tune", "--resume", str(tmp_path / "empty"))
    assert resume.returncode == 2 and "no tuner state" in resume.stderr
    assert "Traceback" not in missing.stderr + resume.stderr


def _small_tune(experiment: Path, *extra: str) -> None:
    result = cli(
        "tune", str(TRAIN), "--metric", "loss", "-p", "epochs=2", "-p", "epoch_seconds=0.01",
        "-p", "lr=loguniform(1e-3,1e-1)", "--max-trials", "1", "--seed", "3", "--workers", "1",
        "--experiment-dir", str(experiment), *extra,
    )
    assert result.returncode == 0, shown(result)


@pytest.fixture(scope="module")
def finished_tune(tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = tmp_path_factory.mktemp("fixed") / "tune"
    _small_tune(experiment)
    return experiment


@needs_restore
@pytest.mark.parametrize(
    ("option", "value", "saved"),
    [
        ("--seed", "5", "3"),
        ("--scheduler", "pbt", "asha"),
        ("--mode", "max", "min"),
        ("--metric", "accuracy", "loss"),
        ("--resource-attr", "step", "epoch"),
        ("--max-resource", "9", "2"),
        ("--grace-period", "2", "10"),
        ("--reduction-factor", "4", "3"),
        ("--min-resource", "2", "1"),
        ("--population", "4", "8"),
        ("--pbt-interval", "3", "not set"),
        ("--pbt-mutate", "lr", "not set"),
    ],
)
def test_resume_refuses_an_option_it_cannot_change(
    finished_tune: Path, option: str, value: str, saved: str
) -> None:
    before = (finished_tune / "tuner.json").read_bytes()
    result = cli("tune", "--resume", str(finished_tune), option, value)
    assert result.returncode == 2, shown(result)
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert option in line and f"saved: {saved}" in line and f"given: {value}" in line, line
    assert "drop " + option in line, line
    assert (finished_tune / "tuner.json").read_bytes() == before


@needs_restore
def test_resume_takes_new_budgets_and_the_saved_values_again(tmp_path: Path) -> None:
    experiment = tmp_path / "budgets"
    _small_tune(experiment)
    result = cli(
        "tune", "--resume", str(experiment), "--max-trials", "2", "--workers", "1",
        "--max-time", "60", "--view", "plain", "--seed", "3", "--metric", "loss",
        "--scheduler", "asha",
    )
    assert result.returncode == 0, shown(result)
    assert sorted(histories(experiment)) == [0, 1]
    state = json.loads((experiment / "tuner.json").read_text())
    assert state["options"]["max_trials"] == 2 and state["options"]["seed"] == 3


def test_each_batch_appends_what_is_new_and_snapshots_wait_for_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # os.fsync, os.replace and fetch_status_results are wrapped only to count calls.
    fsyncs: list[int] = []
    replaced: list[str] = []
    batches: list[int] = []
    real_fsync, real_replace = os.fsync, os.replace
    real_fetch = LocalBackend.fetch_status_results

    def fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        replaced.append(Path(dst).name)
        real_replace(src, dst, **kwargs)

    def fetch(self: LocalBackend, trial_ids: Any) -> Any:
        statuses, results = real_fetch(self, trial_ids)
        if results:
            batches.append(len(results))
        return statuses, results

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(LocalBackend, "fetch_status_results", fetch)
    experiment = tmp_path / "appends"
    code = main([
        "tune", str(TRAIN), "--metric", "loss", "--scheduler", "random", "-p", "epochs=40",
        "-p", "epoch_seconds=0.02", "-p", "lr=loguniform(1e-3,1e-1)", "--max-trials", "4",
        "--workers", "2", "--seed", "0", "--experiment-dir", str(experiment), "--view", "plain",
    ])
    output = capsys.readouterr()
    assert code == 0, shown((output.out, output.err))
    assert len(jsonl(experiment / "results.jsonl")) == 160
    assert len(batches) >= 40, batches
    # Snapshots at checkpoints only: created, first save, the end. Never once per batch.
    assert replaced.count("tuner.json") <= 2, replaced.count("tuner.json")
    assert replaced.count("experiment.json") <= 2, replaced.count("experiment.json")
    assert len(fsyncs) <= 6, (len(fsyncs), len(batches))
    state = json.loads((experiment / "tuner.json").read_text())
    assert state["state"] == "finished" and len(state["trials"]) == 4


@needs_restore
def test_resume_after_a_kill_carries_on_from_the_last_batch(tmp_path: Path) -> None:
    """The snapshot is old when the tuner is killed: the journal holds the rest."""
    experiment = tmp_path / "killed"
    proc = popen_cli(
        "tune", str(TRAIN), "--metric", "loss", "-p", "epochs=9", "-p", "epoch_seconds=0.1",
        "-p", "lr=loguniform(1e-3,1)", "--max-trials", "6", "--seed", "2", "--workers", "2",
        "--experiment-dir", str(experiment), "--grace-period", "5",
    )

    def events() -> list[dict[str, Any]]:
        return jsonl(experiment / "events.jsonl")

    def waiting(seen: list[dict[str, Any]]) -> set[int]:
        """Paused at a rung and not promoted: the scheduler decides when they run again."""
        paused = {e["trial"] for e in seen if e["event"] == "pause"}
        return paused - {e["trial"] for e in seen if e["event"] == "promote"}

    def recorded_paused() -> set[int]:
        """Trials the tuner's own state (snapshot plus journal) has as paused at a rung."""
        from localbackend._paths import TunerPaths
        from localbackend.cli._state import load_state

        state = load_state(TunerPaths(experiment)) or {}
        return {int(t) for t, v in state.get("trials", {}).items() if v.get("phase") == "paused"}

    # The kill comes once a batch's decisions are in events.jsonl and in the
    # tuner's journal: a kill between the two writes of one batch is a crash
    # inside a batch, which resumes the trial as interrupted, by design.
    wait_until(
        lambda: len(at := waiting(events())) >= 2 and at <= recorded_paused(), 60,
        "two trials paused at a rung, in events.jsonl and the tuner's journal", proc,
    )
    proc.kill()
    proc.communicate(timeout=30)
    before = events()
    # Paused at a rung by a batch that was written whole before the kill.
    at_rung = waiting(before) & recorded_paused()
    assert len(at_rung) >= 2, (before, recorded_paused())
    saved = json.loads((experiment / "tuner.json").read_text())
    assert saved["state"] == "running"
    # Written before any pause: only the journal knows of them.
    assert all(saved["trials"].get(str(t), {}).get("phase") != "paused" for t in at_rung), saved
    resumed = cli("tune", "--resume", str(experiment))
    assert resumed.returncode == 0, shown(resumed)
    after = events()[len(before):]
    interrupted = {e["trial"] for e in after if e["event"] == "resume_interrupted"}
    assert not interrupted & at_rung, (at_rung, after)
    started = [e["trial"] for e in events() if e["event"] == "start"]
    assert len(started) == len(set(started)) == 6, started
    assert_results_continue(experiment)


# The tuner, killed just after the backend started trial 2 and before the
# tuner logged that start: the fault injected is the kill, at that moment.
KILLED_AFTER_A_START = """
import os, signal, sys
from localbackend.cli import _tune_loop, main

logged = _tune_loop.Tuner.event

def event(self, event):
    if event.get("event") == "start" and event.get("trial") == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    logged(self, event)

_tune_loop.Tuner.event = event
sys.exit(main(sys.argv[1:]))
"""


@needs_restore
def test_a_start_the_killed_tuner_had_not_logged_is_logged_on_resume(tmp_path: Path) -> None:
    experiment = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_A_START, "tune", str(TRAIN), "--metric", "loss",
         "-p", "epochs=3", "-p", "epoch_seconds=0.02", "-p", "lr=loguniform(1e-3,1)",
         "--max-trials", "4", "--seed", "2", "--workers", "2", "--scheduler", "random",
         "--experiment-dir", str(experiment), "--view", "plain"],
        capture_output=True, text=True, timeout=TIMEOUT, env=cli_env(),
    )
    assert killed.returncode == -signal.SIGKILL, shown(killed)
    resumed = cli("tune", "--resume", str(experiment))
    assert resumed.returncode == 0, shown(resumed)
    started = [e["trial"] for e in jsonl(experiment / "events.jsonl") if e["event"] == "start"]
    assert sorted(started) == [0, 1, 2, 3], started
    assert_results_continue(experiment)
    # Resumed once more, nothing is logged twice.
    again = cli("tune", "--resume", str(experiment))
    assert again.returncode == 0, shown(again)
    started = [e["trial"] for e in jsonl(experiment / "events.jsonl") if e["event"] == "start"]
    assert sorted(started) == [0, 1, 2, 3], started


def test_the_plain_view_builds_the_trial_table_only_when_it_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Wrapped only to count: a table built on every turn of the loop costs
    # the driver events times trials.
    from localbackend.cli import _tune_loop

    built: list[int] = []
    real_snapshot = _tune_loop.snapshot

    def snapshot(*args: Any) -> Any:
        built.append(1)
        return real_snapshot(*args)

    monkeypatch.setattr(_tune_loop, "snapshot", snapshot)
    started = time.monotonic()
    code = main([
        "tune", str(TRAIN), "--metric", "loss", "--scheduler", "random", "-p", "epochs=10",
        "-p", "lr=loguniform(1e-3,1e-1)", "--max-trials", "4", "--workers", "2", "--seed", "0",
        "--experiment-dir", str(tmp_path / "view"), "--view", "plain",
    ])
    output = capsys.readouterr()
    assert code == 0, shown((output.out, output.err))
    assert len(jsonl(tmp_path / "view" / "results.jsonl")) == 40
    progress_lines = len(re.findall(r"^\d\d:\d\d:\d\d progress: ", output.out, re.MULTILINE))
    # One per progress line, and one for the end.
    took = time.monotonic() - started
    assert len(built) <= progress_lines + 1, (len(built), progress_lines, took)


def test_the_live_table_left_on_screen_shows_how_the_tune_ended() -> None:
    pytest.importorskip("rich")
    from localbackend.cli._live import LiveView, Row, Snapshot

    stream = io.StringIO()
    view = LiveView(stream, force_terminal=True)
    view.close(lambda: Snapshot(
        rows=[Row(7, "Completed", "", 3, 0.5, 0.4, 1.0, "lr=0.1")],
        progress="progress: all done", metric="loss", resource_attr="epoch",
    ))
    shown_text = stream.getvalue()
    assert "Completed" in shown_text and "progress: all done" in shown_text

    def broken() -> Any:
        raise RuntimeError("no snapshot")

    view = LiveView(io.StringIO(), force_terminal=True)
    with pytest.raises(RuntimeError):
        view.close(broken)
    assert not view.live.is_started  # the terminal is given back all the same


def test_a_tune_that_gives_up_counts_its_trials_as_status_does(tmp_path: Path) -> None:
    experiment = tmp_path / "run"
    done = cli(
        "tune", str(REPO / "tests" / "scripts" / "fail.py"), "-p", "code=1",
        "-p", "tag=choice(a,b)", "--scheduler", "random", "--metric", "loss",
        "--max-trials", "3", "--workers", "1", "--experiment-dir", str(experiment),
    )
    assert done.returncode == 1, shown(done)
    table = json.loads(cli("status", str(experiment), "--json").stdout)
    assert [t["status"] for t in table["trials"]] == ["Failed"] * 3
    assert "3 trials (3 Failed)" in done.stdout, shown(done)
    # No result was delivered: no results.csv or best.json to point at.
    assert not (experiment / "results.csv").exists() and not (experiment / "best.json").exists()
    assert "results.csv" not in done.stdout and "best.json" not in done.stdout, shown(done)

"""``status``, ``logs`` and ``plot`` read an experiment folder from another process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.crash_helpers import kill_driver, start_driver, trial_pids, wait_gone

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "entrypoints" / "train_numpy.py"


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    return clean


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localbackend.cli", *args],
        capture_output=True, text=True, timeout=120, env=env(),
    )


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished small ASHA tune."""
    folder = tmp_path_factory.mktemp("inspect") / "asha"
    result = cli(
        "tune", str(TRAIN), "--metric", "loss", "-p", "epochs=9", "-p", "epoch_seconds=0.02",
        "-p", "lr=loguniform(1e-3,1)", "--max-trials", "6", "--seed", "2",
        "--experiment-dir", str(folder),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return folder


def test_status_table(experiment: Path) -> None:
    result = cli("status", str(experiment))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"experiment: {experiment}"
    assert "tune: finished; asha on 'loss' (min)" in result.stdout
    header = next(line for line in lines if line.startswith("trial"))
    for column in ("status", "runs", "rung", "epoch", "last loss", "best loss", "runtime"):
        assert column in header
    assert lines[-1].startswith("6 trials:")


def test_status_json_matches_the_trial_files(experiment: Path) -> None:
    result = cli("status", str(experiment), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["state"] == "finished"
    assert [t["trial_id"] for t in shown["trials"]] == list(range(6))
    best = json.loads((experiment / "best.json").read_text())
    assert shown["best"]["value"] == best["value"]
    for trial in shown["trials"]:
        history = (experiment / str(trial["trial_id"]) / "status.jsonl").read_text().splitlines()
        assert trial["status"] == json.loads(history[-1])["status"]
        assert trial["runs"] >= 1 and trial["results"] >= 1


def test_status_shows_what_the_tuner_was_given_not_what_a_paused_run_wrote_after(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "asha"
    done = cli(
        "tune", str(REPO / "tests" / "scripts" / "late_report.py"), "--metric", "loss",
        "-p", "epochs=9", "-p", "lr=loguniform(1e-3,1)", "--max-trials", "4", "--seed", "1",
        "--workers", "2", "--grace-period", "5", "--experiment-dir", str(folder),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Each pause made its run write loss=-1000 to its results file.
    written = [json.loads(line) for trial in range(4)
               for line in (folder / str(trial) / "results.jsonl").read_text().splitlines()]
    assert any(result["loss"] == -1000.0 for result in written)
    shown = json.loads(cli("status", str(folder), "--json").stdout)
    best = json.loads((folder / "best.json").read_text())
    assert shown["best"]["value"] == best["value"] != -1000.0
    assert min(t["best"] for t in shown["trials"]) == best["value"], shown["trials"]
    assert all(t["last"] != -1000.0 for t in shown["trials"]), shown["trials"]
    table = cli("status", str(folder)).stdout
    assert "-1000" not in table, table


def test_logs_prints_a_trial_log(experiment: Path) -> None:
    result = cli("logs", str(experiment), "0", "--stderr")
    assert result.returncode == 0
    assert result.stdout == (experiment / "0" / "stderr.log").read_text()
    # A finished trial: --follow prints the log and returns at once.
    follow = cli("logs", str(experiment), "0", "--follow")
    assert follow.returncode == 0
    missing = cli("logs", str(experiment), "17")
    assert missing.returncode == 2
    assert "trial 17 not found" in missing.stderr and "trials: 0..5" in missing.stderr


def test_status_of_a_folder_that_is_no_experiment(tmp_path: Path) -> None:
    result = cli("status", str(tmp_path))
    assert result.returncode == 2 and "is not an experiment folder" in result.stderr
    result = cli("status", str(tmp_path / "nothere"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_plot_draws_the_curves(experiment: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    output = tmp_path / "curves.png"
    result = cli("plot", str(experiment), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert output.read_bytes().startswith(b"\x89PNG")
    assert "6 trials" in result.stdout and "marks" in result.stdout


def test_plot_without_matplotlib_says_how_to_get_it(experiment: Path, tmp_path: Path) -> None:
    # sys.modules[name] = None makes that import fail, as if it were not installed.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from localbackend.cli import main; "
        f"sys.exit(main(['plot', {str(experiment)!r}, '-o', {str(tmp_path / 'x.png')!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env()
    )
    assert result.returncode == 2
    assert "pip install 'localbackend[plot]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_localbackend_leaves_the_cli_alone() -> None:
    code = (
        "import sys, localbackend; "
        "assert not any(m.startswith(('localbackend.cli', 'rich', 'matplotlib')) "
        "for m in sys.modules), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env())
    help_result = cli("--help")
    assert help_result.returncode == 0
    for command in ("tune", "run", "check", "status", "logs", "stop", "plot"):
        assert command in help_result.stdout


def test_logs_follow_ends_when_the_driver_of_a_plain_backend_died(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, steps=1000, step_seconds=0.05, deliver_at_least=2)
    kill_driver(driver)
    wait_gone(trial_pids(driver.experiment_dir), timeout=5)
    result = cli("logs", str(driver.experiment_dir), "0", "--follow")
    assert result.returncode == 0, result.stderr


def _stale_experiment(tmp_path: Path, driver: dict[str, object], tuner_state: str | None) -> Path:
    """An experiment whose driver died without a word: trial 0 still reads InProgress."""
    root = tmp_path / "stale"
    trial = root / "0"
    trial.mkdir(parents=True)
    (root / "experiment.json").write_text(json.dumps({"format_version": 1, "seq": 0,
                                                      "options": {}, "trials": {}}))
    (root / "driver.json").write_text(json.dumps(driver))
    (trial / "status.jsonl").write_text(
        json.dumps({"time": time.time(), "status": "InProgress", "run": 0}) + "\n"
    )
    (trial / "stdout.log").write_text("epoch 1\n")
    if tuner_state is not None:
        (root / "tuner.json").write_text(json.dumps({
            "format_version": 1, "state": tuner_state, "driver": driver,
            "options": {"metric": "loss", "mode": "min", "scheduler": "asha",
                        "resource_attr": "epoch"},
        }))
    return root


def _follow_ends(root: Path) -> subprocess.CompletedProcess[str]:
    """``logs --follow`` on trial 0; fails the test if it does not end by itself."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "localbackend.cli", "logs", str(root), "0", "--follow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
    )
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"logs --follow did not end:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_logs_follow_ends_when_driver_json_names_a_reused_pid(tmp_path: Path) -> None:
    # The PID in driver.json is alive (this very test), but no driver holds the lock.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        root = _stale_experiment(
            tmp_path, {"pid": sleeper.pid, "host": socket.gethostname(), "since": "then"}, None
        )
        result = _follow_ends(root)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "epoch 1\n"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_tune_whose_driver_pid_lives_on_without_the_lock_is_crashed(tmp_path: Path) -> None:
    me = psutil.Process()
    driver = {"pid": me.pid, "create_time": me.create_time(), "host": socket.gethostname(),
              "started": time.time()}
    root = _stale_experiment(tmp_path, driver, "running")
    status = cli("status", str(root))
    assert status.returncode == 0, status.stderr
    assert "crashed" in status.stdout, status.stdout
    assert _follow_ends(root).returncode == 0
    stop = cli("stop", str(root), "--wait", "1")
    assert stop.returncode == 1 and "no tune is running" in stop.stderr, stop.stderr

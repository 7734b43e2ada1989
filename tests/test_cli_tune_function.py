"""``localbackend tune module:function``: a Python function tuned from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli_tune import cli, shown

MODULE = '''
from localbackend import checkpoint, report


def train(lr, epochs):
    state = checkpoint.load_json() or {"epoch": 0}
    for epoch in range(state["epoch"] + 1, epochs + 1):
        state["epoch"] = epoch
        checkpoint.save_json(state)
        report(epoch=epoch, loss=lr / epoch)
'''


def test_tune_runs_a_function_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "fnmod.py").write_text(MODULE)
    experiment = tmp_path / "exp"
    result = cli("tune", "fnmod:train", "-p", "lr=loguniform(0.01,1)", "-p", "epochs=3",
                 "--metric", "loss", "--scheduler", "random", "--max-trials", "2",
                 "--workers", "2", "--experiment-dir", str(experiment), "--seed", "1",
                 cwd=tmp_path)
    assert result.returncode == 0, shown(result)
    best = json.loads((experiment / "best.json").read_text())
    assert best["metric"] == "loss", shown(result)
    assert (experiment / "0" / "function.pkl").exists()
    assert json.loads((experiment / "tuner.json").read_text())["options"]["script"] == (
        "fnmod:train")

    again = cli("tune", "--resume", str(experiment), "--max-trials", "3", cwd=tmp_path)
    assert again.returncode == 0, shown(again)
    history = [json.loads(line) for line in
               (experiment / "2" / "status.jsonl").read_text().splitlines()]
    assert history[-1]["status"] == "Completed", shown(again)


def test_a_function_that_cannot_be_imported_is_named(tmp_path: Path) -> None:
    result = cli("tune", "nosuchmodule:train", "-p", "lr=0.1", "--metric", "loss",
                 "--experiment-dir", str(tmp_path / "exp"), cwd=tmp_path)
    assert result.returncode == 2, shown(result)
    assert "nosuchmodule:train" in result.stderr, shown(result)

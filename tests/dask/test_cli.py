"""``localbackend tune --dask``: the command-line tuner on a Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.dask.conftest import Cluster
from tests.test_cli_tune import SPACE, TRAIN, cli, shown

pytestmark = pytest.mark.dask
pytest.importorskip("distributed")


def test_tune_runs_every_trial_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    experiment = tmp_path / "tune"
    result = cli(
        "tune", str(TRAIN), "--config", str(SPACE), "--metric", "loss", "--max-trials", "4",
        "--workers", "2", "--seed", "3", "--dask", cluster.address,
        "--experiment-dir", str(experiment), "--view", "plain",
    )
    assert result.returncode == 0, shown(result)
    assert "best trial" in result.stdout, shown(result)
    journal = [json.loads(line) for line in (experiment / "journal.jsonl").read_text()
               .splitlines() if line.strip()] if (experiment / "journal.jsonl").exists() else []
    snapshot = json.loads((experiment / "experiment.json").read_text())
    hosts = {entry.get("host") for entry in journal if entry.get("op") == "started"}
    hosts |= {run.get("host") for trial in snapshot["trials"].values()
              for run in trial.get("runs", []) if run.get("host")}
    workers = set(cluster.worker_addresses().values())
    assert hosts and hosts <= workers, (hosts, workers)


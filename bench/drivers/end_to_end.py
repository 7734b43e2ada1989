"""Drivers for 8. end to end: ASHA over ``entrypoints/train_numpy.py``, three ways.

The same job for each tool: ``trials`` configurations drawn from the same
search space (each tool draws its own), at most ``epochs`` epochs each,
``workers`` at a time, ASHA with reduction factor ``reduction_factor`` and
a first rung at 1 epoch, judged on the validation loss.

* localbackend: ``localbackend tune`` as a user runs it (its own process);
  its ASHA pauses trials at a rung and resumes the ones it promotes from
  their checkpoints, each in a new Python process; also with ``--preload
  numpy``, where each such process is forked warm with numpy imported.
* Syne Tune: ``Tuner`` with its ``LocalBackend`` and its ``ASHA`` (stopping:
  a trial not promoted is stopped, a promoted one goes on running), in this
  driver, running the unchanged script; at ``sleep_time``.
* Ray Tune: ``Tuner`` with ``ASHAScheduler`` on the same training code as a
  function trainable (``_ray_trainable``), inside Ray's worker processes;
  with and without ``reuse_actors``.

Every driver runs under ``_tree.TreeMeter``: wall time, CPU of every process
of the tree, peak memory. Epochs trained and the best loss are read from what
the trials wrote.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from bench.drivers._common import BENCH_DIR, scratch
from bench.drivers._tree import TreeMeter

REPO = os.path.dirname(BENCH_DIR)
TRAIN_NUMPY = os.path.join(REPO, "entrypoints", "train_numpy.py")
SPACE = {  # entrypoints/search_space.json, with epochs and no demo sleep
    "lr": "loguniform(1e-3, 1)",
    "momentum": "uniform(0.5, 0.99)",
    "batch_size": "choice(16, 32, 64, 128)",
    "hidden": "int(8, 64)",
    "optimizer": "choice(sgd, adam)",
}


def _losses(lines: list[bytes], prefix: bytes = b"") -> list[float]:
    losses = []
    for line in lines:
        if not line.startswith(prefix):
            continue
        try:
            value = json.loads(line[len(prefix):]).get("loss")
        except ValueError:
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            losses.append(float(value))
    return losses


def _read_lines(pattern: str) -> list[bytes]:
    lines: list[bytes] = []
    for path in glob.glob(pattern, recursive=True):
        with open(path, "rb") as source:
            lines += source.read().splitlines()
    return lines


def _measured(meter: TreeMeter, losses: list[float], trials: int) -> dict[str, Any]:
    return {**meter.result(), "epochs": len(losses), "trials": trials,
            "best_loss": min(losses) if losses else None}


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    experiment = scratch(params, "experiment")
    space = scratch(params, "space.json")
    with open(space, "w", encoding="utf-8") as out:
        json.dump({**SPACE, "epochs": params["epochs"], "epoch_seconds": 0}, out)
    command = [
        params["trial_python"], "-m", "localbackend.cli", "tune", TRAIN_NUMPY,
        "--config", space, "--metric", "loss", "--mode", "min", "--scheduler", "asha",
        "--max-trials", str(params["trials"]), "--workers", str(params["workers"]),
        "--reduction-factor", str(params["reduction_factor"]), "--min-resource", "1",
        "--seed", str(params["seed"]), "--experiment-dir", experiment, "--view", "plain",
        *(["--preload", params["preload"]] if params.get("preload") else []),
    ]
    log_path = scratch(params, "tune.log")
    with TreeMeter() as meter, open(log_path, "wb") as log:
        tune = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        meter.driver_pid = tune.pid
        code = tune.wait()
    if code != 0:
        with open(log_path, "rb") as log:
            tail = log.read()[-3000:].decode(errors="replace")
        raise RuntimeError(f"`localbackend tune` exited with {code}:\n{tail}")
    losses = _losses(_read_lines(os.path.join(experiment, "*", "results.jsonl")))
    trials = len(glob.glob(os.path.join(experiment, "*", "results.jsonl")))
    return _measured(meter, losses, trials)


def run_syne_tuner(params: dict[str, Any]) -> dict[str, Any]:
    import importlib
    import logging

    os.environ["SYNETUNE_FOLDER"] = scratch(params, "syne-tune")
    # Imported by name: Syne Tune is only installed in the venv that runs this.
    syne_tune = importlib.import_module("syne_tune")
    baselines = importlib.import_module("syne_tune.optimizer.baselines")
    space_module = importlib.import_module("syne_tune.config_space")
    backend_module = importlib.import_module("syne_tune.backend")
    logging.getLogger("syne_tune").setLevel(logging.WARNING)
    space = {
        "lr": space_module.loguniform(1e-3, 1.0),
        "momentum": space_module.uniform(0.5, 0.99),
        "batch_size": space_module.choice([16, 32, 64, 128]),
        "hidden": space_module.randint(8, 64),
        "optimizer": space_module.choice(["sgd", "adam"]),
        "epochs": params["epochs"],
        "epoch_seconds": 0,
    }
    limit = int(params["trials"])

    class LimitedASHA(baselines.ASHA):  # type: ignore[misc, name-defined]
        """Syne Tune's ASHA, suggesting ``trials`` configurations and then no more."""

        suggested = 0

        def suggest(self) -> Any:
            if self.suggested >= limit:
                return None  # the Tuner waits for the running trials, then ends
            self.suggested += 1
            return super().suggest()

    scheduler = LimitedASHA(
        space, metric="loss", do_minimize=True, time_attr="epoch", max_t=params["epochs"],
        grace_period=1, reduction_factor=params["reduction_factor"],
        random_seed=params["seed"],
    )
    backend = backend_module.LocalBackend(entry_point=TRAIN_NUMPY, binary=params["trial_python"])
    with TreeMeter() as meter:
        tuner = syne_tune.Tuner(
            trial_backend=backend, scheduler=scheduler,
            stop_criterion=syne_tune.StoppingCriterion(max_wallclock_time=3000),
            n_workers=params["workers"], sleep_time=params["sleep_time"], save_tuner=False,
            tuner_name="e2e", print_update_interval=3600,
        )
        tuner.run()
    lines = _read_lines(os.path.join(os.environ["SYNETUNE_FOLDER"], "**", "std.out"))
    trials = len(glob.glob(os.path.join(os.environ["SYNETUNE_FOLDER"], "**", "std.out"),
                           recursive=True))
    return _measured(meter, _losses(lines, b"[tune-metric]: "), trials)


def run_ray(params: dict[str, Any]) -> dict[str, Any]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from bench.drivers import _ray_trainable

    log = scratch(params, "epochs.jsonl")
    space = {
        "lr": tune.loguniform(1e-3, 1.0),
        "momentum": tune.uniform(0.5, 0.99),
        "batch_size": tune.choice([16, 32, 64, 128]),
        "hidden": tune.randint(8, 65),
        "optimizer": tune.choice(["sgd", "adam"]),
        "epochs": params["epochs"],
        "log": log,
    }
    run_config = getattr(tune, "RunConfig", None) or ray.train.RunConfig
    # Ray's sockets live under its temporary folder, whose path must stay short.
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        with TreeMeter() as meter:
            ray.init(num_cpus=params["workers"], include_dashboard=False, log_to_driver=False,
                     _temp_dir=temp, configure_logging=False)
            try:
                tuner = tune.Tuner(
                    _ray_trainable.train,
                    param_space=space,
                    tune_config=tune.TuneConfig(
                        metric="loss", mode="min", num_samples=params["trials"],
                        max_concurrent_trials=params["workers"],
                        reuse_actors=params["reuse_actors"],
                        scheduler=ASHAScheduler(
                            time_attr="epoch", max_t=params["epochs"], grace_period=1,
                            reduction_factor=params["reduction_factor"],
                        ),
                    ),
                    run_config=run_config(storage_path=scratch(params, "ray_results"),
                                          verbose=0),
                )
                grid = tuner.fit()
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    lines = _read_lines(log)
    return _measured(meter, _losses(lines), len(grid))


if __name__ == "__main__":  # a quick look by hand: python -m bench.drivers.end_to_end ray
    contender = sys.argv[1]
    folder = tempfile.mkdtemp()
    print(globals()[f"run_{contender}"]({
        "scratch": folder, "trial_python": sys.executable, "trials": 4, "epochs": 3,
        "workers": 2, "reduction_factor": 3, "seed": 0, "sleep_time": 0.1,
        "reuse_actors": True,
    }))
    shutil.rmtree(folder, ignore_errors=True)

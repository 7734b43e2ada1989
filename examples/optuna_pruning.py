"""Tune entrypoints/train_numpy.py with Optuna; trials run as localbackend processes.

    pip install "localbackend[optuna,examples]"
    python examples/optuna_pruning.py --n-trials 12 --parallel 2

Two trials run at a time. Every epoch's validation loss goes to
``trial.report``; when the median pruner says so, the trial's process is
stopped (SIGTERM, then SIGKILL after the grace period) and the trial is told
PRUNED.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import optuna

from localbackend import LocalBackend
from localbackend.integrations.optuna import OptunaRunner

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "entrypoints" / "train_numpy.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-seconds", type=float, default=0.05)
    parser.add_argument("--experiment-dir", type=Path, default=None)
    args = parser.parse_args()

    def config(trial: optuna.Trial) -> dict[str, Any]:
        return {
            "lr": trial.suggest_float("lr", 1e-3, 0.5, log=True),
            "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam"]),
            "epochs": args.epochs,
            "epoch_seconds": args.epoch_seconds,
        }

    study = optuna.create_study(
        direction="minimize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        sampler=optuna.samplers.TPESampler(seed=0),
    )
    with LocalBackend(TRAIN_SCRIPT, experiment_dir=args.experiment_dir,
                      grace_period=5.0) as backend:
        runner = OptunaRunner(study, backend, metric="loss", step="epoch")
        runner.optimize(config, n_trials=args.n_trials, n_parallel=args.parallel)
        print(f"trial folders: {backend.experiment_dir}")
    states = [trial.state.name for trial in study.trials]
    print({state: states.count(state) for state in sorted(set(states))})
    print(f"best value {study.best_value:.4f} with {study.best_params}")


if __name__ == "__main__":
    main()

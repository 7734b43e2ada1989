"""Tune entrypoints/train_numpy.py with Syne Tune's ASHA, trials run by localbackend.

    pip install "localbackend[syne-tune,examples]"
    python examples/syne_tune_asha.py --max-trials 8 --epochs 9

ASHA stops the trials whose loss lags at a rung; each stopped trial gets
SIGTERM, saves its checkpoint, and its processes are reaped. The trials'
folders (logs, results, checkpoints) are in the Tuner's results folder
(``~/syne-tune/<name>``, or under $SYNETUNE_FOLDER), or in --experiment-dir.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from syne_tune import StoppingCriterion, Tuner
from syne_tune.config_space import choice, loguniform
from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving

from localbackend.integrations.syne_tune import SyneTuneBackend

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "entrypoints" / "train_numpy.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epoch-seconds", type=float, default=0.05)
    parser.add_argument(
        "--experiment-dir", type=Path, default=None,
        help="a new folder for the trials (default: the Tuner's results folder)",
    )
    args = parser.parse_args()

    config_space = {
        "lr": loguniform(1e-3, 0.5),
        "optimizer": choice(["sgd", "adam"]),
        "epochs": args.epochs,
        "epoch_seconds": args.epoch_seconds,
    }
    scheduler = AsynchronousSuccessiveHalving(
        config_space, metric="loss", do_minimize=True, time_attr="epoch",
        max_t=args.epochs, grace_period=1, reduction_factor=3, random_seed=0,
    )
    with SyneTuneBackend(TRAIN_SCRIPT, grace_period=5.0) as backend:
        tuner = Tuner(
            trial_backend=backend,
            scheduler=scheduler,
            # "more than N started" is Syne Tune's rule, hence the - 1.
            stop_criterion=StoppingCriterion(max_num_trials_started=args.max_trials - 1),
            n_workers=args.workers,
            sleep_time=0.05,
            wait_trial_completion_when_stopping=True,
            trial_backend_path=str(args.experiment_dir.absolute()) if args.experiment_dir else None,
            print_update_interval=3600,
        )
        tuner.run()
        trial_id, config = tuner.best_config()
        print(f"best config: trial {trial_id} {config}")
        print(f"trial folders: {backend.experiment_dir}")


if __name__ == "__main__":
    main()

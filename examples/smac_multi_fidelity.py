"""Tune entrypoints/train_numpy.py with SMAC's multi-fidelity facade (Hyperband).

    pip install "localbackend[smac,examples]"
    python examples/smac_multi_fidelity.py --n-trials 20 --parallel 2

The budget SMAC gives a trial is its number of epochs (``--epochs``); two
trials run at a time as localbackend processes, and SMAC's cost is the last
validation loss each trial reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ConfigSpace import Categorical, ConfigurationSpace, Float
from smac import MultiFidelityFacade, Scenario

from localbackend import LocalBackend
from localbackend.integrations.smac import SMACRunner

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "entrypoints" / "train_numpy.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--experiment-dir", type=Path, default=None)
    parser.add_argument("--output-dir", type=Path, default=Path("localbackend-runs/smac3_output"))
    args = parser.parse_args()

    space = ConfigurationSpace(seed=0)
    space.add([
        Float("lr", (1e-3, 0.5), log=True, default=0.05),
        Categorical("optimizer", ["sgd", "adam"], default="sgd"),
    ])
    scenario = Scenario(
        space, deterministic=True, n_trials=args.n_trials, objectives="loss",
        min_budget=1, max_budget=args.max_epochs, output_directory=args.output_dir,
        # The parallelism is the runner's: SMAC must not wrap it in Dask.
        n_workers=1,
    )
    with LocalBackend(TRAIN_SCRIPT, experiment_dir=args.experiment_dir,
                      grace_period=5.0) as backend:
        runner = SMACRunner(scenario, backend, n_parallel=args.parallel, budget_key="epochs")
        smac = MultiFidelityFacade(
            scenario, runner, overwrite=True,
            initial_design=MultiFidelityFacade.get_initial_design(scenario, n_configs=4),
        )
        incumbent = smac.optimize()
        print(f"trial folders: {backend.experiment_dir}")
    values = {name: value.item() if hasattr(value, "item") else value
              for name, value in incumbent.items()}
    print(f"incumbent {values} with cost {smac.runhistory.get_cost(incumbent):.4f}")


if __name__ == "__main__":
    main()

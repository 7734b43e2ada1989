"""Tune entrypoints/train_numpy.py with Ax's Orchestrator; trials run as localbackend processes.

    pip install "localbackend[ax,examples]"
    python examples/ax_early_stopping.py --n-trials 8 --parallel 2

Each trial's validation loss, reported every epoch, is a learning curve for
Ax; a percentile early-stopping strategy stops trials whose curve lags, and
their processes get SIGTERM (then SIGKILL after the grace period).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ax.adapter.registry import Generators
from ax.core.experiment import Experiment
from ax.core.objective import Objective
from ax.core.optimization_config import OptimizationConfig
from ax.core.parameter import ChoiceParameter, ParameterType, RangeParameter
from ax.core.search_space import SearchSpace
from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy
from ax.generation_strategy.generation_node import GenerationStep
from ax.generation_strategy.generation_strategy import GenerationStrategy
from ax.orchestration.orchestrator import Orchestrator
from ax.orchestration.orchestrator_options import OrchestratorOptions

from localbackend.integrations.ax import LocalBackendMapMetric, LocalBackendRunner

TRAIN_SCRIPT = Path(__file__).resolve().parent.parent / "entrypoints" / "train_numpy.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-seconds", type=float, default=0.1)
    parser.add_argument("--experiment-dir", type=Path, default=None,
                        help="a new folder for the trials (default: one under localbackend-runs/)")
    args = parser.parse_args()
    experiment_dir = args.experiment_dir or Path("localbackend-runs") / time.strftime(
        "ax-%Y%m%d-%H%M%S"
    )

    runner = LocalBackendRunner(
        str(TRAIN_SCRIPT), str(experiment_dir),
        fixed_config={"epochs": args.epochs, "epoch_seconds": args.epoch_seconds},
        max_parallel=args.parallel, grace_period=5.0,
    )
    loss = LocalBackendMapMetric("loss", lower_is_better=True, step_key="epoch")
    experiment = Experiment(
        name="train_numpy",
        search_space=SearchSpace([
            RangeParameter("lr", ParameterType.FLOAT, 1e-3, 0.5, log_scale=True),
            ChoiceParameter("optimizer", ParameterType.STRING, ["sgd", "adam"],
                            is_ordered=False, sort_values=False),
        ]),
        # Ax maximizes the expression: "-loss" minimizes the loss.
        optimization_config=OptimizationConfig(Objective(
            expression="-loss", metric_name_to_signature={"loss": loss.signature}
        )),
        metrics=[loss],
        runner=runner,
    )
    generation_strategy = GenerationStrategy(nodes=[GenerationStep(
        generator=Generators.SOBOL, num_trials=-1, max_parallelism=args.parallel,
        generator_kwargs={"seed": 0},
    )])
    options = OrchestratorOptions(
        total_trials=args.n_trials,
        init_seconds_between_polls=1,
        seconds_between_polls_backoff_factor=1.0,
        min_seconds_before_poll=0.0,
        early_stopping_strategy=PercentileEarlyStoppingStrategy(
            percentile_threshold=50, min_progression=2, min_curves=2
        ),
    )
    try:
        Orchestrator(experiment, generation_strategy, options).run_all_trials()
    finally:
        runner.close()
    for index, trial in sorted(experiment.trials.items()):
        print(f"trial {index}: {trial.status.name} {trial.arm.parameters}")
    data = experiment.lookup_data().full_df
    last = data.sort_values("step").groupby("trial_index").tail(1)
    best = last.loc[last["mean"].idxmin()]
    print(f"best: trial {int(best['trial_index'])} loss {best['mean']:.4f} "
          f"{experiment.trials[int(best['trial_index'])].arm.parameters}")
    print(f"trial folders: {runner.experiment_dir}")


if __name__ == "__main__":
    main()

"""The ``localbackend`` command: tune, run, check, status, logs, stop and plot.

Each subcommand lives in its own private module, imported only when it
runs, so ``localbackend --help`` is quick and rich or matplotlib are loaded
only by the commands that draw with them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

__all__ = ["main"]

_EPILOG = """\
examples:
  localbackend tune entrypoints/train_numpy.py --config entrypoints/search_space.json --metric loss
  localbackend run entrypoints/train_numpy.py -p epochs=3 -p lr=0.05
  localbackend check entrypoints/train_numpy.py -p epochs=4 -p epoch_seconds=0.1 --metric loss
  localbackend status localbackend-runs/<experiment>
"""


class _Parser(argparse.ArgumentParser):
    """Bad usage: one line naming the problem and where to read more, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="localbackend",
        description="Run hyperparameter-tuning trials as local processes, with pause and resume.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"localbackend {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    _add_tune(commands)
    _add_run(commands)
    _add_check(commands)
    _add_inspect(commands)
    _add_plot(commands)
    return parser


def _params(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-p", "--param", action="append", default=[], metavar="NAME=SPEC",
        help=f"{what}: uniform(0,0.5), loguniform(1e-4,1e-1), int(16,256), "
        "choice(sgd,adam) or a plain value such as 10; repeat for each",
    )


def _metric_options(
    parser: argparse.ArgumentParser, metric_required: bool = False, defaults: bool = True
) -> None:
    """``defaults=False`` leaves an option not given as None, so ``tune --resume`` can tell."""
    parser.add_argument(
        "--metric", required=metric_required, help="the reported value to judge trials by"
    )
    parser.add_argument(
        "--mode", choices=("min", "max"), default="min" if defaults else None,
        help="default: min",
    )
    parser.add_argument(
        "--resource-attr", default="epoch" if defaults else None,
        help="the reported value that counts progress, e.g. epoch (default)",
    )


def _add_tune(commands: Any) -> None:
    tune = commands.add_parser(
        "tune", help="tune a script's hyperparameters with asha, pbt or random search",
        description="Tune a trial script: start, pause, promote and resume trials as local "
        "processes. Ctrl-C pauses the running trials; --resume carries on.",
    )
    tune.add_argument("script", nargs="?", help="the trial script, or a function as "
                      "module:function (not with --resume)")
    tune.add_argument(
        "--config", "--search-space", dest="config", metavar="FILE",
        help='search space as JSON, e.g. {"lr": "loguniform(1e-4,1e-1)", "epochs": 10}',
    )
    _params(tune, "a search-space entry, added to or overriding --config")
    # Options without a default here get theirs in _tune, so that --resume can
    # tell an option that was given from one that was not.
    _metric_options(tune, defaults=False)
    tune.add_argument("--scheduler", choices=("asha", "pbt", "random"), help="default: asha")
    tune.add_argument(
        "--max-resource", type=float,
        help="largest resource a trial reaches (default: the fixed '<resource-attr>s' entry, "
        "e.g. epochs)",
    )
    tune.add_argument(
        "--workers", type=int, help="trials running at once (default: usable CPUs, max 4)"
    )
    tune.add_argument(
        "--max-trials", type=int, help="trials to start, for asha and random (default: 20)"
    )
    tune.add_argument("--max-time", type=float, metavar="SECONDS", help="wall-time budget")
    tune.add_argument("--seed", type=int, help="seed of the tuner's choices (default: random)")
    tune.add_argument(
        "--experiment-dir", metavar="DIR", help="default: a new folder in ./localbackend-runs/"
    )
    tune.add_argument(
        "--resume", metavar="EXPERIMENT_DIR",
        help="carry on an interrupted or crashed tune; --max-trials, --max-time, --workers "
        "and --view may change, nothing else",
    )
    tune.add_argument(
        "--dask", metavar="SCHEDULER",
        help="run the trials on a Dask cluster: a scheduler address (tcp://host:8786) or "
        "local:N for a LocalCluster of N worker processes; the experiment folder must be "
        "shared with the workers (pip install 'localbackend[dask]'); may change on --resume",
    )
    tune.add_argument(
        "--grace-period", type=float, metavar="SECONDS",
        help="time between SIGTERM and SIGKILL on pause and stop (default: 10)",
    )
    tune.add_argument(
        "--reduction-factor", type=float, help="asha's eta (default: 3)"
    )
    tune.add_argument(
        "--min-resource", type=float, help="asha's first rung (default: 1)"
    )
    tune.add_argument("--population", type=int, help="pbt's size (default: 8)")
    tune.add_argument(
        "--pbt-interval", type=float, metavar="RESOURCE",
        help="pbt compares members this often (default: a quarter of --max-resource)",
    )
    tune.add_argument(
        "--pbt-mutate", metavar="NAMES",
        help="comma-separated hyperparameters pbt explores (default: the uniform and "
        "loguniform ones)",
    )
    tune.add_argument(
        "--view", choices=("auto", "live", "plain"), default="auto",
        help="live table (terminal) or plain log lines (default: auto)",
    )
    tune.add_argument(
        "--preload", metavar="MODULES",
        help="comma-separated modules to import once, so that trials start warm, by fork "
        "(e.g. numpy,torch); a trial that cannot starts cold, with a warning",
    )
    _limit_options(tune)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    """The backend's limits, retries and retention, as flags (see ``LocalBackend``)."""
    limits = parser.add_argument_group("limits, retries and checkpoint retention")
    limits.add_argument(
        "--time-limit", type=float, metavar="SECONDS",
        help="running time each trial may use, summed over its runs; then it fails",
    )
    limits.add_argument(
        "--memory-limit", metavar="SIZE",
        help="memory of each trial's whole process tree, e.g. 2GiB; over it the trial fails",
    )
    limits.add_argument(
        "--cpus-per-trial", type=int, metavar="N", help="pin each trial to N cores of its own"
    )
    limits.add_argument(
        "--threads-per-trial", metavar="N",
        help="threads each trial's numeric libraries use (OMP_NUM_THREADS and the like): a "
        "number, 'none' to leave them be, or 'auto' (default): the cores split between "
        "--workers, unless such a variable is already set",
    )
    limits.add_argument(
        "--heartbeat-timeout", type=float, metavar="SECONDS",
        help="a trial silent this long (no result, no output) is hung: stacks dumped, failed",
    )
    limits.add_argument(
        "--max-failures", type=int, metavar="N",
        help="retry a failed trial from its latest checkpoint up to N times (default: 0)",
    )
    limits.add_argument(
        "--keep-checkpoints", type=int, metavar="K", help="keep the newest K checkpoints a trial"
    )
    limits.add_argument(
        "--keep-best", type=int, metavar="K",
        help="keep the checkpoints of the K best trials by --metric, delete the other finished",
    )
    limits.add_argument(
        "--checkpoint-budget", metavar="SIZE",
        help="bytes all checkpoints may take, e.g. 20GiB; the worst finished trials' go first",
    )


def _add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="run one trial, streaming its output and results",
        description="Run one trial for debugging. Its stdout and stderr stream live (marked "
        "out| and err|), each reported result shows as it arrives, and the command exits with "
        "the trial's exit code.",
    )
    run.add_argument("script", help="the trial script")
    _params(run, "a config entry; ranges are sampled once")
    run.add_argument("--seed", type=int, default=0, help="for sampling ranges (default: 0)")
    run.add_argument("--experiment-dir", metavar="DIR")
    run.add_argument("--grace-period", type=float, default=5.0, metavar="SECONDS")


def _add_check(commands: Any) -> None:
    check = commands.add_parser(
        "check", help="check that a trial script reports, pauses and resumes correctly",
        description="Run a trial script a few times and check that it reports results, exits "
        "on SIGTERM, resumes from its checkpoint, resumes exactly, and starts from a copied "
        "checkpoint. Exits 1 if any check fails.",
    )
    check.add_argument("script", help="the trial script")
    _params(check, "a config entry; give enough work for a few results")
    _metric_options(check, metric_required=True)
    check.add_argument("--seed", type=int, default=0, help="for sampling ranges (default: 0)")
    check.add_argument(
        "--grace-period", type=float, default=3.0, metavar="SECONDS",
        help="how long the script may take to exit after SIGTERM (default: 3)",
    )
    check.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS",
        help="longest a check waits for the script (default: 120)",
    )
    check.add_argument("--experiment-dir", metavar="DIR")
    check.add_argument(
        "--preload", metavar="MODULES",
        help="run every check warm, with these comma-separated modules preloaded (e.g. "
        "numpy,torch), and compare what the script reports with a cold start",
    )


def _add_inspect(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="the trial table of an experiment, read from its files",
        description="Show the trials of an experiment folder. Works while a tune runs.",
    )
    status.add_argument("experiment_dir")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    logs = commands.add_parser(
        "logs", help="print a trial's stdout or stderr",
        description="Print a trial's log; --follow keeps printing until the trial ends.",
    )
    logs.add_argument("experiment_dir")
    logs.add_argument("trial", type=int)
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--follow", "-f", action="store_true", help="wait for more output")

    stop = commands.add_parser(
        "stop", help="stop trials of a running tune, or the whole run",
        description="Ask the running `tune` to stop the named trials, or with none named to "
        "end the whole run.",
    )
    stop.add_argument("experiment_dir")
    stop.add_argument("trials", type=int, nargs="*", metavar="TRIAL")
    stop.add_argument(
        "--wait", type=float, default=15.0, metavar="SECONDS",
        help="how long to wait for the driver's answer (default: 15; 0: do not wait)",
    )


def _add_plot(commands: Any) -> None:
    plot = commands.add_parser(
        "plot", help="draw the learning curves of all trials (needs matplotlib)",
        description="Draw each trial's metric against the resource, marking pauses, "
        "promotions, stops and PBT checkpoint copies.",
    )
    plot.add_argument("experiment_dir")
    plot.add_argument("--metric", help="default: the tune's metric")
    plot.add_argument("--resource-attr", help="default: the tune's resource attribute")
    plot.add_argument("-o", "--output", default="curves.png", help="default: curves.png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``localbackend`` command; returns its exit code."""
    from .._errors import LocalBackendError
    from ._common import CliError

    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "tune":
            from ._tune import run_tune

            return run_tune(args)
        if args.command == "run":
            from ._run import run_one

            return run_one(args)
        if args.command == "check":
            from ._check import run_check

            return run_check(args)
        if args.command in ("status", "logs", "stop"):
            from . import _inspect

            handler = {"status": _inspect.status, "logs": _inspect.logs, "stop": _inspect.stop}
            return handler[args.command](args)
        from ._plot import plot

        return plot(args)
    except CliError as err:
        print(f"localbackend {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except LocalBackendError as err:
        print(f"localbackend {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        sys.stderr.close()
        return 1

"""``localbackend tune``: check the options, then build or restore a tuner and run it."""

from __future__ import annotations

import argparse
import math
import os
import random
from pathlib import Path
from typing import Any, Optional

from .. import FunctionBackend, LocalBackend
from .._cores import usable_cores
from .._paths import default_experiment_dir
from .._protocol import THREAD_COUNT_VARIABLES
from ..core._lock import experiment_is_held
from ._common import (
    TUNER_FORMAT_VERSION,
    CliError,
    TunerPaths,
)
from ._function_ref import is_function_reference, load_function
from ._live import make_view
from ._schedulers import Asha, Pbt, RandomSearch, Scheduler, Settings
from ._search_space import SearchSpace, build_search_space
from ._state import load_state
from ._tune_loop import Tuner
from ._tune_options import TuneOptions

SCHEDULERS = ("asha", "pbt", "random")
DEFAULT_MAX_TRIALS = 20
# The options that the parser leaves None when not given, with their defaults.
_DEFAULTS: dict[str, Any] = {
    "mode": "min", "resource_attr": "epoch", "scheduler": "asha", "grace_period": 10.0,
    "reduction_factor": 3.0, "min_resource": 1.0, "population": 8,
}
# What a saved tune fixed for good: (option, field of TuneOptions).
_FIXED_ON_RESUME = (
    ("--metric", "metric"), ("--mode", "mode"), ("--resource-attr", "resource_attr"),
    ("--max-resource", "max_resource"), ("--scheduler", "scheduler"), ("--seed", "seed"),
    ("--grace-period", "grace_period"), ("--reduction-factor", "reduction_factor"),
    ("--min-resource", "min_resource"), ("--population", "population"),
    ("--pbt-interval", "pbt_interval"), ("--pbt-mutate", "pbt_mutate"),
    ("--preload", "preload"),
)


def run_tune(args: argparse.Namespace) -> int:
    view_mode = args.view
    tuner = _resumed_tuner(args) if args.resume is not None else _new_tuner(args)
    tuner.view = make_view(view_mode)
    return tuner.run()


# -- setting up ------------------------------------------------------------


def _new_tuner(args: argparse.Namespace) -> Tuner:
    for name, default in _DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.script is None:
        raise CliError("tune needs a trial script: localbackend tune SCRIPT --metric NAME ...")
    if args.metric is None:
        raise CliError(
            "tune needs --metric, the name of the reported value to optimize, e.g. --metric loss"
        )
    function = load_function(args.script) if is_function_reference(args.script) else None
    script = Path(args.script)
    if function is None and not script.is_file():
        raise CliError(f"trial script {args.script!r} does not exist or is not a file "
                       "(or name a function as module:function)")
    space = build_search_space(args.config, args.param or [])
    if not space.entries:
        raise CliError(
            "the search space is empty; give --config FILE and/or -p name=spec, "
            "e.g. -p lr=loguniform(1e-4,1e-1) -p epochs=10"
        )
    workers = args.workers if args.workers is not None else min(4, usable_cores())
    _check_positive("--workers", workers)
    max_trials = args.max_trials if args.max_trials is not None else DEFAULT_MAX_TRIALS
    max_resource = _max_resource(args, space)
    interval = args.pbt_interval
    if interval is None and args.scheduler == "pbt":
        interval = max(1.0, math.floor((max_resource or 8) / 4))
    options = TuneOptions(
        script=args.script if function is not None else str(script.resolve()),
        metric=args.metric,
        mode=args.mode,
        resource_attr=args.resource_attr,
        max_resource=max_resource,
        scheduler=args.scheduler,
        workers=workers,
        max_trials=max_trials if args.scheduler != "pbt" else args.population,
        max_time=args.max_time,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(2**31),
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        min_resource=args.min_resource,
        population=args.population,
        pbt_interval=interval,
        pbt_mutate=_split_names(args.pbt_mutate),
        preload=_split_names(args.preload),
    )
    _check_options(options, space)
    root = Path(args.experiment_dir) if args.experiment_dir else default_experiment_dir()
    root = root.expanduser().absolute()
    files = TunerPaths(root)
    if files.state.exists():
        raise CliError(
            f"{root} already holds a tune; carry it on with `localbackend tune --resume {root}` "
            "or choose another --experiment-dir"
        )
    if root.exists() and any(root.iterdir()):
        raise CliError(f"--experiment-dir {root} is not empty; choose a new or empty folder")
    settings: dict[str, Any] = dict(
        experiment_dir=root, grace_period=options.grace_period,
        launcher=trial_launcher(args), preload=options.preload, **backend_limits(args, options),
    )
    backend = (FunctionBackend(function, **settings) if function is not None
               else LocalBackend(script, **settings))
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    rng = random.Random(options.seed)
    scheduler = make_scheduler(options, space, rng)
    return Tuner(options, space, backend, files, scheduler, rng)


_LIMIT_FLAGS = (
    "time_limit", "memory_limit", "cpus_per_trial", "threads_per_trial", "heartbeat_timeout",
    "max_failures", "keep_checkpoints", "keep_best", "checkpoint_budget",
)


def trial_launcher(args: argparse.Namespace) -> Any:
    """Where the trials run: a ``DaskLauncher`` for ``--dask``, else this machine (None)."""
    if not getattr(args, "dask", None):
        return None
    try:
        import distributed  # noqa: F401
    except ImportError as err:
        raise CliError(
            "--dask needs Dask: pip install 'localbackend[dask]'"
        ) from err
    from ..launchers.dask import DaskLauncher

    return DaskLauncher(args.dask)


def backend_limits(args: argparse.Namespace, options: TuneOptions) -> dict[str, Any]:
    """The ``LocalBackend`` keywords of the limit flags that were given."""
    given = {name: getattr(args, name, None) for name in _LIMIT_FLAGS}
    chosen = {name: value for name, value in given.items() if value is not None}
    for name in ("memory_limit", "checkpoint_budget"):
        if name in chosen and str(chosen[name]).isdigit():
            chosen[name] = int(chosen[name])
    at_once = min(options.workers, options.max_trials or options.workers)
    threads = threads_per_trial(
        chosen.pop("threads_per_trial", "auto"), at_once,
        pinned=chosen.get("cpus_per_trial") is not None,
        elsewhere=bool(getattr(args, "dask", None)),
    )
    if threads is not None:
        chosen["threads_per_trial"] = threads
    if chosen.get("keep_best") is not None or chosen.get("checkpoint_budget") is not None:
        chosen.update(metric=options.metric, mode=options.mode)
    return chosen


def threads_per_trial(value: str, workers: int, *, pinned: bool, elsewhere: bool) -> int | None:
    """``--threads-per-trial``: a count, ``none``, or ``auto``.

    ``auto`` splits the cores this process may use (its affinity, capped by a
    cgroup CPU quota: see ``_cores``) between the ``workers`` trials that can
    run at once, so that two trials never run a core's worth
    of threads each on one core. It sets nothing where the choice is already
    made or cannot be made here: a thread variable in the environment,
    ``--cpus-per-trial`` (pinned trials get one thread per core), a single
    worker, or trials that run on other machines (``--dask``). The count is
    saved with the experiment, so ``--resume`` keeps it.
    """
    word = str(value).strip().lower()
    if word == "none":
        return None
    if word == "auto":
        if pinned or elsewhere or workers <= 1:
            return None
        if any(name in os.environ for name in THREAD_COUNT_VARIABLES):
            return None
        return max(1, usable_cores() // workers)
    if word.isascii() and word.isdecimal() and int(word) >= 1:
        return int(word)
    raise CliError(
        f"--threads-per-trial {value!r} is not a thread count; give a whole number >= 1, "
        "'auto' or 'none'"
    )


def _resumed_tuner(args: argparse.Namespace) -> Tuner:
    given = [
        shown
        for shown, value in (
            ("SCRIPT", args.script), ("--config", args.config), ("-p", args.param),
            ("--experiment-dir", args.experiment_dir),
        )
        if value is not None and value != [] and value is not False
    ]
    if given:
        raise CliError(
            f"--resume carries on with the script and search space saved in the folder; "
            f"drop {', '.join(given)} (only --max-time, --max-trials, --workers and --view may "
            "change)"
        )
    root = Path(args.resume).expanduser().absolute()
    files = TunerPaths(root)
    state = load_state(files)
    if state is None:
        raise CliError(
            f"--resume {args.resume}: no tuner state ({files.state.name}) in that folder; "
            "give the experiment folder that `localbackend tune` printed"
        )
    if state.get("format_version", 0) > TUNER_FORMAT_VERSION:
        raise CliError(
            f"--resume {args.resume}: the tuner state was written by a newer localbackend "
            f"(format {state.get('format_version')}); upgrade localbackend"
        )
    if experiment_is_held(root):
        driver = state.get("driver")
        pid = driver.get("pid") if isinstance(driver, dict) else "unknown"
        raise CliError(
            f"--resume {args.resume}: a tune (pid {pid}) is still running on this folder; "
            f"end it with `localbackend stop {root}` first"
        )
    restore = getattr(LocalBackend, "restore", None)
    if restore is None:
        raise CliError("this version of localbackend cannot restore an experiment folder yet")
    options = TuneOptions(**state["options"])
    _check_fixed(args, options)
    _check_limits_kept(args, options, root)
    # Budgets may be raised on resume; what was tuned stays as it was.
    for name in ("max_time", "max_trials", "workers"):
        value = getattr(args, name)
        if value is not None:
            _check_positive("--" + name.replace("_", "-"), value)
            setattr(options, name, value)
    if options.scheduler == "pbt":
        options.max_trials = options.population
    space = SearchSpace.from_json(state["search_space"])
    rng = random.Random()
    rng.setstate(_rng_state(state["rng_state"]))
    scheduler = make_scheduler(options, space, rng)
    scheduler.load_state_dict(state["scheduler_state"])
    for trial_id, trial_state in state.get("scheduler_trials", {}).items():
        scheduler.load_trial_state(int(trial_id), trial_state)
    if is_function_reference(options.script):
        restore = FunctionBackend.restore  # new trials get the function from a trial folder
    backend = restore(root, launcher=trial_launcher(args))
    tuner = Tuner(options, space, backend, files, scheduler, rng)
    tuner.load_state(state)
    return tuner


def _check_fixed(args: argparse.Namespace, saved: TuneOptions) -> None:
    """Refuse an option given to ``--resume`` that differs from what the tune saved."""
    for option, name in _FIXED_ON_RESUME:
        given = getattr(args, name)
        if given is None:
            continue
        if name in ("pbt_mutate", "preload"):
            given = _split_names(given)
        kept = getattr(saved, name)
        if _same_setting(given, kept):
            continue
        raise CliError(
            f"--resume {args.resume}: {option} cannot change on resume (saved: "
            f"{_shown_setting(kept)}, given: {_shown_setting(given)}); drop {option} to carry "
            f"on with the saved value, or start a new tune with {option} "
            f"{_shown_setting(given)} in another --experiment-dir"
        )


def _check_limits_kept(args: argparse.Namespace, options: TuneOptions, root: Path) -> None:
    """Refuse a limit flag given to ``--resume`` whose value differs from the experiment's.

    Each is read as the backend reads it (``"1GiB"`` is ``1073741824``) and
    compared with what the experiment folder saved.
    """
    given = {name: getattr(args, name, None) for name in _LIMIT_FLAGS}
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return
    from ..core._journal import load_state as load_experiment
    from ..core._limits import Retention, TrialLimits, bytes_text, check_cpus_per_trial

    saved = load_experiment(root)["options"]
    wanted = backend_limits(args, options)
    limits = TrialLimits.check(**{
        name: wanted[name] for name in TrialLimits.__dataclass_fields__ if name in wanted
    }).saved()
    retention = Retention.check(**{
        name: wanted[name] for name in Retention.__dataclass_fields__ if name in wanted
    }).saved()
    for name in given:
        if name in limits:
            now, kept = limits[name], (saved.get("limits") or {}).get(name)
        elif name in retention:
            now, kept = retention[name], (saved.get("retention") or {}).get(name)
        elif name == "cpus_per_trial":
            now, kept = check_cpus_per_trial(wanted.get(name), 0), saved.get(name)
        else:
            now, kept = wanted.get(name), saved.get(name)
        if _same_setting(now, kept):
            continue
        flag = "--" + name.replace("_", "-")
        sizes = name in ("memory_limit", "checkpoint_budget")
        shown = [bytes_text(v) if sizes and isinstance(v, int) else _shown_setting(v)
                 for v in (kept, now)]
        raise CliError(
            f"--resume {args.resume}: {flag} cannot change on resume (saved: {shown[0]}, "
            f"given: {shown[1]}); drop {flag} to carry on with the saved value"
        )


def _same_setting(given: Any, saved: Any) -> bool:
    numbers = (int, float)
    if isinstance(given, numbers) and isinstance(saved, numbers):
        return float(given) == float(saved)
    return bool(given == saved)


def _shown_setting(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "nothing"
    return str(value)


def make_scheduler(options: TuneOptions, space: SearchSpace, rng: random.Random) -> Scheduler:
    settings = Settings(
        metric=options.metric,
        mode="min" if options.mode == "min" else "max",
        resource_attr=options.resource_attr,
        max_resource=options.max_resource,
    )
    if options.scheduler == "asha":
        return Asha(
            space, settings, rng,
            reduction_factor=options.reduction_factor, min_resource=options.min_resource,
        )
    if options.scheduler == "pbt":
        return Pbt(
            space, settings, rng,
            population=options.population,
            interval=options.pbt_interval or 1.0,
            mutable=options.pbt_mutate,
        )
    return RandomSearch(space, settings, rng)


def _max_resource(args: argparse.Namespace, space: SearchSpace) -> Optional[float]:
    if args.max_resource is not None:
        _check_positive("--max-resource", args.max_resource)
        return float(args.max_resource)
    attr = args.resource_attr
    for name in (f"{attr}s", f"max_{attr}", f"num_{attr}s", attr):
        value = space.fixed.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    if args.scheduler == "asha":
        raise CliError(
            f"asha needs the largest {attr!r} a trial reaches: pass --max-resource N, or fix "
            f"'{attr}s' in the search space (e.g. -p {attr}s=27)"
        )
    return None


def _check_options(options: TuneOptions, space: SearchSpace) -> None:
    if options.max_trials is not None:
        _check_positive("--max-trials", options.max_trials)
    if options.max_time is not None:
        _check_positive("--max-time", options.max_time)
    if options.grace_period < 0:
        raise CliError(f"--grace-period {options.grace_period:g} must be >= 0 seconds")
    if options.reduction_factor <= 1:
        raise CliError(f"--reduction-factor {options.reduction_factor:g} must be > 1, e.g. 3")
    _check_positive("--min-resource", options.min_resource)
    _check_positive("--population", options.population)
    if options.scheduler == "pbt":
        if options.population < 2:
            raise CliError(f"--population {options.population} must be at least 2 for pbt")
        domains = space.domains
        for name in options.pbt_mutate or []:
            if name not in domains:
                raise CliError(
                    f"--pbt-mutate {name!r} is not a searched hyperparameter; choose among: "
                    + (", ".join(domains) or "none (give ranges with -p name=uniform(a,b))")
                )


def _check_positive(option: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise CliError(f"{option} {value:g} must be > 0")


def _split_names(text: str | None) -> Optional[list[str]]:
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _rng_state(saved: list[Any]) -> tuple[Any, ...]:
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


__all__ = ["SCHEDULERS", "make_scheduler", "run_tune"]

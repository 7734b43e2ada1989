"""``localbackend check --preload``: does the script report the same when it starts warm?

With ``--preload``, every trial of the check runs warm (forked from the
supervisor that imported the modules, see ``launchers/local/_zygote``), so
the protocol checks hold for warm starts too. This check then runs the same
config once more, cold, in a backend of its own, and compares what the
uninterrupted warm trial (A) did with what the cold one does: the same end
(status and exit code), the same results, the same resource levels and the
same metric values.

It also shows how much sooner the first result comes warm. The first run of
each backend also waits for its supervisor: to start, and when warm to
import the modules. So each backend starts the config once more once its
supervisor is up, and the timing compares those two starts (each stopped
after its first result).

Last, it names the packages the warm trial's script still imported after
the fork, which the warm runs list (``ENV_WARM_IMPORTS``), so that the user
can add them to ``--preload``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .. import LocalBackend
from .._paths import TrialPaths, default_experiment_dir, warm_imports_file
from .._types import FINISHED_STATUSES, Status
from ._check_verdicts import FAIL, PASS, SKIP, Verdict, _same, ending
from ._common import CliError, format_value

CHECK = "warm-start"
# Keys the backend adds to every result; they differ between any two runs.
_PER_RUN_KEYS = frozenset({"st_worker_timestamp", "st_worker_time", "st_worker_iter"})


def preload_names(text: Optional[str]) -> Optional[list[str]]:
    """The modules of ``--preload numpy,torch``; None when it is not given."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CliError("--preload needs module names, e.g. --preload numpy,torch")
    return names


def judge_warm_start(
    warm: LocalBackend, config: dict[str, Any], args: argparse.Namespace, trial_id: int = 0,
    imports: Optional[Path] = None,
) -> Verdict:
    """Compare the warm backend's uninterrupted trial with a cold run of the same config.

    ``imports`` is the folder where the warm runs listed the modules their
    script imported after the fork (``ENV_WARM_IMPORTS``).
    """
    modes = getattr(warm._supervisor, "start_modes", {})
    if (trial_id, 0) not in modes:
        return Verdict(CHECK, SKIP, "the launcher did not say whether the run started warm")
    reason = modes[(trial_id, 0)]
    if reason is not None:
        return Verdict(
            CHECK, FAIL, f"the run started cold: {reason}",
            "remove that cause, or drop --preload: this script cannot start warm as it is",
        )
    warm_results = _results(TrialPaths(warm.trial_dir(trial_id)).results)
    root = Path(args.experiment_dir + "-cold") if args.experiment_dir else default_experiment_dir()
    cold = LocalBackend(args.script, experiment_dir=root, grace_period=args.grace_period)
    print(f"cold run for the warm-start check: {cold.experiment_dir}", flush=True)
    try:
        cold_results, cold_trial, cold_status = _run_cold(cold, config, args)
        if cold_status not in FINISHED_STATUSES or cold_trial.exit_code != 0:
            return Verdict(
                CHECK, SKIP, f"the cold run did not complete ({ending(cold_trial)})",
                "fix the reporting check first",
            )
        metric, attr = args.metric, args.resource_attr
        ended = _ended_otherwise(warm, trial_id, cold_trial, cold_status)
        if ended is not None:
            return Verdict(
                CHECK, FAIL, ended,
                f"compare the stderr of {warm.trial_dir(trial_id)} with the cold run's in "
                f"{cold.trial_dir(cold_trial.trial_id)}; the README's \"What a fork cannot "
                "undo\" lists how a warm start differs, or drop --preload",
            )
        differs = _first_difference(warm_results, cold_results, metric, attr)
        if differs is not None:
            return Verdict(
                CHECK, FAIL, differs,
                "a warm start shares what the supervisor imported: keep no state in the "
                "preloaded modules, seed every random generator the script uses from its "
                "config or its checkpoint (the exact-resume check tells whether the script is "
                "deterministic at all), or drop the module from --preload",
            )
        warm_time = _timed_start(warm, config, args, warm=True)
        cold_time = _timed_start(cold, config, args, warm=False)
    finally:
        cold.close()
    modules = ",".join(preload_names(args.preload) or [])
    return Verdict(
        CHECK, PASS,
        f"a warm start reports what a cold one does ({len(warm_results)} results, the same "
        f"{metric} at each {attr}); first result after {warm_time} warm, {cold_time} cold "
        f"(the first warm start, which also waited for the supervisor to start and import "
        f"{modules}: {_first_time(warm_results)})"
        + (_imported_after_fork(Path(warm_imports_file(imports, trial_id, 0))) if imports else ""),
    )


def _imported_after_fork(report: Path) -> str:
    """What the warm run's script still imported itself, that ``--preload`` could hold.

    The warm run left out the script's own modules. Modules of the standard
    library are left out too, and so are those below another one imported
    after the fork (``scipy`` stands for ``scipy.linalg``); a submodule of a
    preloaded package is named (``numpy.random`` under ``--preload numpy``).
    """
    try:
        names = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # It ended by os._exit or a signal, before it could list them.
        return "; the warm run did not list what its script imported"
    new = {str(name) for name in names} if isinstance(names, list) else set()
    shown = sorted(
        name for name in new
        if name.partition(".")[0] not in sys.stdlib_module_names
        and name.rpartition(".")[0] not in new
    )
    if not shown:
        return "; the script imported no other package after the fork"
    return (
        f"; after the fork the script still imported {', '.join(shown)}: add "
        f"{'it' if len(shown) == 1 else 'them'} to --preload to import "
        f"{'it' if len(shown) == 1 else 'them'} once, in the supervisor"
    )


def _run_cold(
    cold: LocalBackend, config: dict[str, Any], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Any, str]:
    """Run ``config`` cold to its end: its results, trial and status."""
    trial_id = cold.start_trial(config).trial_id
    deadline = time.monotonic() + args.timeout
    results: list[dict[str, Any]] = []
    while True:
        cold.wait(timeout=0.2)
        statuses, new = cold.fetch_status_results([trial_id])
        results.extend(result for _, result in new)
        trial, status = statuses[trial_id]
        if status in FINISHED_STATUSES and not cold.busy_trial_ids():
            return results, trial, status
        if time.monotonic() > deadline:
            raise CliError(
                f"the cold run took longer than --timeout {args.timeout:g}s; give the "
                "script less work with -p, or raise --timeout",
                exit_code=1,
            )


def _timed_start(
    backend: LocalBackend, config: dict[str, Any], args: argparse.Namespace, *, warm: bool
) -> str:
    """Start ``config`` once more, stop it after its first result, and say how soon that came.

    Called once the backend's supervisor is up, so that the first result
    comes as soon as a start of that kind allows. Whatever goes wrong here
    only makes the time unknown: the verdict stands.
    """
    trial_id = backend.start_trial(config).trial_id
    deadline = time.monotonic() + args.timeout
    first: Optional[dict[str, Any]] = None
    status = Status.in_progress
    while first is None and status not in FINISHED_STATUSES and time.monotonic() < deadline:
        backend.wait(timeout=0.05)
        statuses, new = backend.fetch_status_results([trial_id])
        status = statuses[trial_id][1]
        if new:
            first = new[0][1]
    if status == Status.in_progress:
        backend.stop_trial(trial_id)  # the backend's close waits for its processes
    if first is None:
        if status in FINISHED_STATUSES:
            return f"an unknown time (the timed run ended {status} before its first result)"
        return f"an unknown time (no result within --timeout {args.timeout:g}s)"
    reason = getattr(backend._supervisor, "start_modes", {}).get((trial_id, 0))
    if warm and reason is not None:
        return f"an unknown time (the timed run started cold: {reason})"
    return _first_time([first])


def _results(path: Path) -> list[dict[str, Any]]:
    """Every result the uninterrupted trial wrote (it had one run)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    results = []
    for line in lines:
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict):
            results.append(result)
    return results


def _ended_otherwise(
    warm: LocalBackend, trial_id: int, cold_trial: Any, cold_status: str
) -> Optional[str]:
    """How the warm trial ended, when that is not how the cold one did; else None."""
    statuses, _ = warm.fetch_status_results([trial_id])
    warm_trial, warm_status = statuses[trial_id]
    if (warm_status, ending(warm_trial)) == (cold_status, ending(cold_trial)):
        return None
    return (
        f"the warm run ended {warm_status} ({ending(warm_trial)}), the cold run "
        f"{cold_status} ({ending(cold_trial)})"
    )


def _first_difference(
    warm: list[dict[str, Any]], cold: list[dict[str, Any]], metric: str, attr: str
) -> Optional[str]:
    if len(warm) != len(cold):
        return f"the warm run reported {len(warm)} results, the cold run {len(cold)}"
    for w, c in zip(warm, cold):
        keys_w, keys_c = set(w) - _PER_RUN_KEYS, set(c) - _PER_RUN_KEYS
        if keys_w != keys_c:
            return (
                f"at {attr} {format_value(c.get(attr))} the warm run reports "
                f"{sorted(keys_w ^ keys_c)} where the cold run does not, or the other way round"
            )
        for key in (attr, metric):
            if not _same(w.get(key), c.get(key)):
                return (
                    f"at {attr} {format_value(c.get(attr))} the warm run reports {key} "
                    f"{format_value(w.get(key))}, the cold run {format_value(c.get(key))}"
                )
    return None


def _first_time(results: list[dict[str, Any]]) -> str:
    """Seconds from the launch of the run to its first result, as the trial measured it."""
    seconds = results[0].get("st_worker_time") if results else None
    if not isinstance(seconds, (int, float)):
        return "an unknown time"
    return f"{seconds:.3f} s"

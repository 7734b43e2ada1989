"""``localbackend check --preload``: does the script report the same when it starts warm?

With ``--preload``, every trial of the check runs warm (forked from the
supervisor that imported the modules, see ``launchers/local/_zygote``), so
the protocol checks hold for warm starts too. This check then runs the same
config once more, cold, in a backend of its own, and compares what the
uninterrupted warm trial (A) reported with what the cold one reports: the
same results, the same resource levels and the same metric values. It also
shows how much sooner the first result came warm.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

from .. import LocalBackend
from .._paths import TrialPaths, default_experiment_dir
from .._types import FINISHED_STATUSES
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
    warm: LocalBackend, config: dict[str, Any], args: argparse.Namespace, trial_id: int = 0
) -> Verdict:
    """Compare the warm backend's uninterrupted trial with a cold run of the same config."""
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
    cold_results, cold_trial, cold_status = _run_cold(config, args)
    if cold_status not in FINISHED_STATUSES or cold_trial.exit_code != 0:
        return Verdict(
            CHECK, SKIP, f"the cold run did not complete ({ending(cold_trial)})",
            "fix the reporting check first",
        )
    metric, attr = args.metric, args.resource_attr
    differs = _first_difference(warm_results, cold_results, metric, attr)
    if differs is not None:
        return Verdict(
            CHECK, FAIL, differs,
            "a warm start shares what the supervisor imported: keep no state in the preloaded "
            "modules, seed every random generator the script uses from its config or its "
            "checkpoint (the exact-resume check tells whether the script is deterministic at "
            "all), or drop the module from --preload",
        )
    return Verdict(
        CHECK, PASS,
        f"a warm start reports what a cold one does ({len(warm_results)} results, the same "
        f"{metric} at each {attr}); first result after {_first_time(warm_results)} warm, "
        f"{_first_time(cold_results)} cold",
    )


def _run_cold(
    config: dict[str, Any], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Any, str]:
    root = Path(args.experiment_dir + "-cold") if args.experiment_dir else default_experiment_dir()
    cold = LocalBackend(args.script, experiment_dir=root, grace_period=args.grace_period)
    print(f"cold run for the warm-start check: {cold.experiment_dir}", flush=True)
    try:
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
    finally:
        cold.close()


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

"""Report for 8. end to end; the drivers are ``bench.drivers.end_to_end``.

The job a user would run, with each tool a user might pick: ASHA over
``entrypoints/train_numpy.py``. Syne Tune's Tuner and Ray Tune are optional
contenders in their own venvs (``bench._contenders``), selected with the
``syne`` and ``ray`` contenders.
"""

from __future__ import annotations

from typing import Any

from bench._plan import LOCALBACKEND, Job, JobResult, Profile, errors_of, results_for, summary
from bench._stats import (
    MEBIBYTES,
    PLAIN,
    SECONDS,
    Check,
    Section,
    Summary,
    Table,
    format_summary,
)

TUNE = f"{LOCALBACKEND} tune"
PRELOAD = f"{TUNE} --preload numpy"
# numpy imports numpy.random on first use, so a script that draws random
# numbers imports it after the fork unless it is named too.
PRELOAD_RANDOM = f"{TUNE} --preload numpy,numpy.random"


def syne_label(sleep_time: float) -> str:
    return f"syne-tune 0.16 Tuner, sleep_time {sleep_time:g} s"


def ray_label(reuse_actors: bool) -> str:
    return f"Ray Tune, reuse_actors={reuse_actors}"


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    params: dict[str, Any] = {
        "trials": profile.e2e_trials, "epochs": profile.e2e_epochs,
        "workers": profile.e2e_workers, "reduction_factor": 3, "seed": 0,
    }
    rows: list[tuple[str, str, dict[str, Any]]] = []
    if "localbackend" in contenders:
        rows.append(("localbackend", TUNE, {}))
        rows.append(("localbackend", PRELOAD, {"preload": "numpy"}))
        rows.append(("localbackend", PRELOAD_RANDOM, {"preload": "numpy,numpy.random"}))
    if "syne_tuner" in contenders:
        rows += [("syne_tuner", syne_label(s), {"sleep_time": s}) for s in profile.e2e_syne_sleeps]
    if "ray" in contenders:
        rows += [("ray", ray_label(reuse), {"reuse_actors": reuse}) for reuse in (False, True)]
    return [
        Job("end_to_end", contender, label, round_, {**params, **extra}, timeout=1800.0)
        for round_ in range(profile.e2e_rounds)
        for contender, label, extra in rows
    ]


def _per_epoch(results: list[JobResult], label: str, key: str) -> Summary | None:
    return Summary.of(
        r.measurements[key] / r.measurements["epochs"]
        for r in results_for(results, label)
        if r.measurements is not None and r.measurements.get("epochs")
    )


def _count(value: Summary | None) -> str:
    if value is None:
        return "-"
    if value.count == 1 or value.low == value.high:
        return f"{value.median:g}"
    return f"{value.median:g} [{value.low:g}-{value.high:g}]"


def summarize(results: list[JobResult], profile: Profile) -> Section:
    section = Section(
        "8. End to end: ASHA over train_numpy.py",
        f"{profile.e2e_trials} trials of `entrypoints/train_numpy.py`, up to "
        f"{profile.e2e_epochs} epochs each (no demo sleep), {profile.e2e_workers} at a time, "
        f"ASHA with reduction factor 3 and its first rung at 1 epoch, minimizing the "
        f"validation loss; median [min-max] over {profile.e2e_rounds} fresh drivers per row. "
        f"Each tool draws its own configurations from the same search space "
        f"(`entrypoints/search_space.json`), so epochs and the best loss differ between them.",
    )
    table = Table(["contender", "wall", "total CPU", "CPU / epoch", "peak memory (PSS, tree)",
                   "tuner peak RSS", "zombies at peak", "epochs trained", "best loss"])
    labels = sorted({r.job.label for r in results},
                    key=lambda x: (not x.startswith(TUNE), x))
    walls: dict[str, Summary] = {}
    cpus: dict[str, Summary] = {}
    for label in labels:
        wall, cpu = summary(results, label, "wall_s"), summary(results, label, "tree_cpu_s")
        if wall is not None and cpu is not None:
            walls[label], cpus[label] = wall, cpu
        table.add(
            label, format_summary(wall, SECONDS), format_summary(cpu, SECONDS),
            format_summary(_per_epoch(results, label, "tree_cpu_s"), SECONDS),
            format_summary(summary(results, label, "peak_tree_bytes"), MEBIBYTES),
            format_summary(summary(results, label, "peak_driver_bytes"), MEBIBYTES),
            _count(summary(results, label, "peak_zombies")),
            _count(summary(results, label, "epochs")),
            format_summary(summary(results, label, "best_loss"), PLAIN),
        )
    section.tables.append(("", table))
    # The target: at equal work, localbackend tune's wall time and total CPU at
    # or below the best of the others; one check per row of ours and per measure, each
    # against the other contender best at that measure (not measured without one).
    others = [label for label in walls if not label.startswith(TUNE)]
    for mine in (TUNE, PRELOAD, PRELOAD_RANDOM):
        for name, values in (("wall time", walls), ("total CPU", cpus)):
            best = min(others, key=lambda label: values[label].median) if others else None
            ours = values.get(mine)
            if ours is None:
                detail = f"{mine} not measured"
            elif best is None:
                detail = f"{ours.median:.1f} s; no other contender ran"
            else:
                detail = (f"{ours.median:.1f} s against {values[best].median:.1f} s "
                          f"(best: {best})")
            section.checks.append(Check(
                f"{mine}: {name} ≤ the best other contender's",
                detail,
                None if ours is None or best is None
                else ours.median <= values[best].median,
            ))
    section.notes.append(
        "What differs. localbackend's ASHA pauses a trial at a rung and later resumes the "
        "ones it promotes from their checkpoints: each resume is a new Python process that "
        "imports numpy again and loads its checkpoint. Syne Tune's ASHA and Ray's "
        "`ASHAScheduler` stop the trials they do not promote and let promoted ones run on, "
        "so they never resume. Syne Tune runs the unchanged script as a process per trial "
        "and polls every `sleep_time`; Ray runs the training function inside long-lived "
        "actor processes (a fresh actor per trial unless `reuse_actors`), next to its own "
        "daemons (GCS, raylet), which the CPU and memory columns include. Total CPU is that "
        "of every process of the tree, the driver included (it makes itself a subreaper and "
        "reaps everything); memory is the peak of the tree's summed PSS, sampled every "
        "100 ms, so shared pages count once."
    )
    section.notes.append(
        "Threads. `localbackend tune` gives each trial the usable cores divided by "
        "`--workers` as its thread count (`OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS` and the "
        "like: `--threads-per-trial auto`), as Ray sets a trial's CPUs (1 here) and Dask's "
        "nanny sets 1. Syne Tune's `LocalBackend` sets nothing, so each of its trials "
        "starts a BLAS pool of one thread per core. `--preload numpy,numpy.random` also "
        "preloads what numpy imports only on first use, which this script needs for its "
        "random generator."
    )
    section.notes.append(
        "Epochs trained shows how much work each ASHA actually cut. A tuner that polls "
        "rarely sees a rung's result only after the trial has run past it (at Syne Tune's "
        "default `sleep_time` of 5 s, short epochs mean trials finish before they can be "
        "stopped), so fewer epochs at the same best loss is the better outcome, and CPU per "
        "epoch compares the cost of the work done."
    )
    section.errors += errors_of(results)
    return section

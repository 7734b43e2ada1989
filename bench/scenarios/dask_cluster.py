"""Report for the Dask scenario; the drivers are ``bench.drivers.dask_cluster``.

Left out, with a note, where ``distributed`` is not installed.
"""

from __future__ import annotations

import importlib.util

from bench._plan import LOCALBACKEND, Job, JobResult, Profile, errors_of, pooled, summary
from bench._stats import (
    MILLISECONDS,
    SECONDS,
    Check,
    Section,
    Table,
    format_ratio,
    format_summary,
    ratio,
)

TARGET = 1.2
DASK_FLOOR = "floor (client.submit + subprocess.run)"


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    if importlib.util.find_spec("distributed") is None:
        return []
    base = {"trials": profile.throughput_trials, "concurrency": profile.throughput_concurrency}
    out = []
    for round_ in range(profile.rounds):
        if "floor" in contenders:
            out.append(Job("dask_cluster", "floor", DASK_FLOOR, round_, dict(base)))
        if "localbackend" in contenders:
            out.append(Job("dask_cluster", "localbackend", LOCALBACKEND, round_, dict(base)))
    return out


def summarize(results: list[JobResult], profile: Profile) -> Section:
    section = Section(
        f"Dask: {profile.throughput_trials} trivial trials, "
        f"{profile.throughput_concurrency} at a time, on a 2-worker LocalCluster",
        "Wall time of the trials once the cluster is up and warm, against a floor of "
        "`client.submit` of a function that runs the same script with `subprocess.run`; "
        "and the latency from a result written by the trial to the fetch that hands it "
        "to the driver.",
    )
    if not results:
        section.notes.append("Left out: `distributed` is not installed (`localbackend[dask]`).")
        return section
    table = Table(["contender", "wall time", "/ floor", "result to driver"])
    floor = summary(results, DASK_FLOOR, "wall_s")
    for label in (DASK_FLOOR, LOCALBACKEND):
        wall = summary(results, label, "wall_s")
        latency = pooled(results, label, "result_latency_s")
        table.add(label, format_summary(wall, SECONDS), format_ratio(ratio(wall, floor)),
                  format_summary(latency, MILLISECONDS) if latency else "-")
    section.tables.append(("", table))
    wall_ratio = ratio(summary(results, LOCALBACKEND, "wall_s"), floor)
    section.checks.append(Check(
        f"wall time <= {TARGET}x the floor", format_ratio(wall_ratio),
        None if wall_ratio is None else wall_ratio <= TARGET,
    ))
    section.errors += errors_of(results)
    return section

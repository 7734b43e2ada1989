"""Report for 7. scale; the drivers are ``bench.drivers.scale``."""

from __future__ import annotations

from typing import Any

from bench._plan import FLOOR, LOCALBACKEND, Job, JobResult, Profile, errors_of, results_for
from bench._stats import (
    MEBIBYTES,
    MILLISECONDS,
    Check,
    Section,
    Table,
    format_ratio,
)

# "Flat": the last block within these factors of the first (issue 13: driver RSS,
# last 100 / first 100 ≤ 1.05x over 2,000 trials).
OVERHEAD_LIMIT = 1.2
RSS_LIMIT = 1.05


def _syne(profile: Profile) -> str:
    return f"syne-tune 0.16 ({profile.syne_scale_poll * 1000:g} ms poll)"


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    params = {"trials": profile.scale_trials, "concurrency": profile.scale_concurrency,
              "block": profile.scale_block, "poll": profile.syne_scale_poll,
              "warmup": profile.scale_warmup}
    rows = {"floor": FLOOR, "localbackend": LOCALBACKEND, "syne": _syne(profile)}
    return [Job("scale", c, rows[c], 0, dict(params), timeout=1800)
            for c in rows if c in contenders]


def _per_trial(block: dict[str, float], key: str, size: int) -> float:
    return block[key] / size


def summarize(results: list[JobResult], profile: Profile) -> Section:
    size = profile.scale_block
    section = Section(
        f"7. Scale: {profile.scale_trials:,} short trials, "
        f"{profile.scale_concurrency} at a time",
        f"One experiment, one driver process per contender. After a warm-up of "
        f"{profile.scale_warmup} more trials (first imports, localbackend's supervisor start), "
        f"per-trial overhead is measured per block of {size} finished trials: wall time "
        f"and driver CPU per trial, the median "
        f"`start_trial` call, and the driver's RSS at the end of the block. *First* is the "
        f"first block, *last* the last; flat means last / first ≤ {OVERHEAD_LIMIT:g}x for the "
        f"driver's CPU per trial and ≤ {RSS_LIMIT:g}x for RSS.",
    )
    table = Table(["contender", "", "wall / trial", "driver CPU / trial", "start_trial",
                   "driver RSS"])
    # localbackend's last / first: (CPU per trial, RSS, RSS first and last); None: not run.
    ours: tuple[float | None, float | None, str] | None = None
    seen: list[str] = []
    for r in results:
        if r.job.label not in seen:
            seen.append(r.job.label)
    for label in seen:
        rounds = results_for(results, label)
        if not rounds or rounds[0].measurements is None:
            continue
        blocks: list[dict[str, Any]] = rounds[0].measurements["blocks"]
        if len(blocks) < 2:
            continue
        first, last = blocks[0], blocks[-1]
        for name, block in (("first", first), ("last", last)):
            table.add(label if name == "first" else "", f"{name} {size}",
                      MILLISECONDS.show(_per_trial(block, "wall_s", size)),
                      MILLISECONDS.show(_per_trial(block, "cpu_s", size)),
                      MILLISECONDS.show(block["start_call_s"]),
                      MEBIBYTES.show(block["rss_bytes"]))
        growth = {key: (last[key] / first[key] if first[key] > 0 else None)
                  for key in ("wall_s", "cpu_s", "start_call_s", "rss_bytes")}
        table.add("", "last / first", *[format_ratio(growth[k]) for k in
                                        ("wall_s", "cpu_s", "start_call_s", "rss_bytes")])
        if label == LOCALBACKEND:
            ours = (growth["cpu_s"], growth["rss_bytes"],
                    f" ({MEBIBYTES.show(first['rss_bytes'])} → "
                    f"{MEBIBYTES.show(last['rss_bytes'])})")
    section.tables.append(("", table))
    cpu, rss, rss_span = ours if ours is not None else (None, None, "")
    blocks_name = f"last {size} / first {size}"
    section.checks += [
        Check(f"per-trial driver CPU flat ({blocks_name} ≤ {OVERHEAD_LIMIT:g}x)",
              f"localbackend {format_ratio(cpu)}",
              None if cpu is None else cpu <= OVERHEAD_LIMIT),
        Check(f"driver RSS flat ({blocks_name} ≤ {RSS_LIMIT:g}x)",
              f"localbackend {format_ratio(rss)}{rss_span}",
              None if rss is None else rss <= RSS_LIMIT),
    ]
    total = Table(["contender", "total wall", "total driver CPU", "wall / floor", "CPU / floor"])
    sums = {}
    for label in seen:
        rounds = results_for(results, label)
        if rounds and rounds[0].measurements:
            blocks = rounds[0].measurements["blocks"]
            sums[label] = (sum(b["wall_s"] for b in blocks), sum(b["cpu_s"] for b in blocks))
    base = sums.get(FLOOR)
    for label, (wall, cpu) in sums.items():
        total.add(label, f"{wall:.1f} s", f"{cpu:.2f} s",
                  format_ratio(wall / base[0]) if base and base[0] else "-",
                  format_ratio(cpu / base[1]) if base and base[1] else "-")
    section.tables.append(("Totals over all blocks:", total))
    section.errors += errors_of(results)
    return section

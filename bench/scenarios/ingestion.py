"""Report for 2. ingestion; the drivers are ``bench.drivers.ingestion``."""

from __future__ import annotations

from bench._plan import Job, JobResult, Profile, errors_of, results_for, summary
from bench._stats import (
    MICROSECONDS,
    PER_SECOND,
    PERCENT,
    SECONDS,
    Check,
    Section,
    Summary,
    Table,
    format_number,
    format_ratio,
    format_summary,
    ratio,
)

FLOOR_READER = "floor (byte offset + orjson)"
LB_FILE = "localbackend (results file)"
LB_STDOUT = "localbackend (stdout)"
SYNE = "syne-tune 0.16"
IDLE_LIMIT_S = 100e-6
FLAT_LIMIT = 1.5
BURST_TARGET = 500_000
CONCURRENT_LB = "localbackend (stdout, wait() then fetch)"


def _concurrent_floor(profile: Profile) -> str:
    return f"floor (byte offset + orjson, {profile.concurrent_poll * 1000:g} ms poll)"


def _rows(contenders: list[str]) -> list[tuple[str, str, dict[str, str]]]:
    rows: list[tuple[str, str, dict[str, str]]] = []
    if "floor" in contenders:
        rows.append(("floor", FLOOR_READER, {}))
    if "localbackend" in contenders:
        rows += [("localbackend", LB_FILE, {"via": "file"}),
                 ("localbackend", LB_STDOUT, {"via": "stdout"})]
    if "syne" in contenders:
        rows.append(("syne", SYNE, {}))
    return rows


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    burst = {"part": "burst", "sizes": list(profile.ingest_sizes),
             "idle_calls": profile.idle_fetch_calls}
    stream = {"part": "stream", "count": profile.stream_results, "rate": profile.stream_rate,
              "poll": profile.stream_poll}
    out: list[Job] = []
    for round_ in range(profile.rounds):
        for contender, label, extra in _rows(contenders):
            out.append(Job("ingestion", contender, label, round_, {**burst, **extra}))
    for round_ in range(profile.rounds):
        for contender, label, extra in _rows(contenders):
            out.append(Job("ingestion", contender, f"{label} ", round_, {**stream, **extra}))
    concurrent = {"part": "concurrent", "trials": profile.concurrent_trials,
                  "count": profile.concurrent_results, "rate": profile.concurrent_rate,
                  "poll": profile.concurrent_poll}
    rows = {"floor": _concurrent_floor(profile), "localbackend": CONCURRENT_LB}
    for round_ in range(profile.rounds):
        for contender, label in rows.items():
            if contender in contenders:
                out.append(Job("ingestion", contender, label, round_, dict(concurrent)))
    return out


def _labels(results: list[JobResult], part: str) -> list[str]:
    seen: list[str] = []
    for r in results:
        if r.job.params.get("part") == part and r.job.label not in seen:
            seen.append(r.job.label)
    return seen


def _per_size(results: list[JobResult], label: str, size: int, key: str) -> Summary | None:
    """Median [min-max] over rounds of a per-size figure."""
    values: list[float] = []
    for r in results_for(results, label):
        assert r.measurements is not None
        entry = r.measurements["sizes"].get(str(size))
        if entry is None:
            continue
        if key == "idle":
            values.append(entry["idle_fetch_s"])
        elif key == "rate":
            values.append(entry["burst_results"] / entry["burst_s"])
    return Summary.of(values)


def summarize(results: list[JobResult], profile: Profile) -> Section:
    sizes = list(profile.ingest_sizes)
    section = Section(
        "2. Ingestion: results from one trial, and from many at once",
        f"A trial writes N results at once and stays alive. *Idle fetch*: one "
        f"`fetch_status_results` that finds nothing new once all N have been read (median "
        f"of up to {profile.idle_fetch_calls} calls per driver; then median [min-max] over "
        f"{profile.rounds} driver(s)). *Burst*: the one fetch that ingests all N. The floor is "
        f"a bare reader that keeps a byte offset into the trial's stdout and parses new lines "
        f"with orjson.",
    )
    burst_labels = _labels(results, "burst")
    names = [f"N = {n:,}" for n in sizes]

    idle = Table(["contender", *names, f"{names[-1]} / {names[0]}", f"/ floor at {names[-1]}"])
    floor_last = _per_size(results, FLOOR_READER, sizes[-1], "idle")
    for label in burst_labels:
        cells = [_per_size(results, label, n, "idle") for n in sizes]
        flat = ratio(cells[-1], cells[0])
        idle.add(label, *[format_summary(c, MICROSECONDS) for c in cells], format_ratio(flat),
                 format_ratio(ratio(cells[-1], floor_last)))
    section.tables.append(("Idle fetch (finds nothing new):", idle))

    burst = Table(["contender", *names, f"/ floor at {names[-1]}"])
    floor_rate = _per_size(results, FLOOR_READER, sizes[-1], "rate")
    for label in burst_labels:
        cells = [_per_size(results, label, n, "rate") for n in sizes]
        burst.add(label, *[format_summary(c, PER_SECOND) for c in cells],
                  format_ratio(ratio(cells[-1], floor_rate)))
    section.tables.append(("Burst ingest rate (results per second, higher is better):", burst))

    stream_labels = _labels(results, "stream")
    stream = Table(["contender", "wall", "driver CPU", "CPU / wall", "inside fetch / wall",
                    "results", "driver CPU / floor"])
    floor_cpu = summary(results, f"{FLOOR_READER} ", "cpu_s")
    for label in stream_labels:
        rounds = results_for(results, label)
        share = Summary.of(r.measurements["fetch_s"] / r.measurements["wall_s"]
                           for r in rounds if r.measurements)
        busy = Summary.of(r.measurements["cpu_s"] / r.measurements["wall_s"]
                          for r in rounds if r.measurements)
        got = sorted({f"{r.measurements['results']}/{r.measurements['expected']}"
                      for r in rounds if r.measurements})
        cpu = summary(results, label, "cpu_s")
        stream.add(label.strip(), format_summary(summary(results, label, "wall_s"), SECONDS),
                   format_summary(cpu, SECONDS), format_summary(busy, PERCENT),
                   format_summary(share, PERCENT), ", ".join(got),
                   format_ratio(ratio(cpu, floor_cpu)))
    section.tables.append((
        f"Streaming: {profile.stream_results:,} results at "
        f"{profile.stream_rate:,.0f}/s, polled every {profile.stream_poll:g} s:",
        stream,
    ))

    section.tables.append(_concurrent_table(results, profile))

    for label in (LB_FILE, LB_STDOUT):
        cells = [_per_size(results, label, n, "idle") for n in sizes]
        if all(c is not None for c in cells):
            worst = max(c.median for c in cells if c is not None)
            flat = ratio(cells[-1], cells[0]) or 0.0
            section.checks.append(Check(
                f"{label}: idle fetch ≤ 100 µs, flat across sizes "
                f"(largest ≤ {FLAT_LIMIT}x smallest)",
                f"worst {MICROSECONDS.show(worst)}, {names[-1]} / {names[0]} {flat:.2f}x",
                worst <= IDLE_LIMIT_S and flat <= FLAT_LIMIT,
            ))
        rate = _per_size(results, label, sizes[-1], "rate")
        if rate is not None:
            section.checks.append(Check(
                f"{label}: burst ingest ≥ {format_number(BURST_TARGET)} results/s",
                f"{PER_SECOND.show(rate.median)} at {names[-1]}", rate.median >= BURST_TARGET,
            ))
    section.notes.append(
        "Reference from the issue: Syne Tune measured about 500 ms for an idle fetch at 100k "
        "results, and spent about 28% of the wall time inside fetch while streaming."
    )
    section.errors += errors_of(results) + _sanity(results)
    return section


def _concurrent_table(results: list[JobResult], profile: Profile) -> tuple[str, Table]:
    table = Table(["contender", "wall", "driver CPU", "CPU per result", "driver wake-ups",
                   "results", "CPU per result / floor"])
    floor_label = _concurrent_floor(profile)

    def per_result(label: str) -> Summary | None:
        return Summary.of(r.measurements["cpu_s"] / max(r.measurements["results"], 1)
                          for r in results_for(results, label) if r.measurements)

    floor = per_result(floor_label)
    for label in (floor_label, CONCURRENT_LB):
        rounds = [r for r in results_for(results, label) if r.measurements]
        if not rounds:
            continue
        got = sorted({f"{r.measurements['results']}/{r.measurements['expected']}"
                      for r in rounds if r.measurements})
        wakes = Summary.of(r.measurements["wakes"] for r in rounds if r.measurements)
        table.add(label, format_summary(summary(results, label, "wall_s"), SECONDS),
                  format_summary(summary(results, label, "cpu_s"), SECONDS),
                  format_summary(per_result(label), MICROSECONDS),
                  "-" if wakes is None else f"{wakes.median:,.0f}", ", ".join(got),
                  format_ratio(ratio(per_result(label), floor)))
    return (
        f"Many trials at once: {profile.concurrent_trials} trials, each writing "
        f"{profile.concurrent_results} results at {profile.concurrent_rate:g}/s on stdout "
        f"(localbackend takes each result as it is written; the floor reads them every "
        f"{profile.concurrent_poll * 1000:g} ms):",
        table,
    )


def _sanity(results: list[JobResult]) -> list[str]:
    problems = []
    for r in results:
        m = r.measurements
        if m is None:
            continue
        for size, entry in m.get("sizes", {}).items():
            if entry["burst_results"] != entry["expected"]:
                problems.append(f"{r.job.label}: {entry['burst_results']} results of {size}")
        if "expected" in m and m["results"] != m["expected"]:
            part = r.job.params.get("part", "stream")
            problems.append(f"{r.job.label.strip()} ({part}): {m['results']} of {m['expected']}")
    return problems

"""Report for 6. idle cost; the drivers are ``bench.drivers.idle``."""

from __future__ import annotations

from bench._plan import FLOOR, LOCALBACKEND, Job, JobResult, Profile, errors_of, results_for
from bench._stats import PERCENT, Check, Section, Summary, Table, format_ratio, format_summary

LIMIT = 0.01  # of one core


def _syne(profile: Profile) -> str:
    return f"syne-tune 0.16 ({profile.syne_idle_poll * 1000:g} ms poll)"


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    params = {"trials": profile.idle_trials, "seconds": profile.idle_seconds,
              "window": profile.idle_window, "poll": profile.syne_idle_poll}
    rows = {"floor": FLOOR, "localbackend": LOCALBACKEND, "syne": _syne(profile)}
    return [Job("idle", c, rows[c], 0, dict(params), timeout=profile.idle_seconds + 300)
            for c in rows if c in contenders]


def summarize(results: list[JobResult], profile: Profile) -> Section:
    section = Section(
        f"6. Idle cost: {profile.idle_trials} trials sleeping {profile.idle_seconds:g} s",
        f"The driver's CPU while every trial sleeps, as a share of one core: median "
        f"[min-max] over {profile.idle_window:g}-second windows (launch and exits excluded), "
        f"and over the whole measured span. *Helpers* is the CPU of the driver's other "
        f"descendants over the same span (localbackend's supervisor and keepers).",
    )
    table = Table(["contender", "driver CPU per window", "driver CPU, whole span",
                   "helpers' CPU", "measured span", "/ floor"])
    floor = _span(results, FLOOR)
    seen: list[str] = []
    for r in results:
        if r.job.label not in seen:
            seen.append(r.job.label)
    for label in seen:
        rounds = [r.measurements for r in results_for(results, label) if r.measurements]
        windows = Summary.of(v for m in rounds for v in m["window_cpu_share"])
        span = _span(results, label)
        helpers = Summary.of(m["helpers_cpu_share"] for m in rounds
                             if m.get("helpers_cpu_share") is not None)
        measured = Summary.of(m["measured_s"] for m in rounds)
        table.add(label, format_summary(windows, PERCENT), format_summary(span, PERCENT),
                  format_summary(helpers, PERCENT),
                  "-" if measured is None else f"{measured.median:.1f} s",
                  "-" if span is None or floor is None or floor.median <= 0
                  else format_ratio(span.median / floor.median))
    section.tables.append(("", table))
    span = _span(results, LOCALBACKEND)
    section.checks.append(Check(
        "driver CPU while waiting < 1% of one core",
        "-" if span is None else f"localbackend {PERCENT.show(span.median)}",
        None if span is None else span.median < LIMIT,
    ))
    if profile.idle_seconds != 30:
        section.notes.append(
            f"This run shortened the sleep to {profile.idle_seconds:g} s (the issue's scenario "
            "is 30 s)."
        )
    section.errors += errors_of(results)
    return section


def _span(results: list[JobResult], label: str) -> Summary | None:
    return Summary.of(r.measurements["cpu_share"] for r in results_for(results, label)
                      if r.measurements and r.measurements.get("cpu_share") is not None)

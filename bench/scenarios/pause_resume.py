"""Report for 3. pause and resume; the drivers are ``bench.drivers.pause_resume``."""

from __future__ import annotations

from bench._plan import FLOOR, LOCALBACKEND, Job, JobResult, Profile, errors_of, results_for
from bench._stats import (
    MILLISECONDS,
    Check,
    Section,
    Summary,
    Table,
    format_ratio,
    format_summary,
    ratio,
)

SYNE = "syne-tune 0.16 ({poll:g} ms poll)"
RESUME_LIMIT = 1.2


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    params = {"cycles": profile.pause_cycles, "ignoring_cycles": profile.pause_ignoring_cycles,
              "grace": profile.grace_period, "interval": profile.checkpoint_interval,
              "syne_poll": profile.syne_resume_poll}
    rows = {"floor": FLOOR, "localbackend": LOCALBACKEND,
            "syne": SYNE.format(poll=profile.syne_resume_poll * 1000)}
    return [Job("pause_resume", c, rows[c], 0, dict(params)) for c in rows if c in contenders]


def _pooled(
    results: list[JobResult], label: str, key: str, variants: tuple[str, ...]
) -> Summary | None:
    values: list[float] = []
    for r in results_for(results, label):
        assert r.measurements is not None
        for variant in variants:
            values += r.measurements.get(variant, {}).get(key, [])
    return Summary.of(values)


BOTH = ("cooperative", "ignoring")


def summarize(results: list[JobResult], profile: Profile) -> Section:
    section = Section(
        "3. Pause and resume",
        f"A trial that replaces its checkpoint every {profile.checkpoint_interval:g} s is "
        f"paused and resumed {profile.pause_cycles} times, then a trial that ignores SIGTERM "
        f"{profile.pause_ignoring_cycles} times (grace period {profile.grace_period:g} s for "
        f"localbackend and the floor; Syne Tune sends SIGKILL at once). Median [min-max] over "
        f"the cycles. *Process gone*: until the trial's process has exited; *slot free*: until "
        f"`busy_trial_ids()` no longer lists it. *Resume → first result*: from `resume_trial` "
        f"until the driver holds a result of the new process (localbackend: `wait()` then "
        f"fetch; Syne Tune: fetch every {profile.syne_resume_poll * 1000:g} ms); for the floor, "
        f"from `Popen` to the first line read from the trial's stdout pipe.",
    )
    table = Table(["contender", "pause_trial returns", "process gone", "gone (ignores SIGTERM)",
                   "slot free", "slot free (ignores SIGTERM)", "resume_trial returns",
                   "resume → first result", "resume / floor"])
    floor_resume = _pooled(results, FLOOR, "resume", BOTH)
    seen: list[str] = []
    for r in results:
        if r.job.label not in seen:
            seen.append(r.job.label)
    for label in seen:
        resume = _pooled(results, label, "resume", BOTH)
        table.add(
            label,
            format_summary(_pooled(results, label, "pause", BOTH), MILLISECONDS),
            format_summary(_pooled(results, label, "gone", ("cooperative",)), MILLISECONDS),
            format_summary(_pooled(results, label, "gone", ("ignoring",)), MILLISECONDS),
            format_summary(_pooled(results, label, "free", ("cooperative",)), MILLISECONDS),
            format_summary(_pooled(results, label, "free", ("ignoring",)), MILLISECONDS),
            format_summary(_pooled(results, label, "resume_call", BOTH), MILLISECONDS),
            format_summary(resume, MILLISECONDS),
            format_ratio(ratio(resume, floor_resume)),
        )
    section.tables.append(("", table))
    split = Table(["contender", "resume -> trial's first output", "output -> driver holds it"])
    for label in seen:
        split.add(label,
                  format_summary(_pooled(results, label, "resume_output", BOTH), MILLISECONDS),
                  format_summary(_pooled(results, label, "resume_notice", BOTH), MILLISECONDS))
    section.tables.append((
        "Resume to first result, split by the trial's own timestamp on that result:", split
    ))
    resume_ratio = ratio(_pooled(results, LOCALBACKEND, "resume", BOTH), floor_resume)
    section.checks.append(Check(
        f"resume → first result ≤ {RESUME_LIMIT}x the floor's spawn to first output",
        f"localbackend {format_ratio(resume_ratio)}",
        None if resume_ratio is None else resume_ratio <= RESUME_LIMIT,
    ))
    section.notes.append(
        "Reference from the issue: Syne Tune measured 139 ms from resume to first result "
        "against a 26 ms floor, with a 5 ms poll."
    )
    section.errors += errors_of(results)
    return section

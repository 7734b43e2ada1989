"""Report for warm starts (``preload``); the driver is ``bench.drivers.warm_start``."""

from __future__ import annotations

from bench._plan import LOCALBACKEND, Job, JobResult, Profile, errors_of, results_for
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

TARGET = 5.0  # a numpy trial's first result, cold / warm
# Sizes per profile: (starts, resumes, module sets).
_SIZES = {
    "full": (10, 10, (("numpy",), ("torch",))),
    "quick": (4, 4, (("numpy",), ("torch",))),
    "smoke": (1, 1, (("numpy",),)),
}


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    if "localbackend" not in contenders:
        return []
    starts, resumes, module_sets = _SIZES.get(profile.name, _SIZES["quick"])
    params = {"starts": starts, "resumes": resumes,
              "module_sets": [list(modules) for modules in module_sets]}
    return [Job("warm_start", "localbackend", LOCALBACKEND, r, dict(params), timeout=900)
            for r in range(profile.rounds)]


def _pooled(results: list[JobResult], key: str, mode: str, what: str) -> Summary | None:
    values: list[float] = []
    for r in results_for(results, LOCALBACKEND):
        entry = (r.measurements or {}).get(key) or {}
        side = entry.get(mode)
        if side is None:
            continue
        values.extend(side[what] if isinstance(side[what], list) else [side[what]])
    return Summary.of(v for v in values if v is not None)


def summarize(results: list[JobResult], profile: Profile) -> Section:
    starts, resumes, module_sets = _SIZES.get(profile.name, _SIZES["quick"])
    section = Section(
        "Warm starts: first result of an import-heavy trial, cold and warm",
        f"`bench/trials/importer.py` imports the modules, reads its checkpoint and reports. "
        f"Time from `start_trial` (or `resume_trial`) to the result in the driver's hands: "
        f"{starts} starts one after the other, and one trial paused and resumed {resumes} "
        f"times (what an ASHA promotion or a PBT exploit costs), median [min-max] pooled "
        f"over {profile.rounds} fresh drivers. *warm* is `LocalBackend(preload=[...])`; its "
        f"first start, which makes the supervisor import the modules, is shown apart.",
    )
    table = Table(["modules", "what", "cold", "warm", "cold / warm"])
    ratios: dict[str, float | None] = {}
    notes: list[str] = []
    for modules in module_sets:
        key = "+".join(modules)
        for what in ("start", "resume"):
            cold = _pooled(results, key, "cold", what)
            warm = _pooled(results, key, "warm", what)
            ratios[f"{key} {what}"] = ratio(cold, warm)
            table.add(key, what, format_summary(cold, MILLISECONDS),
                      format_summary(warm, MILLISECONDS), format_ratio(ratio(cold, warm)))
        zygote = _pooled(results, key, "warm", "zygote")
        table.add(key, "warm backend's first start", "-", format_summary(zygote, MILLISECONDS),
                  "-")
        for r in results_for(results, LOCALBACKEND):
            entry = (r.measurements or {}).get(key) or {}
            if "missing" in entry:
                notes.append(f"{key}: not installed for the trials ({entry['missing']}).")
            reasons = (entry.get("warm") or {}).get("cold_reasons") or []
            notes += [f"{key}: a warm run started cold: {reason}" for reason in reasons]
    section.tables.append(("", table))
    numpy_ratio = ratios.get("numpy start")
    section.checks.append(Check(
        f"a numpy trial's first result ≥ {TARGET:g}x sooner warm",
        "-" if numpy_ratio is None else f"{format_ratio(numpy_ratio)}",
        None if numpy_ratio is None else numpy_ratio >= TARGET,
    ))
    section.notes += sorted(set(notes))
    section.errors += errors_of(results)
    return section

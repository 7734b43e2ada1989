"""What to run: profiles (full, quick, smoke), jobs and their results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bench._stats import Summary

MiB = 2**20


@dataclass(frozen=True)
class Profile:
    """Every size and count of a bench run; ``full`` holds the issue's numbers."""

    name: str
    rounds: int
    # 1. throughput (and 4. memory, measured in the same fresh drivers)
    throughput_trials: int
    throughput_concurrency: int
    syne_polls: tuple[float, ...]
    # 2. ingestion
    ingest_sizes: tuple[int, ...]
    idle_fetch_calls: int
    stream_results: int
    stream_rate: float
    stream_poll: float
    # 3. pause and resume
    pause_cycles: int
    pause_ignoring_cycles: int
    grace_period: float
    checkpoint_interval: float
    syne_resume_poll: float
    # 5. checkpoint copy
    checkpoint_large_bytes: int
    checkpoint_small_files: int
    checkpoint_small_bytes: int
    checkpoint_rounds: int
    # 6. idle cost
    idle_trials: int
    idle_seconds: float
    idle_window: float
    syne_idle_poll: float
    # 7. scale
    scale_trials: int
    scale_concurrency: int
    scale_block: int
    scale_warmup: int
    syne_scale_poll: float
    # 8. end to end (defaults: results saved before the scenario existed)
    e2e_trials: int = 64
    e2e_epochs: int = 27
    e2e_workers: int = 2
    e2e_rounds: int = 3
    e2e_syne_sleeps: tuple[float, ...] = (5.0, 0.1)
    # 2. ingestion, many trials streaming at once (defaults: as for end to end)
    concurrent_trials: int = 32
    concurrent_results: int = 100
    concurrent_rate: float = 20.0
    concurrent_poll: float = 0.01

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)


FULL = Profile(
    name="full",
    rounds=3,
    throughput_trials=200,
    throughput_concurrency=2,
    syne_polls=(0.01, 0.1),
    ingest_sizes=(1_000, 10_000, 100_000),
    idle_fetch_calls=2000,
    stream_results=20_000,
    stream_rate=2000.0,
    stream_poll=0.1,
    pause_cycles=8,
    pause_ignoring_cycles=4,
    grace_period=1.0,
    checkpoint_interval=0.1,
    syne_resume_poll=0.005,
    checkpoint_large_bytes=512 * MiB,
    checkpoint_small_files=2048,
    checkpoint_small_bytes=256 * 1024,
    checkpoint_rounds=3,
    idle_trials=32,
    idle_seconds=30.0,
    idle_window=5.0,
    syne_idle_poll=0.1,
    scale_trials=2000,
    scale_concurrency=4,
    scale_block=100,
    scale_warmup=20,
    syne_scale_poll=0.01,
    e2e_trials=64,
    e2e_epochs=27,
    e2e_workers=2,
    e2e_rounds=3,
    e2e_syne_sleeps=(5.0, 0.1),
)

QUICK = FULL.replace(
    name="quick",
    rounds=1,
    throughput_trials=40,
    syne_polls=(0.01,),
    ingest_sizes=(1_000, 10_000, 30_000),
    idle_fetch_calls=300,
    stream_results=2000,
    pause_cycles=3,
    pause_ignoring_cycles=1,
    grace_period=0.3,
    checkpoint_large_bytes=32 * MiB,
    checkpoint_small_files=128,
    checkpoint_small_bytes=256 * 1024,
    checkpoint_rounds=1,
    idle_trials=8,
    idle_seconds=5.0,
    idle_window=1.0,
    scale_trials=240,
    scale_block=40,
    e2e_trials=16,
    e2e_epochs=9,
    e2e_rounds=1,
    e2e_syne_sleeps=(0.1,),
    concurrent_trials=16,
    concurrent_results=40,
)

# For the test suite: every code path once, in seconds.
SMOKE = QUICK.replace(
    name="smoke",
    throughput_trials=4,
    ingest_sizes=(50, 500),
    idle_fetch_calls=20,
    stream_results=100,
    pause_cycles=1,
    pause_ignoring_cycles=1,
    grace_period=0.2,
    checkpoint_large_bytes=1 * MiB,
    checkpoint_small_files=8,
    checkpoint_small_bytes=16 * 1024,
    idle_trials=2,
    idle_seconds=1.5,
    idle_window=0.4,
    scale_trials=12,
    scale_block=4,
    scale_warmup=4,
    e2e_trials=4,
    e2e_epochs=3,
    concurrent_trials=3,
    concurrent_results=5,
    concurrent_rate=50.0,
)

PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}


@dataclass(frozen=True)
class Job:
    """One fresh driver process: a contender running one scenario once."""

    scenario: str  # the module in bench.scenarios whose run_<contender> runs
    contender: str  # floor, localbackend or syne
    label: str  # the row name in tables, e.g. "syne-tune (10 ms poll)"
    round: int
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    timeout: float = 600.0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scenario, self.label, self.round)


@dataclass
class JobResult:
    job: Job
    measurements: dict[str, Any] | None
    process: dict[str, float]
    error: str | None = None


def results_for(results: list[JobResult], label: str) -> list[JobResult]:
    return [r for r in results if r.job.label == label and r.measurements is not None]


def summary(results: list[JobResult], label: str, key: str) -> Summary | None:
    """Median [min-max] of ``measurements[key]`` over the rounds of one row."""
    return Summary.of(
        r.measurements[key]
        for r in results_for(results, label)
        if r.measurements is not None and r.measurements.get(key) is not None
    )


def process_summary(results: list[JobResult], label: str, key: str) -> Summary | None:
    return Summary.of(r.process[key] for r in results_for(results, label) if key in r.process)


def pooled(results: list[JobResult], label: str, key: str) -> Summary | None:
    """Median [min-max] over every sample of a list measurement, pooled over rounds."""
    values: list[float] = []
    for r in results_for(results, label):
        assert r.measurements is not None
        values.extend(r.measurements.get(key) or [])
    return Summary.of(values)


def errors_of(results: list[JobResult]) -> list[str]:
    return [f"{r.job.label} (round {r.job.round + 1}): {r.error}"
            for r in results if r.error is not None]


# Row labels, shared by every scenario.
FLOOR = "floor (Popen + waitpid)"
LOCALBACKEND = "localbackend"


def syne_label(poll: float) -> str:
    return f"syne-tune 0.16 ({poll * 1000:g} ms poll)"

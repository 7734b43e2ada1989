"""Medians over repeats, ratios, and the Markdown tables the bench prints."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Summary:
    """Median and range of one measurement over repeats."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary | None:
        clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        if not clean:
            return None
        return cls(statistics.median(clean), min(clean), max(clean), len(clean))


def ratio(value: Summary | None, baseline: Summary | None) -> float | None:
    """Ratio of medians, or None when either side is missing or the baseline is 0."""
    if value is None or baseline is None or baseline.median <= 0:
        return None
    return value.median / baseline.median


def format_number(value: float) -> str:
    """A number with 3 significant digits, without exponent notation for usual sizes."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(magnitude)))
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class Unit:
    """How to show a quantity stored in a base unit (seconds, bytes, ...)."""

    name: str
    scale: float = 1.0

    def show(self, value: float) -> str:
        return f"{format_number(value * self.scale)} {self.name}".rstrip()


SECONDS = Unit("s")
MILLISECONDS = Unit("ms", 1e3)
MICROSECONDS = Unit("µs", 1e6)
MEBIBYTES = Unit("MiB", 1 / 2**20)
PERCENT = Unit("%", 100.0)
PER_SECOND = Unit("/s")
PLAIN = Unit("")


def format_summary(summary: Summary | None, unit: Unit) -> str:
    if summary is None:
        return "-"
    middle = unit.show(summary.median)
    if summary.count == 1 or summary.low == summary.high:
        return middle
    low = format_number(summary.low * unit.scale)
    high = format_number(summary.high * unit.scale)
    return f"{middle} [{low}-{high}]"


def format_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 100 else f"{format_number(value)}x"


@dataclass
class Check:
    """One target of the issue and whether this run met it."""

    name: str
    detail: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.columns) + " |",
            "|" + "|".join("---" for _ in self.columns) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Section:
    """What one scenario contributes to the printed report and RESULTS.md."""

    title: str
    intro: str
    tables: list[tuple[str, Table]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.title}", "", self.intro, ""]
        for caption, table in self.tables:
            if caption:
                parts += [caption, ""]
            parts += [table.markdown(), ""]
        if self.checks:
            parts += ["Targets:", ""]
            parts += [f"- **{c.verdict}**: {c.name}: {c.detail}" for c in self.checks]
            parts.append("")
        for note in self.notes:
            parts += [note, ""]
        for error in self.errors:
            parts += ["```", f"error: {error}", "```", ""]
        return "\n".join(parts)


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan

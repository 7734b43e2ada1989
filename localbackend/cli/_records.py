"""The result files of a tune: every delivered result as JSONL and CSV, and the best one."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from typing import Any, Optional

from ..core._storage import atomic_write_bytes
from ._common import (
    TunerPaths,
    append_jsonl,
    atomic_write_json,
    iter_jsonl,
    read_json,
)

_TRIAL_COLUMN = "trial_id"
_CONFIG_PREFIX = "config."


class ResultsLog:
    """Appends each result to ``results.jsonl`` and ``results.csv``; keeps ``best.json``.

    The CSV's columns are fixed by the first result. A result with a new
    field rewrites the CSV from the JSONL file with the wider header, so a
    spreadsheet always sees one rectangular table.
    """

    def __init__(self, files: TunerPaths, metric: str, mode: str) -> None:
        self.files = files
        self.metric = metric
        self.mode = mode
        self.columns: list[str] | None = _read_csv_header(files)
        self.best: Optional[dict[str, Any]] = None
        saved = read_json(files.best)
        if isinstance(saved, dict) and isinstance(saved.get("value"), (int, float)):
            self.best = saved

    def record(
        self, trial_id: int, result: dict[str, Any], config: dict[str, Any], resource_attr: str
    ) -> bool:
        """Write one result; returns True if it is the new best."""
        row = {_TRIAL_COLUMN: trial_id, **result, "config": config}
        append_jsonl(self.files.results, row)
        flat = _flatten(row)
        if self.columns is None or any(key not in self.columns for key in flat):
            self._rewrite_csv(flat)
        else:
            self._append_csv(flat)
        value = result.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.best is not None and not self._better(float(value), float(self.best["value"])):
            return False
        self.best = {
            "trial_id": trial_id,
            "metric": self.metric,
            "mode": self.mode,
            "value": value,
            "resource_attr": resource_attr,
            "resource": result.get(resource_attr),
            "config": config,
            "result": result,
            "time": time.time(),
        }
        atomic_write_json(self.files.best, self.best)
        return True

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _append_csv(self, flat: dict[str, Any]) -> None:
        assert self.columns is not None
        buffer = io.StringIO()
        csv.DictWriter(buffer, self.columns, extrasaction="ignore").writerow(flat)
        with open(self.files.results_csv, "a", encoding="utf-8", newline="") as out:
            out.write(buffer.getvalue())

    def _rewrite_csv(self, newest: dict[str, Any]) -> None:
        rows = [_flatten(row) for row in iter_jsonl(self.files.results)]
        columns: list[str] = list(self.columns or [])
        for row in [*rows, newest]:
            for key in row:
                if key not in columns:
                    columns.append(key)
        # Metrics first, then config, in the order they were first seen.
        columns.sort(key=lambda c: (c != _TRIAL_COLUMN, c.startswith(_CONFIG_PREFIX)))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        atomic_write_bytes(self.files.results_csv, buffer.getvalue().encode("utf-8"))
        self.columns = columns


def _flatten(row: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if key == "config" and isinstance(value, dict):
            for name, setting in value.items():
                flat[_CONFIG_PREFIX + name] = _cell(setting)
        else:
            flat[key] = _cell(value)
    return flat


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def _read_csv_header(files: TunerPaths) -> list[str] | None:
    try:
        with open(files.results_csv, encoding="utf-8", newline="") as source:
            header = next(csv.reader(source), None)
    except FileNotFoundError:
        return None
    return list(header) if header else None


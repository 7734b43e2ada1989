"""What the Ax runners and metrics share: one backend per folder, and the results it delivered.

A metric reads what the backend delivers (``fetch_status_results``), so a
script that prints Syne Tune's ``[tune-metric]`` lines reports under Ax as
one that calls ``localbackend.report`` does, with the same ``st_*`` fields.
Each delivered result is kept here, per trial, for every metric of the
process; a runner's poll keeps what its fetch returned too, so nothing is
delivered to one reader and lost to the other.

After a restart (a new process, a restored backend), results the earlier
process had delivered are not delivered again: Ax holds the data it fetched
then, and the curves here go on from the next result.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# Imported by ``ax`` after its own import of Ax, which explains a missing library.
import pandas as pd
from ax.core.data import MAP_KEY, Data
from ax.core.trial_status import TrialStatus

from .._paths import ExperimentPaths
from .._types import Status
from .._types import Trial as LocalTrial
from ..core._backend import LocalBackend
from ._common import metric_value

TRIAL_ID_KEY = "localbackend_trial_id"
EXPERIMENT_DIR_KEY = "experiment_dir"
TRIAL_DIR_KEY = "trial_dir"

STATUS_TO_AX = {
    Status.in_progress: TrialStatus.RUNNING,
    Status.paused: TrialStatus.RUNNING,
    Status.completed: TrialStatus.COMPLETED,
    Status.failed: TrialStatus.FAILED,
    Status.stopped: TrialStatus.EARLY_STOPPED,
}

_backends: dict[Path, LocalBackend] = {}
_delivered: dict[tuple[Path, int], list[dict[str, Any]]] = {}
_lock = threading.RLock()


def backend_for(root: Path, make: Callable[[], LocalBackend] | None = None) -> LocalBackend:
    """The one LocalBackend of ``root`` in this process: restored from the folder, or made."""
    with _lock:
        backend = _backends.get(root)
        if backend is None:
            if ExperimentPaths(root).metadata.exists() or make is None:
                backend = LocalBackend.restore(root)
            else:
                backend = make()
            _backends[root] = backend
        return backend


def close_backend(root: Path) -> None:
    with _lock:
        backend = _backends.pop(root, None)
        for key in [key for key in _delivered if key[0] == root]:
            del _delivered[key]
    if backend is not None:
        backend.close()


def close_all_backends() -> None:
    """Close every LocalBackend the Ax runners of this process opened, stopping their trials."""
    with _lock:
        roots = list(_backends)
    for root in roots:
        close_backend(root)


def fetch(backend: LocalBackend, trial_ids: list[int]) -> dict[int, tuple[LocalTrial, str]]:
    """Statuses of ``trial_ids``; the results the fetch delivered are kept for the metrics."""
    with _lock:
        statuses, results = backend.fetch_status_results(trial_ids)
        for trial_id, result in results:
            _delivered.setdefault((backend.experiment_dir, trial_id), []).append(result)
        return statuses


def delivered(backend: LocalBackend, trial_id: int) -> list[dict[str, Any]]:
    """Every result of the trial delivered in this process, new ones fetched first."""
    with _lock:
        fetch(backend, [trial_id])
        return list(_delivered.get((backend.experiment_dir, trial_id), []))


def curve_rows(results: list[dict[str, Any]], result_key: str, step_key: str,
               ) -> list[tuple[float, float]]:
    """``(step, value)`` for each result with a finite ``result_key`` and a numeric step."""
    rows = []
    for result in results:
        value = metric_value(result, result_key)
        step = result.get(step_key)
        if value is None or isinstance(step, bool) or not isinstance(step, (int, float)):
            continue
        rows.append((float(step), value))
    return rows


def curve_data(rows: list[tuple[float, float]], *, trial_index: int, arm_name: str,
               metric_name: str, signature: str) -> Data:
    return Data(df=pd.DataFrame([{
        "trial_index": trial_index, "arm_name": arm_name, "metric_name": metric_name,
        "metric_signature": signature, "mean": value, "sem": math.nan, MAP_KEY: step,
    } for step, value in rows]))


def ended_message(backend: LocalBackend, trial_id: int) -> str:
    """Why a trial ended, for Ax's ``poll_exception`` (a FAILED trial's reason)."""
    statuses = fetch(backend, [trial_id])
    found, status = statuses[trial_id]
    reason = found.failure_reason or f"ended {status}"
    tail = found.stderr_tail or "(stderr is empty)"
    return (f"trial {trial_id}: {reason} [{found.failure_kind or status}]; "
            f"its files are in {backend.trial_dir(trial_id)}\n{tail}")


def run_metadata(backend: LocalBackend, trial_id: int) -> dict[str, Any]:
    return {
        TRIAL_ID_KEY: trial_id,
        EXPERIMENT_DIR_KEY: str(backend.experiment_dir),
        TRIAL_DIR_KEY: str(backend.trial_dir(trial_id)),
    }


def metadata_trial_id(metadata: Mapping[str, Any]) -> int | None:
    trial_id = metadata.get(TRIAL_ID_KEY)
    return trial_id if isinstance(trial_id, int) and not isinstance(trial_id, bool) else None

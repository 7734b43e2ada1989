"""Driver for the warm-start scenario: time to the first result, cold and warm.

For each set of modules (numpy; torch where the trial Python has it), one
backend without ``preload`` and one with it run ``trials/importer.py``,
which imports the modules and reports. Measured from ``start_trial`` (or
``resume_trial``) to the result in the driver's hands:

* ``start``: ``starts`` trials one after the other, each to its exit;
* ``resume``: one trial paused and resumed ``resumes`` times, as ASHA's
  promotions and PBT's exploits do: each resume starts a process again.

The warm backend's first start, which makes the supervisor import the
modules, is measured apart (``zygote``), so the rest shows the steady state.
"""

from __future__ import annotations

import time
from typing import Any

from bench.drivers._common import scratch, trial_script, wait_until

FINISHED = ("Completed", "Failed", "Stopped")


def _first_result(backend: Any, trial_id: int, started: float) -> float:
    def delivered() -> float | None:
        backend.wait(timeout=1.0)
        _, results = backend.fetch_status_results([trial_id])
        return time.perf_counter() - started if results else None

    return wait_until(delivered, timeout=120, what=f"a result of trial {trial_id}")


def _until_not_busy(backend: Any, trial_id: int) -> None:
    def done() -> bool:
        backend.wait(timeout=0.2)
        backend.fetch_status_results([trial_id])
        return not any(t == trial_id for t, _ in backend.busy_trial_ids())

    wait_until(done, timeout=120, what=f"trial {trial_id} to end")


def _measure(params: dict[str, Any], modules: list[str], warm: bool) -> dict[str, Any]:
    from localbackend import LocalBackend

    backend = LocalBackend(
        trial_script("importer"),
        experiment_dir=scratch(params, f"{'warm' if warm else 'cold'}-{'-'.join(modules)}"),
        binary=[params["trial_python"]], grace_period=5.0, preload=modules if warm else None,
    )
    config = {"modules": ",".join(modules), "hold": 0}
    out: dict[str, Any] = {"start": [], "resume": [], "zygote": None, "cold_reasons": []}
    try:
        for index in range(int(params["starts"]) + (1 if warm else 0)):
            started = time.perf_counter()
            trial_id = backend.start_trial(config).trial_id
            took = _first_result(backend, trial_id, started)
            _until_not_busy(backend, trial_id)
            if warm and index == 0:
                out["zygote"] = took
            else:
                out["start"].append(took)
        trial_id = backend.start_trial({**config, "hold": 1}).trial_id
        _first_result(backend, trial_id, time.perf_counter())
        for _ in range(int(params["resumes"])):
            backend.pause_trial(trial_id)
            _until_not_busy(backend, trial_id)
            started = time.perf_counter()
            backend.resume_trial(trial_id)
            out["resume"].append(_first_result(backend, trial_id, started))
        supervisor = backend._supervisor
        modes = dict(getattr(supervisor, "start_modes", {}))
        out["cold_reasons"] = sorted({str(r) for r in modes.values() if r is not None})
    finally:
        backend.close()
    return out


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    from importlib.util import find_spec

    measurements: dict[str, Any] = {}
    for modules in params["module_sets"]:
        key = "+".join(modules)
        missing = [name for name in modules if find_spec(name) is None]
        if missing:  # looked up without importing: the driver stays small
            measurements[key] = {"missing": ", ".join(missing)}
            continue
        measurements[key] = {
            "cold": _measure(params, modules, warm=False),
            "warm": _measure(params, modules, warm=True),
        }
    return measurements

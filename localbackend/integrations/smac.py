"""SMAC: ``SMACRunner``, an ``AbstractRunner`` that runs trials as parallel LocalBackend processes.

Pass the runner itself as the facade's ``target_function``, and keep
``Scenario(n_workers=1)`` so that SMAC does not wrap it in its Dask runner:
the parallelism (``n_parallel``) is the runner's own::

    from smac import HyperparameterOptimizationFacade, Scenario
    from localbackend import LocalBackend
    from localbackend.integrations.smac import SMACRunner

    scenario = Scenario(configspace, deterministic=True, n_trials=20, objectives="loss")
    with LocalBackend("train.py") as backend:
        runner = SMACRunner(scenario, backend, n_parallel=2)
        smac = HyperparameterOptimizationFacade(scenario, runner)
        incumbent = smac.optimize()

A trial gets its configuration as ``--name value`` options, plus
``--budget`` for multi-fidelity facades (``budget_key`` renames it),
``--instance`` when the scenario has instances, and ``--seed`` when
``pass_seed=True``. Its cost is the last value it reported for each scenario
objective (``report(loss=...)``); a script
that prints SMAC's own ``cost=<value>`` line instead works too. A trial that
exits non-zero is ``CRASHED`` and its ``additional_info`` holds the stderr
tail (``error``), exit code or signal and trial folder. With
``Scenario(trial_walltime_limit=..., trial_memory_limit=...)`` each trial
gets them as its own ``time_limit`` and ``memory_limit`` (MB read as MiB),
which the keeper enforces on the trial's whole process tree: a trial ended
at the first is ``TIMEOUT``, at the second ``MEMORYOUT`` (``status_type``),
with the failure reason as ``error``; so are trials the backend's own limits
ended.

SMAC's ``smac.validate(config)`` submits the validation trials and reads the
results at once, which only a runner that runs a trial inside
``submit_trial`` can answer: with parallel trials it averages nothing and
returns NaN. Call ``runner.validate(smac, config)`` instead: the same trials,
run ``n_parallel`` at a time, waited for, and averaged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from .._types import Status
from ..core._backend import LocalBackend
from ._common import WAIT_SECONDS, IntegrationError, check_count, metric_value, missing_library

try:
    from ConfigSpace import Configuration
    from smac.facade.abstract_facade import AbstractFacade
    from smac.runhistory import StatusType, TrialInfo, TrialValue
    from smac.runner.abstract_runner import AbstractRunner
    from smac.scenario import Scenario
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_library("smac", "smac", err) from err

__all__ = ["SMACRunner", "status_type"]

logger = logging.getLogger(__name__)

_ADAPTER = "SMACRunner"
# SMAC's script convention: a stdout line such as "cost=0.5; runtime=2".
_COST_LINE = re.compile(r"(?:^|;)\s*cost\s*=\s*([^;\s]+)")

Cost = Union[float, list[float]]


@dataclass
class _Pending:
    trial_info: TrialInfo
    start_time: float
    last_values: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False


class SMACRunner(AbstractRunner):
    """Runs SMAC's trials as LocalBackend processes, up to ``n_parallel`` at once.

    Args:
        scenario: The SMAC scenario; its objectives name the result keys read
            as costs, and its ``crash_cost`` is the cost of a crashed trial.
        backend: The LocalBackend that runs the trial script. The runner does
            not close it.
        n_parallel: Trials that run at the same time.
        pass_seed: Pass SMAC's seed as ``--seed``.
        budget_key: The option that carries the budget, e.g. ``"epochs"``
            to pass ``--epochs 3``. A whole-number budget is passed as an int.
    """

    def __init__(
        self,
        scenario: Scenario,
        backend: LocalBackend,
        *,
        n_parallel: int = 1,
        pass_seed: bool = False,
        budget_key: str = "budget",
    ) -> None:
        check_count(_ADAPTER, "n_parallel", n_parallel, minimum=1)
        if scenario.n_workers != 1:
            raise IntegrationError(
                _ADAPTER, f"Scenario(n_workers={scenario.n_workers}) would make SMAC run this "
                "runner inside Dask workers",
                "Keep Scenario(n_workers=1) and set SMACRunner(n_parallel=...) instead.",
            )
        super().__init__(scenario=scenario)
        self.backend = backend
        self.n_parallel = n_parallel
        self.pass_seed = bool(pass_seed)
        self.budget_key = budget_key
        self._pending: dict[int, _Pending] = {}
        # Values of trials started by ``run``, which returns them instead of queueing.
        self._finished_values: dict[int, TrialValue] = {}
        self._trial_walltime_limit = scenario.trial_walltime_limit
        # SMAC's own per-trial limits become the keeper's, enforced on the whole
        # process tree (memory in SMAC's MB, as pynisher reads it: MiB).
        self._limits: dict[str, Any] = {}
        if scenario.trial_walltime_limit is not None:
            self._limits["time_limit"] = float(scenario.trial_walltime_limit)
        memory_mb = getattr(scenario, "trial_memory_limit", None)
        if memory_mb is not None:
            self._limits["memory_limit"] = int(memory_mb) << 20

    @property
    def meta(self) -> dict[str, Any]:
        meta = dict(super().meta)
        meta.update(
            entry_point=str(self.backend.entrypoint_path()),
            experiment_dir=str(self.backend.experiment_dir),
            n_parallel=self.n_parallel,
        )
        return meta

    # -- the submit / collect interface ---------------------------------------

    def submit_trial(self, trial_info: TrialInfo) -> None:
        """Start the trial's process; blocks while all ``n_parallel`` slots are in use."""
        while self.count_available_workers() <= 0:
            self._wait_for_any()
        config = self._trial_config(
            trial_info.config, trial_info.instance, trial_info.budget, trial_info.seed
        )
        started = self.backend.start_trial(config, limits=self._limits or None)
        self._pending[started.trial_id] = _Pending(trial_info, time.time())

    def iter_results(self) -> Iterator[tuple[TrialInfo, TrialValue]]:
        self._collect()
        while self._results_queue:
            yield self._results_queue.pop(0)

    def wait(self) -> None:
        """Block until a running trial finishes (returns at once when none runs)."""
        if self.is_running():
            self._wait_for_any()

    def is_running(self) -> bool:
        return bool(self._pending)

    def count_available_workers(self) -> int:
        return self.n_parallel - len(self._pending)

    def run(
        self,
        config: Configuration,
        instance: Optional[str] = None,
        budget: Optional[float] = None,
        seed: Optional[int] = None,
        additional_info: Optional[dict[str, Any]] = None,
    ) -> tuple[StatusType, Cost, float, float, dict[str, Any]]:
        """Run one trial to its end; SMAC's ``(status, cost, runtime, cpu_time, info)``."""
        trial_info = TrialInfo(config=config, instance=instance, seed=seed, budget=budget)
        started = self.backend.start_trial(
            self._trial_config(config, instance, budget, seed), limits=self._limits or None
        )
        pending = _Pending(trial_info, time.time())
        self._pending[started.trial_id] = pending
        try:
            while started.trial_id in self._pending:
                self.backend.wait(timeout=WAIT_SECONDS)
                self._collect(keep_results_for=started.trial_id)
        except BaseException:
            if self._pending.pop(started.trial_id, None) is not None:
                self.backend.stop_trial(started.trial_id)
            raise
        value = self._finished_values.pop(started.trial_id)
        return (value.status, value.cost, value.time, value.cpu_time, value.additional_info)

    def validate(
        self, smac: AbstractFacade, config: Configuration, *, seed: Optional[int] = None
    ) -> Union[float, list[float]]:
        """What ``smac.validate(config)`` computes, waiting for the parallel trials.

        The validation trials (``get_trials_of_interest(..., validate=True)``)
        run ``n_parallel`` at a time; returns the mean cost, per objective
        when there are several. Call it when ``optimize`` has returned.
        """
        trials = smac.intensifier.get_trials_of_interest(
            config, validate=True, seed=self._scenario.seed if seed is None else seed
        )
        for trial_info in trials:
            self.submit_trial(trial_info)
        while self.is_running():
            self._wait_for_any()
        wanted = {id(trial_info) for trial_info in trials}
        queue: list[tuple[Any, Any]] = self._results_queue
        costs = [value.cost for info, value in queue if id(info) in wanted]
        queue[:] = [item for item in queue if id(item[0]) not in wanted]
        mean = np.mean(np.array(costs, dtype=float), axis=0)
        return mean.tolist() if isinstance(mean, np.ndarray) and mean.ndim else float(mean)

    # -- internals -------------------------------------------------------------

    def _trial_config(
        self,
        config: Configuration,
        instance: Optional[str],
        budget: Optional[float],
        seed: Optional[int],
    ) -> dict[str, Any]:
        trial_config = dict(config)
        if isinstance(budget, float) and budget.is_integer():
            budget = int(budget)
        extras: dict[str, Any] = {"instance": instance, self.budget_key: budget}
        if self.pass_seed:
            extras["seed"] = seed
        for key, value in extras.items():
            if value is None:
                continue
            if key in trial_config:
                raise IntegrationError(
                    _ADAPTER, f"the configuration space has a hyperparameter named {key!r}, "
                    f"which is also the option that passes SMAC's {key}",
                    "Rename that hyperparameter.",
                )
            trial_config[key] = value
        return trial_config

    def _wait_for_any(self) -> None:
        before = len(self._pending)
        while self._pending and len(self._pending) == before:
            self.backend.wait(timeout=WAIT_SECONDS)
            self._collect()

    def _collect(self, keep_results_for: Optional[int] = None) -> None:
        """Read new results; move finished trials to the results queue."""
        if not self._pending:
            return
        statuses, results = self.backend.fetch_status_results(list(self._pending))
        for trial_id, result in results:
            pending = self._pending[trial_id]
            for objective in self._objectives:
                reported = metric_value(result, objective)
                if reported is not None:
                    pending.last_values[objective] = reported
        now = time.time()
        for trial_id, (trial, status) in statuses.items():
            pending = self._pending[trial_id]
            if status == Status.in_progress:
                limit = self._trial_walltime_limit
                if limit is not None and not pending.timed_out and now - pending.start_time > limit:
                    pending.timed_out = True
                    self.backend.stop_trial(trial_id)
                continue
            del self._pending[trial_id]
            value = self._trial_value(trial_id, trial, status, pending, now)
            if trial_id == keep_results_for:
                self._finished_values[trial_id] = value
            else:
                self._results_queue.append((pending.trial_info, value))

    def _trial_value(
        self, trial_id: int, trial: Any, status: str, pending: _Pending, end_time: float
    ) -> TrialValue:
        runtime = end_time - pending.start_time
        info: dict[str, Any] = {
            "trial_id": trial_id,
            "trial_dir": str(self.backend.trial_dir(trial_id)),
        }
        smac_status = StatusType.SUCCESS
        cost: Cost = self._crash_cost
        if status == Status.completed:
            reported = self._cost(trial_id, pending)
            if reported is not None:
                cost = reported
            else:
                smac_status = StatusType.CRASHED
                info["error"] = (
                    f"the trial exited 0 without reporting {', '.join(self._objectives)} "
                    "(report(...) or a 'cost=' line)"
                )
        elif pending.timed_out:
            smac_status = StatusType.TIMEOUT
            limit = self._trial_walltime_limit
            info["error"] = f"stopped after the trial walltime limit of {limit}s"
        else:
            smac_status = status_type(trial.failure_kind)
            info["error"] = "\n".join(part for part in (
                trial.failure_reason or f"the trial ended {status}", trial.stderr_tail) if part)
            info["failure_kind"] = trial.failure_kind
            info["exit_code"] = trial.exit_code
            info["exit_signal"] = trial.exit_signal
        if smac_status != StatusType.SUCCESS:
            logger.warning("trial %d: %s: %s (its files are in %s)", trial_id, smac_status.name,
                           info["error"], info["trial_dir"])
        return TrialValue(
            status=smac_status,
            cost=cost,
            time=runtime,
            # The trial runs in another process; its wall time is the honest bound.
            cpu_time=runtime,
            additional_info=info,
            starttime=pending.start_time,
            endtime=end_time,
        )

    def _cost(self, trial_id: int, pending: _Pending) -> Optional[Cost]:
        values = [pending.last_values.get(objective) for objective in self._objectives]
        if any(value is None for value in values):
            printed = self._printed_cost(trial_id)
            if printed is None:
                return None
            values = printed
        costs = [float(value) for value in values if value is not None]
        if len(costs) != self._n_objectives:
            return None
        return costs[0] if self._n_objectives == 1 else costs

    def _printed_cost(self, trial_id: int) -> Optional[list[Optional[float]]]:
        """The costs from the last ``cost=`` line on stdout, SMAC's script convention."""
        for line in reversed(self.backend.stdout(trial_id)):
            match = _COST_LINE.search(line)
            if match is None:
                continue
            try:
                return [float(part) for part in match.group(1).split(",")]
            except ValueError:
                return None
        return None


def status_type(failure_kind: Optional[str]) -> StatusType:
    """SMAC's status for a failed trial: its time and memory limits have their own."""
    if failure_kind == "time_limit":
        return StatusType.TIMEOUT
    if failure_kind == "memory_limit":
        return StatusType.MEMORYOUT
    return StatusType.CRASHED

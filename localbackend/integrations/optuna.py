"""Optuna: run a study's trials as LocalBackend processes, several at once, with pruning.

::

    import optuna
    from localbackend import LocalBackend
    from localbackend.integrations.optuna import OptunaRunner

    def config(trial: optuna.Trial) -> dict:
        return {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True), "epochs": 20}

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner())
    with LocalBackend("train.py") as backend:
        OptunaRunner(study, backend, metric="loss", step="epoch").optimize(
            config, n_trials=20, n_parallel=2)

Each trial is asked from the study (``study.ask()``), its config is built by
your function and the trial script is started with it. Every result the
script reports goes to ``trial.report(result[metric], step)``; when
``trial.should_prune()`` says so the process is stopped (SIGTERM, then
SIGKILL after the backend's grace period) and the trial is told ``PRUNED``.
A trial whose script exits 0 is told the last value it reported; one that
fails (or reports no value) is told ``FAIL``, with the backend's failure
reason and kind in the user attributes ``failure_reason`` (also
``fail_reason``) and ``failure_kind``, and its stderr tail in
``stderr_tail``. Results a trial writes after it was told ``PRUNED`` never
reach the study.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from .._types import Status, Trial
from ..core._backend import LocalBackend
from ._common import (
    DEFAULT_STEP_KEY,
    WAIT_SECONDS,
    IntegrationError,
    check_count,
    metric_value,
    missing_library,
)

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_library("optuna", "optuna", err) from err

__all__ = ["OptunaRunner"]

logger = logging.getLogger(__name__)

_ADAPTER = "OptunaRunner"

ConfigFunction = Callable[[optuna.Trial], Mapping[str, Any]]


@dataclass
class _Running:
    """A study trial and the LocalBackend trial that runs it."""

    trial: optuna.Trial
    last_value: Optional[float] = None
    last_step: int = -1


class OptunaRunner:
    """Drives an Optuna study with ask and tell; trials run as LocalBackend processes.

    Args:
        study: A single-objective study (``trial.report`` supports no other).
        backend: The LocalBackend that runs the trial script. The runner does
            not close it.
        metric: The result key whose value is reported to Optuna and told as
            the trial's value.
        step: The result key holding the step (e.g. ``"epoch"``). Defaults to
            ``st_worker_iter``, the 0-based count of results.
    """

    def __init__(
        self,
        study: optuna.Study,
        backend: LocalBackend,
        *,
        metric: str,
        step: str = DEFAULT_STEP_KEY,
    ) -> None:
        if len(study.directions) != 1:
            raise IntegrationError(
                _ADAPTER, f"the study has {len(study.directions)} objectives",
                "Optuna's pruning (trial.report) needs a single-objective study.",
            )
        if not isinstance(metric, str) or not metric:
            raise IntegrationError(
                _ADAPTER, f"metric={metric!r} is not a result key",
                "Pass the name your script reports, e.g. metric='loss'.",
            )
        self.study = study
        self.backend = backend
        self.metric = metric
        self.step = step
        self._running: dict[int, _Running] = {}

    def optimize(
        self,
        config: ConfigFunction,
        *,
        n_trials: int,
        n_parallel: int = 1,
        timeout: Optional[float] = None,
    ) -> list[FrozenTrial]:
        """Run ``n_trials`` trials, at most ``n_parallel`` processes at a time.

        ``config(trial)`` returns the trial script's config, usually from
        ``trial.suggest_*`` calls. With ``timeout`` (seconds), no new trial is
        started after it passes; running ones finish. Returns the told trials
        in the order they finished. When it returns, every trial process it
        started has ended.
        """
        check_count(_ADAPTER, "n_trials", n_trials, minimum=0)
        check_count(_ADAPTER, "n_parallel", n_parallel, minimum=1)
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        started = 0
        told: list[FrozenTrial] = []
        try:
            while True:
                may_start = started < n_trials and (
                    deadline is None or time.monotonic() < deadline
                )
                while may_start and self._slots_in_use() < n_parallel:
                    self._start(config)
                    started += 1
                    may_start = started < n_trials
                # With no trial running, the loop still waits while a slot is
                # held by a pruned trial whose process is ending.
                if not self._running and not may_start:
                    break
                self.backend.wait(timeout=WAIT_SECONDS)
                told.extend(self._poll())
        finally:
            if self._running:
                told.extend(self._abandon())
            self._wait_for_processes()
        return told

    # -- one round ----------------------------------------------------------

    def _start(self, config: ConfigFunction) -> None:
        trial = self.study.ask()
        try:
            trial_config = dict(config(trial))
            started = self.backend.start_trial(trial_config)
        except BaseException:
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("localbackend_trial_id", started.trial_id)
        trial.set_user_attr("trial_dir", str(self.backend.trial_dir(started.trial_id)))
        self._running[started.trial_id] = _Running(trial)

    def _poll(self) -> list[FrozenTrial]:
        statuses, results = self.backend.fetch_status_results(list(self._running))
        told: list[FrozenTrial] = []
        pruned: set[int] = set()
        for trial_id, result in results:
            if trial_id in pruned:
                continue
            if self._report(trial_id, result):
                self._stop(trial_id, result)
                pruned.add(trial_id)
                told.append(self._tell(trial_id, TrialState.PRUNED))
        for trial_id, (trial, status) in statuses.items():
            if trial_id in pruned:
                continue
            if status == Status.completed:
                told.append(self._tell_completed(trial_id))
            elif status in (Status.failed, Status.stopped):
                told.append(self._tell_failed(trial_id, status, trial))
        return told

    def _report(self, trial_id: int, result: Mapping[str, Any]) -> bool:
        """Pass one result to Optuna; True when the trial should be pruned."""
        running = self._running[trial_id]
        value = metric_value(result, self.metric)
        step = result.get(self.step)
        if value is None or isinstance(step, bool) or not isinstance(step, int) or step < 0:
            logger.debug("trial %d: result without %r or step %r", trial_id, self.metric, step)
            return False
        running.last_value = value
        if step <= running.last_step:
            return False  # Optuna keeps the first value reported for a step
        running.last_step = step
        running.trial.report(value, step)
        return bool(running.trial.should_prune())

    # -- telling -------------------------------------------------------------

    def _tell(self, trial_id: int, state: TrialState, value: Optional[float] = None
              ) -> FrozenTrial:
        running = self._running.pop(trial_id)
        if state == TrialState.COMPLETE:
            return self.study.tell(running.trial, value)
        return self.study.tell(running.trial, state=state)

    def _tell_completed(self, trial_id: int) -> FrozenTrial:
        running = self._running[trial_id]
        if running.last_value is None:
            running.trial.set_user_attr(
                "fail_reason", f"the trial completed without reporting {self.metric!r}"
            )
            logger.warning(
                "trial %d completed without reporting %r; told FAIL. Its files are in %s",
                trial_id, self.metric, self.backend.trial_dir(trial_id),
            )
            return self._tell(trial_id, TrialState.FAIL)
        return self._tell(trial_id, TrialState.COMPLETE, running.last_value)

    def _tell_failed(self, trial_id: int, status: str, ended: Trial) -> FrozenTrial:
        running = self._running[trial_id]
        reason = ended.failure_reason or f"the trial ended {status}"
        running.trial.set_user_attr("fail_reason", reason)
        running.trial.set_user_attr("failure_reason", reason)
        running.trial.set_user_attr("failure_kind", ended.failure_kind)
        stderr_tail = ended.stderr_tail
        if stderr_tail:
            running.trial.set_user_attr("stderr_tail", stderr_tail)
        logger.warning(
            "trial %d ended %s (%s); told FAIL. Its files are in %s\n%s",
            trial_id, status, reason, self.backend.trial_dir(trial_id), stderr_tail,
        )
        return self._tell(trial_id, TrialState.FAIL)

    def _abandon(self) -> list[FrozenTrial]:
        """Stop the trials still running after an error or interrupt, and tell them FAIL."""
        told = []
        for trial_id in list(self._running):
            self._stop(trial_id)
            self._running[trial_id].trial.set_user_attr(
                "fail_reason", "the optimization loop was interrupted"
            )
            told.append(self._tell(trial_id, TrialState.FAIL))
        return told

    # -- processes -----------------------------------------------------------

    def _stop(self, trial_id: int, result: Optional[Mapping[str, Any]] = None) -> None:
        """Stop a trial's process; drop its unfetched results, which nobody will read."""
        self.backend.stop_trial(trial_id, None if result is None else dict(result))
        self.backend.fetch_status_results([trial_id])

    def _slots_in_use(self) -> int:
        """Running trials, plus pruned ones whose processes are still ending."""
        return len(self.backend.busy_trial_ids())

    def _wait_for_processes(self) -> None:
        while True:
            busy = [trial_id for trial_id, _ in self.backend.busy_trial_ids()]
            if not busy:
                return
            # Fetching clears their news, so that wait() sleeps until an exit.
            self.backend.fetch_status_results(busy)
            self.backend.wait(timeout=WAIT_SECONDS)


"""Ax: ``LocalBackendRunner`` and ``LocalBackendMapMetric`` for the ``Orchestrator``.

::

    from ax.core.experiment import Experiment
    from ax.core.objective import Objective
    from ax.core.optimization_config import OptimizationConfig
    from ax.orchestration.orchestrator import Orchestrator, OrchestratorOptions
    from localbackend.integrations.ax import LocalBackendMapMetric, LocalBackendRunner

    runner = LocalBackendRunner("train.py", "runs/ax-1", fixed_config={"epochs": 20},
                                max_parallel=2)
    loss = LocalBackendMapMetric("loss", lower_is_better=True, step_key="epoch")
    experiment = Experiment(
        search_space=...,
        optimization_config=OptimizationConfig(Objective(
            expression="-loss", metric_name_to_signature={"loss": loss.signature})),
        metrics=[loss],
        runner=runner,
    )
    Orchestrator(experiment, generation_strategy, OrchestratorOptions(...)).run_n_trials(10)
    runner.close()

The runner starts one process per trial (an ``ax.core.Trial`` with one arm;
batch trials are refused) with the arm's parameters, plus ``fixed_config``,
as ``--name value`` options. The metric reads the results the backend
delivers (``localbackend.report`` or Syne Tune's ``[tune-metric]`` lines,
with the same ``st_*`` fields), one data point per result, with the
result's ``step_key`` as Ax's ``step``: a learning curve, which is what
Ax's early-stopping strategies read. When such a strategy stops a trial,
``stop`` sends SIGTERM and, after the grace period,
SIGKILL to the trial's process tree.

Status mapping (``poll_trial_status``):

=============  ===================================================================
LocalBackend   Ax ``TrialStatus``
=============  ===================================================================
InProgress     RUNNING
Paused         RUNNING. Ax cannot pause a trial, so a trial is Paused only after
               ``LocalBackend.restore`` (a restarted Orchestrator, with trials that
               were running when the old driver ended): the runner resumes it from
               its latest checkpoint at that poll.
Completed      COMPLETED
Failed         FAILED, with the reason (``Trial.failure_reason``, then its kind and
               stderr tail) as the trial's ``status_reason``
Stopped        EARLY_STOPPED
=============  ===================================================================

``run`` returns JSON-serializable metadata (``localbackend_trial_id``,
``experiment_dir``, ``trial_dir``), and the runner's constructor arguments are
plain values stored under their own names, so ``clone``, Ax's storage and a
restarted Orchestrator work: every runner for the same ``experiment_dir`` in
a process shares one LocalBackend, restored from the folder when it already
holds an experiment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

from .._types import Status
from ..core._backend import LocalBackend
from ._common import (
    DEFAULT_STEP_KEY,
    IntegrationError,
    check_count,
    missing_library,
)

try:
    from ax.api.protocols.metric import IMetric
    from ax.api.protocols.runner import IRunner
    from ax.core.base_trial import BaseTrial
    from ax.core.map_metric import MapMetric
    from ax.core.metric import MetricFetchE, MetricFetchResult
    from ax.core.runner import Runner
    from ax.core.trial import Trial
    from ax.core.trial_status import TrialStatus
    from ax.utils.common.result import Err, Ok
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_library("ax-platform", "ax", err) from err

from . import _ax_shared as shared
from ._ax_shared import (
    EXPERIMENT_DIR_KEY,
    STATUS_TO_AX,
    TRIAL_DIR_KEY,
    TRIAL_ID_KEY,
    close_all_backends,
)

__all__ = [
    "LocalBackendClientMetric",
    "LocalBackendClientRunner",
    "LocalBackendMapMetric",
    "LocalBackendRunner",
    "close_all_backends",
]

logger = logging.getLogger(__name__)

_ADAPTER = "LocalBackendRunner"


class LocalBackendRunner(Runner):
    """An Ax ``Runner`` that runs each trial as a LocalBackend process.

    Args:
        entry_point: The trial script.
        experiment_dir: The experiment folder (one sub-folder per trial). An
            existing experiment there is carried on (``LocalBackend.restore``).
        fixed_config: Options passed to every trial besides the arm's
            parameters, e.g. ``{"epochs": 20}``.
        max_parallel: Trials that may run at once (``poll_available_capacity``);
            None leaves the limit to the Orchestrator's options.
        grace_period: Seconds between SIGTERM and SIGKILL when a trial is stopped.
        binary: Program that runs the script (default: this Python).
        env: Variables set for the trials.
        pass_args_as_json: Pass the config as a JSON file instead of options.
    """

    def __init__(
        self,
        entry_point: str,
        experiment_dir: str,
        fixed_config: Optional[dict[str, Any]] = None,
        max_parallel: Optional[int] = None,
        grace_period: float = 10.0,
        binary: Optional[list[str]] = None,
        env: Optional[dict[str, str]] = None,
        pass_args_as_json: bool = False,
    ) -> None:
        super().__init__()
        if max_parallel is not None:  # None: no limit of its own
            check_count(_ADAPTER, "max_parallel", max_parallel, minimum=1)
        # Ax rebuilds a runner from these attributes (serialize_init_args), so
        # each constructor argument is kept under its own name, as given.
        self.entry_point = os.fspath(entry_point)
        self.experiment_dir = os.fspath(experiment_dir)
        self.fixed_config = dict(fixed_config) if fixed_config is not None else None
        self.max_parallel = max_parallel
        self.grace_period = grace_period
        self.binary = list(binary) if binary is not None else None
        self.env = dict(env) if env is not None else None
        self.pass_args_as_json = pass_args_as_json

    @property
    def backend(self) -> LocalBackend:
        """The LocalBackend of ``experiment_dir``, shared by every runner of this process."""
        return shared.backend_for(Path(self.experiment_dir).expanduser().absolute(), lambda: (
            LocalBackend(
                self.entry_point, experiment_dir=Path(self.experiment_dir).expanduser().absolute(),
                grace_period=self.grace_period, binary=self.binary, env=self.env,
                pass_args_as_json=self.pass_args_as_json,
            )
        ))

    def close(self) -> None:
        """Stop this experiment's running trials and release its LocalBackend."""
        shared.close_backend(Path(self.experiment_dir).expanduser().absolute())

    @property
    def staging_required(self) -> bool:
        return False

    @property
    def run_metadata_report_keys(self) -> list[str]:
        return [TRIAL_ID_KEY, TRIAL_DIR_KEY]

    def run(self, trial: BaseTrial) -> dict[str, Any]:
        """Start the trial's process; returns where to find it again."""
        if not isinstance(trial, Trial) or trial.arm is None:
            raise IntegrationError(
                _ADAPTER, f"trial {trial.index} is a {type(trial).__name__} without one arm",
                "Use single-arm trials (the Orchestrator's default TrialType.TRIAL).",
            )
        return self.start(trial.arm.parameters)

    def start(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """Start a trial with ``parameters`` plus ``fixed_config``; its run metadata."""
        config = dict(self.fixed_config or {})
        config.update(parameters)
        backend = self.backend
        started = backend.start_trial(config)
        return shared.run_metadata(backend, started.trial_id)

    def poll_available_capacity(self) -> int:
        if self.max_parallel is None:
            return -1
        # Trials still ending after a stop are not counted: Ax already sees
        # them as stopped, and with no capacity and nothing it considers
        # running, the Orchestrator gives up.
        running = [tid for tid, status in self.backend.busy_trial_ids()
                   if status == Status.in_progress]
        return max(0, self.max_parallel - len(running))

    def poll_trial_status(self, trials: Iterable[BaseTrial]) -> dict[TrialStatus, set[int]]:
        by_status: dict[TrialStatus, set[int]] = {}
        ids = {self._trial_id(trial): trial.index for trial in trials}
        if not ids:
            return by_status
        for trial_id, status in self.statuses(list(ids)).items():
            by_status.setdefault(status, set()).add(ids[trial_id])
        return by_status

    def statuses(self, trial_ids: list[int]) -> dict[int, TrialStatus]:
        """Ax's status of each LocalBackend trial; a Paused one (after a restore) is resumed."""
        backend = self.backend
        # The results this fetch returns are kept for the metrics.
        statuses = shared.fetch(backend, trial_ids)
        found: dict[int, TrialStatus] = {}
        for trial_id, (_, status) in statuses.items():
            if status == Status.paused:
                logger.info("trial %d was running when its driver ended; resuming it", trial_id)
                backend.resume_trial(trial_id)
            found[trial_id] = STATUS_TO_AX[status]
        return found

    def poll_exception(self, trial: BaseTrial) -> str:
        """Why the trial failed: its failure reason and kind, folder and stderr tail."""
        return shared.ended_message(self.backend, self._trial_id(trial))

    def stop(self, trial: BaseTrial, reason: Optional[str] = None) -> dict[str, Any]:
        """Stop the trial's process (SIGTERM, then SIGKILL after the grace period)."""
        trial_id = self._trial_id(trial)
        self.backend.stop_trial(trial_id)
        return {"stop_reason": reason} if reason else {}

    def _trial_id(self, trial: BaseTrial) -> int:
        return self.trial_id_of(trial.index, trial.run_metadata or {})

    def trial_id_of(self, index: int, metadata: dict[str, Any]) -> int:
        """The LocalBackend trial id in an Ax trial's run metadata, checked."""
        trial_id = shared.metadata_trial_id(metadata)
        where = metadata.get(EXPERIMENT_DIR_KEY)
        if trial_id is None:
            raise IntegrationError(
                _ADAPTER, f"Ax trial {index} has no {TRIAL_ID_KEY!r} in its run metadata",
                "It was not started by a LocalBackendRunner; poll it with the runner that ran it.",
            )
        if where is not None and Path(where) != self.backend.experiment_dir:
            raise IntegrationError(
                _ADAPTER, f"Ax trial {index} ran in {where}, not in {self.experiment_dir}",
                "Use a runner with the experiment_dir the trial ran in.",
            )
        return trial_id


class LocalBackendMapMetric(MapMetric):
    """A learning-curve metric read from the results a trial reports.

    Args:
        name: The metric's name in Ax.
        lower_is_better: As for any Ax metric.
        result_key: The key the script reports (default: ``name``).
        step_key: The key whose value is Ax's ``step`` (progression), e.g.
            ``"epoch"``; default ``st_worker_iter``, the 0-based result count.
    """

    def __init__(
        self,
        name: str,
        lower_is_better: Optional[bool] = None,
        result_key: Optional[str] = None,
        step_key: str = DEFAULT_STEP_KEY,
    ) -> None:
        super().__init__(name=name, lower_is_better=lower_is_better)
        self.result_key = result_key
        self.step_key = step_key

    @classmethod
    def is_available_while_running(cls) -> bool:
        return True

    def clone(self) -> LocalBackendMapMetric:
        return type(self)(
            name=self.name, lower_is_better=self.lower_is_better,
            result_key=self.result_key, step_key=self.step_key,
        )

    def fetch_trial_data(self, trial: BaseTrial, **kwargs: Any) -> MetricFetchResult:
        try:
            return self._fetch(trial)
        except Exception as err:  # Ax expects failures as an Err value
            return Err(MetricFetchE(message=f"cannot read {self.name}: {err}", exception=err))

    def _fetch(self, trial: BaseTrial) -> MetricFetchResult:
        metadata = trial.run_metadata or {}
        rows = self.curve(metadata) if isinstance(trial, Trial) and trial.arm else None
        if rows is None or not isinstance(trial, Trial) or trial.arm is None:
            return Err(MetricFetchE(
                message=f"trial {trial.index} was not run by a LocalBackendRunner", exception=None,
            ))
        if not rows:
            return Err(MetricFetchE(
                message=f"trial {trial.index} has reported no {self.result_key or self.name!r} "
                f"with a {self.step_key!r} yet (its files are in {metadata.get(TRIAL_DIR_KEY)})",
                exception=None,
            ))
        return Ok(shared.curve_data(rows, trial_index=trial.index, arm_name=trial.arm.name,
                                    metric_name=self.name, signature=self.signature))

    def curve(self, metadata: Mapping[str, Any]) -> Optional[list[tuple[float, float]]]:
        """The ``(step, value)`` points of the trial with this run metadata; None if not ours."""
        trial_id = shared.metadata_trial_id(metadata)
        where = metadata.get(EXPERIMENT_DIR_KEY)
        if trial_id is None or where is None:
            return None
        results = shared.delivered(shared.backend_for(Path(where)), trial_id)
        return shared.curve_rows(results, self.result_key or self.name, self.step_key)


class LocalBackendClientRunner(IRunner, LocalBackendRunner):
    """``LocalBackendRunner`` as Ax's ``IRunner``, for ``Client.configure_runner``.

    Takes the arguments of :class:`LocalBackendRunner` and behaves as it does
    under the ``Client``'s ``run_trials``: a trial's process starts with the
    arm's parameters plus ``fixed_config``, an early-stopping decision ends
    its process tree, and a failed trial's reason is its ``status_reason``.
    """

    def run_trial(self, trial_index: int, parameterization: Mapping[str, Any]) -> dict[str, Any]:
        return self.start(dict(parameterization))

    def poll_trial(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> TrialStatus:
        trial_id = self.trial_id_of(trial_index, dict(trial_metadata))
        return self.statuses([trial_id])[trial_id]

    def stop_trial(self, trial_index: int, trial_metadata: Mapping[str, Any]) -> dict[str, Any]:
        self.backend.stop_trial(self.trial_id_of(trial_index, dict(trial_metadata)))
        return {}


class LocalBackendClientMetric(IMetric, LocalBackendMapMetric):
    """``LocalBackendMapMetric`` as Ax's ``IMetric``, for ``Client.configure_metrics``.

    Ax's ``IMetric.fetch`` gives one reading; this metric hands Ax the whole
    learning curve at each fetch, as the Orchestrator's map metric does, so
    that early-stopping strategies see every step.
    """

    def __init__(
        self,
        name: str,
        lower_is_better: Optional[bool] = None,
        result_key: Optional[str] = None,
        step_key: str = DEFAULT_STEP_KEY,
    ) -> None:
        LocalBackendMapMetric.__init__(
            self, name, lower_is_better=lower_is_better, result_key=result_key, step_key=step_key,
        )

    def fetch(self, trial_index: int, trial_metadata: Mapping[str, Any]
              ) -> tuple[int, float | tuple[float, float]]:
        """The last ``(step, value)`` the trial reported."""
        rows = self.curve(trial_metadata)
        if rows is None:
            raise IntegrationError(
                "LocalBackendClientMetric", f"Ax trial {trial_index} was not run by a "
                "LocalBackendClientRunner", "Configure the Client with that runner.",
            )
        if not rows:
            raise IntegrationError(
                "LocalBackendClientMetric", f"trial {trial_index} has reported no "
                f"{self.result_key or self.name!r} yet", "Wait for its first result.",
            )
        step, value = rows[-1]
        return int(step), value

    def fetch_trial_data(self, trial: BaseTrial, **kwargs: Any) -> MetricFetchResult:
        return LocalBackendMapMetric.fetch_trial_data(self, trial, **kwargs)

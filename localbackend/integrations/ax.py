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
as ``--name value`` options. The metric reads the results the script
reports with ``localbackend.report`` from the trial's ``results.jsonl``, one
data point per result, with the result's ``step_key`` as Ax's ``step``: a
learning curve, which is what Ax's early-stopping strategies read. When such a
strategy stops a trial, ``stop`` sends SIGTERM and, after the grace period,
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
Failed         FAILED (``poll_exception`` returns its stderr tail)
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
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .._paths import ExperimentPaths, TrialPaths
from .._types import Status
from ..core._backend import LocalBackend
from ..core._results import ResultsReader
from ._common import (
    DEFAULT_STEP_KEY,
    IntegrationError,
    check_count,
    metric_value,
    missing_library,
)

try:
    import pandas as pd
    from ax.core.base_trial import BaseTrial
    from ax.core.data import MAP_KEY, Data
    from ax.core.map_metric import MapMetric
    from ax.core.metric import MetricFetchE, MetricFetchResult
    from ax.core.runner import Runner
    from ax.core.trial import Trial
    from ax.core.trial_status import TrialStatus
    from ax.utils.common.result import Err, Ok
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_library("ax-platform", "ax", err) from err

__all__ = ["LocalBackendMapMetric", "LocalBackendRunner", "close_all_backends"]

logger = logging.getLogger(__name__)

_ADAPTER = "LocalBackendRunner"
TRIAL_ID_KEY = "localbackend_trial_id"
EXPERIMENT_DIR_KEY = "experiment_dir"
TRIAL_DIR_KEY = "trial_dir"

_STATUS_TO_AX = {
    Status.in_progress: TrialStatus.RUNNING,
    Status.paused: TrialStatus.RUNNING,
    Status.completed: TrialStatus.COMPLETED,
    Status.failed: TrialStatus.FAILED,
    Status.stopped: TrialStatus.EARLY_STOPPED,
}

# One LocalBackend per experiment folder in this process, shared by a runner
# and its clones (Ax clones runners freely).
_backends: dict[Path, LocalBackend] = {}
_backends_lock = threading.Lock()


def close_all_backends() -> None:
    """Close every LocalBackend the runners of this process opened, stopping their trials."""
    with _backends_lock:
        backends = list(_backends.values())
        _backends.clear()
    for backend in backends:
        backend.close()


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
        root = Path(self.experiment_dir).expanduser().absolute()
        with _backends_lock:
            backend = _backends.get(root)
            if backend is None:
                if ExperimentPaths(root).metadata.exists():
                    backend = LocalBackend.restore(root)
                else:
                    backend = LocalBackend(
                        self.entry_point, experiment_dir=root, grace_period=self.grace_period,
                        binary=self.binary, env=self.env,
                        pass_args_as_json=self.pass_args_as_json,
                    )
                _backends[root] = backend
            return backend

    def close(self) -> None:
        """Stop this experiment's running trials and release its LocalBackend."""
        root = Path(self.experiment_dir).expanduser().absolute()
        with _backends_lock:
            backend = _backends.pop(root, None)
        if backend is not None:
            backend.close()

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
        config = dict(self.fixed_config or {})
        config.update(trial.arm.parameters)
        backend = self.backend
        started = backend.start_trial(config)
        return {
            TRIAL_ID_KEY: started.trial_id,
            EXPERIMENT_DIR_KEY: str(backend.experiment_dir),
            TRIAL_DIR_KEY: str(backend.trial_dir(started.trial_id)),
        }

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
        backend = self.backend
        # The metric reads results from the trials' files, so the results
        # this fetch also returns are not needed here.
        statuses, _ = backend.fetch_status_results(list(ids))
        for trial_id, (_, status) in statuses.items():
            if status == Status.paused:
                logger.info("trial %d was running when its driver ended; resuming it", trial_id)
                backend.resume_trial(trial_id)
            by_status.setdefault(_STATUS_TO_AX[status], set()).add(ids[trial_id])
        return by_status

    def poll_exception(self, trial: BaseTrial) -> str:
        trial_id = self._trial_id(trial)
        statuses, _ = self.backend.fetch_status_results([trial_id])
        found, status = statuses[trial_id]
        where = self.backend.trial_dir(trial_id)
        tail = found.stderr_tail or "(stderr is empty)"
        return f"trial {trial_id} ended {status}; its files are in {where}\n{tail}"

    def stop(self, trial: BaseTrial, reason: Optional[str] = None) -> dict[str, Any]:
        """Stop the trial's process (SIGTERM, then SIGKILL after the grace period)."""
        trial_id = self._trial_id(trial)
        self.backend.stop_trial(trial_id)
        return {"stop_reason": reason} if reason else {}

    def _trial_id(self, trial: BaseTrial) -> int:
        metadata = trial.run_metadata or {}
        trial_id = metadata.get(TRIAL_ID_KEY)
        where = metadata.get(EXPERIMENT_DIR_KEY)
        if not isinstance(trial_id, int):
            raise IntegrationError(
                _ADAPTER, f"Ax trial {trial.index} has no {TRIAL_ID_KEY!r} in its run metadata",
                "It was not started by a LocalBackendRunner; poll it with the runner that ran it.",
            )
        if where is not None and Path(where) != self.backend.experiment_dir:
            raise IntegrationError(
                _ADAPTER, f"Ax trial {trial.index} ran in {where}, not in {self.experiment_dir}",
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
        key = self.result_key or self.name
        metadata = trial.run_metadata or {}
        trial_dir = metadata.get(TRIAL_DIR_KEY)
        if not isinstance(trial, Trial) or trial.arm is None or trial_dir is None:
            return Err(MetricFetchE(
                message=f"trial {trial.index} was not run by a LocalBackendRunner", exception=None,
            ))
        rows = []
        for result in _results(Path(trial_dir)):
            value = metric_value(result, key)
            step = result.get(self.step_key)
            if value is None or isinstance(step, bool) or not isinstance(step, (int, float)):
                continue
            rows.append({
                "trial_index": trial.index,
                "arm_name": trial.arm.name,
                "metric_name": self.name,
                "metric_signature": self.signature,
                "mean": value,
                "sem": math.nan,
                MAP_KEY: step,
            })
        if not rows:
            return Err(MetricFetchE(
                message=f"trial {trial.index} has reported no {key!r} with a {self.step_key!r} "
                f"yet (results in {trial_dir})",
                exception=None,
            ))
        return Ok(Data(df=pd.DataFrame(rows)))


# The results each trial reported so far, read incrementally from its file
# and shared by every metric of the process.
_results_cache: dict[Path, tuple[ResultsReader, list[dict[str, Any]]]] = {}
_results_lock = threading.Lock()


def _results(trial_dir: Path) -> Sequence[Mapping[str, Any]]:
    path = TrialPaths(trial_dir).results
    with _results_lock:
        cached = _results_cache.get(path)
        if cached is None:
            cached = (ResultsReader(-1, path), [])
            _results_cache[path] = cached
        reader, results = cached
        if path.exists():
            results.extend(reader.read())
        return list(results)

"""Syne Tune: ``SyneTuneBackend``, a ``TrialBackend`` that runs trials with LocalBackend.

Pass it to ``syne_tune.Tuner`` as ``trial_backend``::

    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving
    from localbackend.integrations.syne_tune import SyneTuneBackend

    backend = SyneTuneBackend("train.py", grace_period=5.0)
    tuner = Tuner(trial_backend=backend, scheduler=AsynchronousSuccessiveHalving(...),
                  stop_criterion=StoppingCriterion(max_wallclock_time=60),
                  n_workers=2, sleep_time=0.1)
    tuner.run()
    backend.close()

Trial scripts written for Syne Tune run unchanged: ``--key value`` options,
``--st_checkpoint_dir`` and ``syne_tune.Reporter`` all work, and so does
``localbackend.report``.

Beyond what Syne Tune's own ``LocalBackend`` does:

* a config value is one argv word, whatever it contains (spaces included);
* pause and stop send SIGTERM and allow ``grace_period`` seconds before
  SIGKILL, so a script can finish writing its checkpoint, and every process
  of the trial's tree is reaped;
* results a trial wrote after the scheduler decided to pause it are dropped,
  so a resumed trial never delivers a stale result of its earlier run;
* a checkpoint copy (PBT) replaces the target atomically;
* results are read incrementally, never by re-parsing the whole log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from .. import _types
from .._types import FINISHED_STATUSES
from ..core._backend import LocalBackend
from ._common import missing_library

try:
    from syne_tune.backend.trial_backend import TrialBackend
    from syne_tune.backend.trial_status import Trial, TrialResult
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_library("syne-tune", "syne-tune", err) from err

__all__ = ["SyneTuneBackend"]

logger = logging.getLogger(__name__)


class SyneTuneBackend(TrialBackend):
    """A Syne Tune ``TrialBackend`` whose trials are LocalBackend processes.

    Args:
        entry_point: The trial script.
        delete_checkpoints: As in Syne Tune: delete a trial's checkpoints once
            it is stopped or completed, and all of them in ``stop_all``.
        pass_args_as_json: As in Syne Tune: pass the config as a JSON file.
        **backend_options: Any other keyword argument of
            :class:`localbackend.LocalBackend` (``experiment_dir``,
            ``binary``, ``grace_period``, ``env``, GPU settings).

    ``Tuner.save`` pickles this backend with the Tuner: the pickle holds the
    trial table and the experiment folder, and loading it restores the
    LocalBackend from that folder (:meth:`LocalBackend.restore`), so the
    loaded Tuner's backend knows every trial.

    The experiment folder is moved to the Tuner's folder when the Tuner is
    created (``set_path``), as with Syne Tune's backend. The underlying
    :class:`LocalBackend` is :attr:`local`; call :meth:`close` (or use the
    backend as a context manager) when the tuning is over to release its
    supervisor process.
    """

    def __init__(
        self,
        entry_point: str | os.PathLike[str],
        *,
        delete_checkpoints: bool = False,
        pass_args_as_json: bool = False,
        **backend_options: Any,
    ) -> None:
        # Created first: the base class sets the two flags, which live on it.
        self._local = LocalBackend(
            entry_point,
            delete_checkpoints=delete_checkpoints,
            pass_args_as_json=pass_args_as_json,
            **backend_options,
        )
        super().__init__(delete_checkpoints=delete_checkpoints, pass_args_as_json=pass_args_as_json)

    # The two flags live on the LocalBackend, so that setting them on this
    # object (as Syne Tune code may) changes what the trials get.
    @property  # type: ignore[override]
    def delete_checkpoints(self) -> bool:
        return self.local.delete_checkpoints

    @delete_checkpoints.setter
    def delete_checkpoints(self, value: bool) -> None:
        self.local.delete_checkpoints = bool(value)

    @property  # type: ignore[override]
    def pass_args_as_json(self) -> bool:
        return self.local.pass_args_as_json

    @pass_args_as_json.setter
    def pass_args_as_json(self, value: bool) -> None:
        self.local.pass_args_as_json = bool(value)

    @property
    def local(self) -> LocalBackend:
        """The LocalBackend that runs the trials."""
        return self._local

    @property
    def experiment_dir(self) -> Path:
        """The folder holding one sub-folder per trial."""
        return self._local.experiment_dir

    # -- starting, pausing, resuming and stopping ---------------------------

    def new_trial_id(self) -> int:
        return self.local.new_trial_id()

    def start_trial(
        self, config: dict[str, Any], checkpoint_trial_id: Optional[int] = None
    ) -> TrialResult:
        started = self.local.start_trial(config, checkpoint_trial_id=checkpoint_trial_id)
        trial_result = _syne_result(started, started.status)
        self.trial_ids.append(started.trial_id)
        self._trial_dict[started.trial_id] = trial_result
        return trial_result

    def resume_trial(
        self, trial_id: int, new_config: Optional[dict[str, Any]] = None
    ) -> TrialResult:
        """Resume a paused trial from its latest checkpoint.

        A trial whose process finished on its own before the pause reached it
        keeps its final status; it is returned as it is, so that the Tuner
        records it as completed (or failed) at its next fetch.
        """
        statuses, _ = self.local.fetch_status_results([trial_id])
        trial, status = statuses[trial_id]
        if status in FINISHED_STATUSES:
            logger.info(
                "trial %d ended (%s) before it could be paused; it is not resumed",
                trial_id, status,
            )
            trial_result = _syne_result(trial, status)
        else:
            resumed = self.local.resume_trial(trial_id, new_config=new_config)
            trial_result = _syne_result(resumed, resumed.status)
        self._trial_dict[trial_id] = trial_result
        return trial_result

    def pause_trial(self, trial_id: int, result: Optional[dict[str, Any]] = None) -> None:
        """Pause a trial; results it wrote after the scheduler's decision are dropped."""
        self.local.pause_trial(trial_id, result)
        self._discard_undelivered(trial_id)

    def stop_trial(self, trial_id: int, result: Optional[dict[str, Any]] = None) -> None:
        self.local.stop_trial(trial_id, result)
        self._discard_undelivered(trial_id)

    def _discard_undelivered(self, trial_id: int) -> None:
        statuses, dropped = self.local.fetch_status_results([trial_id])
        trial, status = statuses[trial_id]
        self._trial_dict[trial_id] = _syne_result(trial, status)
        if dropped:
            logger.debug(
                "trial %d: %d result(s) reported after the scheduler's decision were dropped",
                trial_id, len(dropped),
            )

    def stop_all(self) -> None:
        """Stop every running trial and wait until their processes are gone."""
        self.local.stop_all()

    def close(self) -> None:
        """Stop every trial and release the LocalBackend's supervisor process."""
        self._local.close()

    def __enter__(self) -> SyneTuneBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- results and status --------------------------------------------------

    def fetch_status_results(
        self, trial_ids: list[int]
    ) -> tuple[dict[int, tuple[Trial, str]], list[tuple[int, dict[str, Any]]]]:
        statuses, results = self.local.fetch_status_results(trial_ids)
        converted: dict[int, tuple[Trial, str]] = {}
        for trial_id, (trial, status) in statuses.items():
            trial_result = _syne_result(trial, status)
            self._trial_dict[trial_id] = trial_result
            converted[trial_id] = (
                Trial(trial_id=trial_id, config=trial.config, creation_time=trial.creation_time),
                status,
            )
        return converted, results

    def busy_trial_ids(self) -> list[tuple[int, str]]:
        return self.local.busy_trial_ids()

    def stdout(self, trial_id: int) -> list[str]:
        return self.local.stdout(trial_id)

    def stderr(self, trial_id: int) -> list[str]:
        return self.local.stderr(trial_id)

    # -- checkpoints and paths ---------------------------------------------

    def copy_checkpoint(self, src_trial_id: int, tgt_trial_id: int) -> None:
        self.local.copy_checkpoint(src_trial_id, tgt_trial_id)

    def delete_checkpoint(self, trial_id: int) -> None:
        self.local.delete_checkpoint(trial_id)

    def set_path(self, results_root: str | None = None, tuner_name: str | None = None) -> None:
        self.local.set_path(results_root, tuner_name)

    def entrypoint_path(self) -> Path:
        return self.local.entrypoint_path()

    def set_entrypoint(self, entry_point: str) -> None:
        self.local.set_entrypoint(entry_point)

    def on_tuner_save(self) -> None:
        self.local.on_tuner_save()

    def __str__(self) -> str:
        return f"localbackend entry_point {self.entrypoint_path().name}"


def _syne_result(trial: _types.Trial, status: str) -> TrialResult:
    end_time = getattr(trial, "training_end_time", None)
    return TrialResult(
        trial_id=trial.trial_id,
        config=trial.config,
        creation_time=trial.creation_time,
        metrics=[],
        status=status,
        training_end_time=end_time,
    )

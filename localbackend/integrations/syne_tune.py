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

What Syne Tune's ``LocalBackend`` offers its users is here too:
``trial_path``, ``checkpoint_trial_path``, ``local_path``, ``entry_point``,
``binary`` (also as the second positional argument), ``rotate_gpus``, and
``std.out``/``std.err`` in each trial folder (links to ``stdout.log`` and
``stderr.log``). A trial the Tuner paused whose script had already ended
(it stopped at the rung, say) is reported ``Paused``, and ``resume_trial``
runs it again from its checkpoint with the new config, as Syne Tune does;
``LocalBackend`` itself only does so when asked (``completed=True``). Results
of trials that ``stop_all`` ended are hidden, as Syne Tune hides the results
of stopped trials, so the adapter and the Tuner agree on what was delivered.
A failed trial's reason is in ``trial.metadata`` (``failure_reason``,
``failure_kind``, ``exit_code``, ``exit_signal``, ``trial_dir``) of the
``Trial`` that ``fetch_status_results`` returns.

``SyneTunePythonBackend(fn, config_space)`` stands in for Syne Tune's
``PythonBackend``: the function runs as a :class:`localbackend.FunctionBackend`
trial.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import _types
from .._errors import close_under
from .._paths import ExperimentPaths, TrialPaths
from .._types import Status
from ..core._backend import LocalBackend
from ._common import missing_library

try:
    from syne_tune.backend.trial_backend import TrialBackend
    from syne_tune.backend.trial_status import Trial, TrialResult
except ImportError as err:  # pragma: no cover - depends on the environment
    raise missing_library("syne-tune", "syne-tune", err) from err

__all__ = ["LocalTrial", "LocalTrialResult", "SyneTuneBackend", "SyneTunePythonBackend"]

logger = logging.getLogger(__name__)

_LOG_STREAMS = ("stdout", "stderr")


@dataclass
class LocalTrial(Trial):  # type: ignore[misc]
    """Syne Tune's ``Trial``, with how its last run ended in ``metadata``."""

    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LocalTrialResult(TrialResult):  # type: ignore[misc]
    """Syne Tune's ``TrialResult``, with how its last run ended in ``metadata``."""

    metadata: dict[str, Any] = field(default_factory=dict)


class SyneTuneBackend(TrialBackend):
    """A Syne Tune ``TrialBackend`` whose trials are LocalBackend processes.

    The positional arguments are those of Syne Tune's ``LocalBackend``.

    Args:
        entry_point: The trial script.
        binary: Program that runs it, e.g. ``"torchrun --nproc_per_node=2"``
            (default: this Python).
        delete_checkpoints: As in Syne Tune: delete a trial's checkpoints once
            it is stopped or completed, and all of them in ``stop_all``.
        pass_args_as_json: As in Syne Tune: pass the config as a JSON file.
        rotate_gpus: As in Syne Tune: each trial gets its own GPUs, free ones
            first, then those assigned least often; False shows every trial
            every GPU.
        num_gpus_per_trial: GPUs given to each trial.
        gpus_to_use: Indices of the GPUs the trials may use.
        **backend_options: Any other keyword argument of
            :class:`localbackend.LocalBackend` (``experiment_dir``,
            ``grace_period``, ``env``, limits, ``launcher``).

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
        binary: str | Sequence[str] | None = None,
        delete_checkpoints: bool = False,
        pass_args_as_json: bool = False,
        rotate_gpus: bool = True,
        num_gpus_per_trial: int = 1,
        gpus_to_use: Sequence[int] | None = None,
        **backend_options: Any,
    ) -> None:
        self._attach(LocalBackend(
            entry_point, binary=binary, delete_checkpoints=delete_checkpoints,
            pass_args_as_json=pass_args_as_json, rotate_gpus=rotate_gpus,
            num_gpus_per_trial=num_gpus_per_trial, gpus_to_use=gpus_to_use, **backend_options,
        ), binary)

    def _attach(self, local: LocalBackend, binary: str | Sequence[str] | None) -> None:
        # Set first: the base class sets the two flags, which live on it.
        self._local = local
        self._binary = binary
        # Trials the Tuner paused; one whose script had ended is still Paused to it.
        self._paused: set[int] = set()
        super().__init__(delete_checkpoints=local.delete_checkpoints,
                         pass_args_as_json=local.pass_args_as_json)

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

    # -- Syne Tune's LocalBackend surface ------------------------------------

    @property
    def local_path(self) -> Path:
        """As in Syne Tune: the experiment folder (``experiment_dir``)."""
        return self.experiment_dir

    @property
    def entry_point(self) -> str:
        """As in Syne Tune: the trial script, as a string."""
        return str(self.entrypoint_path())

    @entry_point.setter
    def entry_point(self, entry_point: str) -> None:
        self.set_entrypoint(entry_point)  # as Syne Tune's set_entrypoint assigns it

    @property
    def binary(self) -> str | Sequence[str]:
        """As in Syne Tune: the program that runs the script (default: this Python)."""
        return sys.executable if self._binary is None else self._binary

    def trial_path(self, trial_id: int) -> Path:
        """As in Syne Tune: the folder of a trial (it may not exist yet)."""
        return ExperimentPaths(self.experiment_dir).trial(trial_id).root

    def checkpoint_trial_path(self, trial_id: int) -> Path:
        """As in Syne Tune: the folder a trial's ``--st_checkpoint_dir`` names."""
        return ExperimentPaths(self.experiment_dir).trial(trial_id).checkpoints

    # -- starting, pausing, resuming and stopping ---------------------------

    def new_trial_id(self) -> int:
        return self.local.new_trial_id()

    def start_trial(
        self, config: dict[str, Any], checkpoint_trial_id: Optional[int] = None
    ) -> TrialResult:
        started = self.local.start_trial(config, checkpoint_trial_id=checkpoint_trial_id)
        _link_syne_tune_logs(ExperimentPaths(self.experiment_dir).trial(started.trial_id))
        trial_result = _syne_result(started, started.status)
        self.trial_ids.append(started.trial_id)
        self._trial_dict[started.trial_id] = trial_result
        return trial_result

    def resume_trial(
        self, trial_id: int, new_config: Optional[dict[str, Any]] = None
    ) -> TrialResult:
        """Resume a paused trial from its latest checkpoint.

        A trial whose script completed before the pause reached it is run
        again the same way, with ``new_config`` (Syne Tune's promotion). One
        that failed or was stopped keeps its status and is returned as it is.
        """
        statuses, _ = self.local.fetch_status_results([trial_id])
        trial, status = statuses[trial_id]
        paused_by_tuner = trial_id in self._paused
        self._paused.discard(trial_id)
        if status == Status.paused or (status == Status.completed and paused_by_tuner):
            resumed = self.local.resume_trial(
                trial_id, new_config=new_config, completed=status == Status.completed
            )
            trial_result = _syne_result(resumed, resumed.status)
        else:
            logger.info("trial %d ended (%s) before it could be paused; it is not resumed",
                        trial_id, status)
            trial_result = _syne_result(trial, status)
        self._trial_dict[trial_id] = trial_result
        return trial_result

    def pause_trial(self, trial_id: int, result: Optional[dict[str, Any]] = None) -> None:
        """Pause a trial; results it wrote after the scheduler's decision are dropped."""
        self.local.pause_trial(trial_id, result)
        self._paused.add(trial_id)
        self._discard_undelivered(trial_id)

    def stop_trial(self, trial_id: int, result: Optional[dict[str, Any]] = None) -> None:
        self.local.stop_trial(trial_id, result)
        self._paused.discard(trial_id)
        self._discard_undelivered(trial_id)

    def _discard_undelivered(self, *trial_ids: int) -> None:
        statuses, dropped = self.local.fetch_status_results(list(trial_ids))
        for trial_id, (trial, status) in statuses.items():
            status = self._status_for_tuner(trial_id, status)
            self._trial_dict[trial_id] = _syne_result(trial, status)
        if dropped:
            logger.debug("%d result(s) reported after the scheduler's decision were dropped",
                         len(dropped))

    def stop_all(self) -> None:
        """Stop every running trial and wait until their processes are gone.

        Results the stopped trials wrote and the Tuner had not fetched are
        dropped, as Syne Tune hides the results of stopped trials.
        """
        running = [trial_id for trial_id, status in self.local.busy_trial_ids()
                   if status == Status.in_progress]
        self.local.stop_all()
        if running:
            self._discard_undelivered(*running)

    def close(self) -> None:
        """Stop every trial and release the LocalBackend's supervisor process."""
        self._local.close()

    def __enter__(self) -> SyneTuneBackend:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        close_under(self.close, exc)

    # -- results and status --------------------------------------------------

    def fetch_status_results(
        self, trial_ids: list[int]
    ) -> tuple[dict[int, tuple[Trial, str]], list[tuple[int, dict[str, Any]]]]:
        statuses, results = self.local.fetch_status_results(trial_ids)
        converted: dict[int, tuple[Trial, str]] = {}
        for trial_id, (trial, status) in statuses.items():
            status = self._status_for_tuner(trial_id, status)
            self._trial_dict[trial_id] = _syne_result(trial, status)
            converted[trial_id] = (
                LocalTrial(trial_id=trial_id, config=trial.config,
                           creation_time=trial.creation_time, metadata=_metadata(trial)),
                status,
            )
        return converted, results

    def _status_for_tuner(self, trial_id: int, status: str) -> str:
        # A trial the Tuner paused stays Paused to it until it is resumed or
        # stopped, even if its script had already completed.
        if trial_id in self._paused and status == Status.completed:
            return Status.paused
        return status

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


class SyneTunePythonBackend(SyneTuneBackend):
    """Syne Tune's ``PythonBackend``, with each trial a :class:`localbackend.FunctionBackend` trial.

    ``tune_function`` is called with the config keys it takes as keyword
    arguments and reports with Syne Tune's ``Reporter`` or
    ``localbackend.report``. Unlike Syne Tune's, it may use its module's
    globals and imports: it is pickled by reference, so it must be defined
    at the top level of a module or of the main script. ``config_space`` is
    accepted for compatibility and not needed.
    """

    def __init__(
        self,
        tune_function: Callable[..., Any],
        config_space: Optional[dict[str, Any]] = None,
        rotate_gpus: bool = True,
        delete_checkpoints: bool = False,
        **backend_options: Any,
    ) -> None:
        from .._function import FunctionBackend

        self.config_space = config_space
        self._attach(FunctionBackend(
            tune_function, rotate_gpus=rotate_gpus, delete_checkpoints=delete_checkpoints,
            **backend_options,
        ), None)


def _link_syne_tune_logs(paths: TrialPaths) -> None:
    """``std.out`` and ``std.err``, Syne Tune's names, as links to our logs."""
    for stream in _LOG_STREAMS:
        link = paths.syne_tune_log(stream)
        try:
            if not link.is_symlink():
                link.symlink_to(paths.log(stream).name)
        except OSError as err:  # a filesystem without links: our names still work
            logger.debug("no %s link in %s: %s", link.name, paths.root, err)


def _metadata(trial: _types.Trial) -> dict[str, Any]:
    return {
        "failure_reason": trial.failure_reason,
        "failure_kind": trial.failure_kind,
        "exit_code": trial.exit_code,
        "exit_signal": trial.exit_signal,
        "trial_dir": None if trial.trial_dir is None else str(trial.trial_dir),
    }


def _syne_result(trial: _types.Trial, status: str) -> TrialResult:
    return LocalTrialResult(
        trial_id=trial.trial_id,
        config=trial.config,
        creation_time=trial.creation_time,
        metrics=[],
        status=status,
        training_end_time=trial.training_end_time,
        metadata=_metadata(trial),
    )

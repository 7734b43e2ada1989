"""Checkpoint copies and deletions on behalf of ``LocalBackend``.

The storage mechanics (atomic copies, deleting by rename) are in
``_storage``; this module decides when they may happen: a copy never lands
on a trial whose processes still run, and a deletion waits for a run's tree
to be gone, which the run's keeper carries out if the driver is not there.
"""

from __future__ import annotations

from .._errors import CheckpointCopyError, InvalidTransitionError
from .._log import LazyLogger
from .._paths import ExperimentPaths
from .._types import Status
from ._storage import (
    CheckpointNotDurableError,
    CheckpointSwapUnsupportedError,
    SymlinkedCheckpointError,
    atomic_write_json,
    copy_checkpoint_folder,
    delete_checkpoint_folder,
    has_checkpoint,
)
from ._table import TrialTable
from ._trials import TrialRecord

logger = LazyLogger(__name__)


def check_copy(table: TrialTable, paths: ExperimentPaths, source: TrialRecord,
               target_id: int) -> None:
    """Refuse a copy onto the source itself, onto a trial still running, or from no checkpoint."""
    if target_id == source.trial_id:
        raise CheckpointCopyError(
            source.trial_id, target_id, "source and target are the same trial",
            "Copy to a different trial.",
        )
    if target_id < len(table.records):
        target = table.records[target_id]
        if target.status == Status.in_progress or target.alive_runs:
            raise InvalidTransitionError(
                target_id,
                target.status if not target.alive_runs or target.status
                == Status.in_progress else f"{target.status} (process still ending)",
                "copy a checkpoint onto",
                "Pause or stop it and wait until busy_trial_ids() no longer lists it.",
            )
    if not has_checkpoint(source.paths):
        raise no_checkpoint_error(paths, source.trial_id, target_id)


def copy(paths: ExperimentPaths, src_trial_id: int, tgt_trial_id: int) -> None:
    """Copy a checkpoint, or raise ``CheckpointCopyError`` with a hint that fits the cause."""
    try:
        copy_checkpoint_folder(paths.trial(src_trial_id), paths.trial(tgt_trial_id))
    except OSError as err:
        if isinstance(err, SymlinkedCheckpointError):
            hint = (
                f"Nothing was copied. To copy it, replace the link {err.folder} with the "
                "folder it points to (move that folder into its place), then copy again."
            )
        elif isinstance(err, CheckpointNotDurableError):
            hint = (
                f"The copy is in place: trial {tgt_trial_id} starts from it. The disk "
                "reported an error while syncing it, so check the disk: after a power cut "
                "the copy may be missing."
            )
        elif isinstance(err, CheckpointSwapUnsupportedError):
            hint = (
                "The target checkpoint was left as it was. Delete it first with "
                f"delete_checkpoint({tgt_trial_id}) and copy again, or have the script save "
                "its checkpoints with checkpoint.save(), whose folders can be switched "
                "one at a time."
            )
        else:
            hint = (
                "The target checkpoint was left as it was; free disk space or fix "
                "permissions and try again."
            )
        raise CheckpointCopyError(
            src_trial_id, tgt_trial_id, f"{type(err).__name__}: {err}", hint
        ) from err


def no_checkpoint_error(
    paths: ExperimentPaths, src_trial_id: int, tgt_trial_id: int
) -> CheckpointCopyError:
    folder = paths.trial(src_trial_id).checkpoints
    return CheckpointCopyError(
        src_trial_id, tgt_trial_id, f"trial {src_trial_id} has no checkpoint in {folder}",
        "Let the source trial save a checkpoint first (see checkpoint.save()).",
    )


def delete(table: TrialTable, paths: ExperimentPaths, target_id: int) -> None:
    """Delete a trial's checkpoints now, or ask its keeper to once its tree is gone."""
    if target_id < len(table.records):
        record = table.records[target_id]
        table.pump()
        if record.alive_runs:
            request(record, "delete")
            # Kept as a fallback should the keeper die before it acts.
            record.delete_checkpoint_on_exit = True
            table.take_in_exit(record)
            if record.alive_runs:
                return
    delete_checkpoint_folder(paths.trial(target_id))


def request(record: TrialRecord, action: str) -> None:
    """Tell the current run's keeper what to do with the checkpoints once its tree is gone.

    Written before ``take_in_exit`` reads ``exit.json``; the keeper reads
    it after writing ``exit.json`` (see ``Keeper._settle_checkpoints``).
    """
    try:
        atomic_write_json(
            record.paths.checkpoint_request, {"run": record.runs - 1, "action": action}
        )
    except OSError as err:
        # The driver still deletes when it hears that the run ended.
        logger.warning(
            "trial %d: could not write %s (%s); its checkpoints are handled when the "
            "driver hears that the run ended", record.trial_id,
            record.paths.checkpoint_request, err,
        )

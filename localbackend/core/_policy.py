"""What the driver decides when runs end: retries of failed trials, and checkpoint retention.

The keeper enforces the limits of a run where its tree is; the decisions
that need every trial in view are taken here, in the driver:

- ``Retries``: a trial whose run failed is resumed from its latest
  checkpoint, up to ``max_failures`` times; each retry is a new run, with
  the reason in the status history. Results of the failed run that were
  delivered stay delivered: the result readers carry on from their offsets.
- ``Retention``: ``keep_best`` and ``checkpoint_budget`` delete the
  checkpoints of finished trials, worst first, and never those of a trial
  that is paused or running.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .._errors import LocalBackendError
from .._log import LazyLogger
from .._types import FINISHED_STATUSES, Status
from ._compact import Summary
from ._limits import QUICK_FAILURE_SECONDS, RETRIED_KINDS, Retention, bytes_text
from ._storage import delete_checkpoint_folder, has_checkpoint, prune_checkpoints
from ._table import TrialTable
from ._trials import TrialRecord

logger = LazyLogger("localbackend")


class Retries:
    """Retries failed trials from their checkpoints, or lets them fail, with the reason."""

    def __init__(
        self, table: TrialTable, relaunch: Callable[[TrialRecord, str, int, float], None]
    ) -> None:
        self.table = table
        self.relaunch = relaunch

    def __call__(self, record: TrialRecord, failure: tuple[str, str], ran_for: float) -> None:
        kind, reason = failure
        allowed = record.limits.max_failures
        if record.status != Status.in_progress:
            return  # paused or stopped in the meantime: not a failure any more
        if kind not in RETRIED_KINDS or allowed == 0:
            self.table.fail(record, failure)
            return
        if len(record.retries) >= allowed:
            self.table.fail(record, (kind, give_up_reason(reason, [*record.retries, ran_for])))
            return
        record.retries.append(ran_for)
        number = len(record.retries)
        try:
            self.relaunch(record, f"retry {number} of {allowed} after: {reason}", number, ran_for)
        except (LocalBackendError, OSError) as err:
            self.table.fail(record, (kind, f"{reason}; the retry could not start: {err}"))


def give_up_reason(reason: str, durations: list[float]) -> str:
    """The reason of a trial that failed once more than its retries allowed."""
    retries = len(durations) - 1
    if all(seconds < QUICK_FAILURE_SECONDS for seconds in durations):
        return (
            f"{reason}; not retried again: each of its {len(durations)} runs failed within "
            f"{QUICK_FAILURE_SECONDS:g} s of starting (a crash loop)"
        )
    return f"{reason}; not retried again after {retries} retries (max_failures={retries})"


class RetentionPolicy:
    """Deletes the checkpoints of finished trials that ``keep_best`` or the budget rule out."""

    def __init__(self, rules: Retention, table: TrialTable) -> None:
        self.rules = rules
        self.table = table
        # Files of finished trials' checkpoints, which no longer change.
        self._sizes: dict[int, dict[tuple[int, int], tuple[int, int, int]]] = {}
        self._cleared: set[int] = set()
        self._warned = False

    def after_run(self, record: TrialRecord) -> None:
        """Every run of ``record`` has ended: apply the rules."""
        self._sizes.pop(record.trial_id, None)
        if self.rules.keep_checkpoints is not None:
            try:
                prune_checkpoints(record.paths, self.rules.keep_checkpoints)
            except OSError as err:
                logger.warning("Could not prune the checkpoints of trial %d to the newest %d: %s",
                               record.trial_id, self.rules.keep_checkpoints, err)
        if self.rules.ranks_trials:
            self.apply()

    def apply(self) -> None:
        # From the summaries, so that records kept packed (``_compact``) stay so.
        trials = list(self.table.records.summaries())
        finished = [
            t.trial_id for t in trials
            if t.status in FINISHED_STATUSES and not t.alive and t.trial_id not in self._cleared
        ]
        if self.rules.keep_best is not None:
            best = {t.trial_id for t in self._ranked(trials)[: self.rules.keep_best]}
            for trial_id in finished:
                if trial_id not in best:
                    self._delete(self.table.records[trial_id], (
                        f"checkpoint deleted: not among the {self.rules.keep_best} best "
                        f"trials by {self.rules.metric}"
                    ))
        if self.rules.checkpoint_budget is not None:
            self._meet_budget(self.rules.checkpoint_budget)

    def _ranked(self, trials: Iterable[Summary]) -> list[Summary]:
        """Trials best first by their last reported metric; those with none come last."""
        sign = 1.0 if self.rules.mode == "min" else -1.0

        def key(trial: Summary) -> tuple[int, float, int]:
            if trial.last_metric is None:
                return (1, 0.0, trial.trial_id)
            return (0, sign * trial.last_metric, trial.trial_id)

        return sorted(trials, key=key)

    def _meet_budget(self, budget: int) -> None:
        trials = list(self.table.records.summaries())
        usage = {t.trial_id: self._files(t) for t in trials}
        inodes: dict[tuple[int, int], tuple[int, int]] = {}  # size and link count
        for files in usage.values():
            inodes.update({inode: (size, nlink) for inode, (size, _, nlink) in files.items()})
        total = sum(size for size, _ in inodes.values())
        if total <= budget:
            return
        candidates = [
            t.trial_id for t in reversed(self._ranked(trials))
            if t.status in FINISHED_STATUSES and not t.alive and usage[t.trial_id]
        ]
        gone: dict[tuple[int, int], int] = {}  # links in folders deleted so far
        group: list[int] = []
        for trial_id in candidates:
            if total <= budget:
                break
            # A copy shares the published files of its source by hard link:
            # a file is freed only once every folder linking it is deleted. A
            # trial that frees nothing alone waits for the next, better ones,
            # and goes with the first of them with which it frees files.
            group.append(trial_id)
            freed = _freed([usage[t] for t in group], gone, inodes)
            if not freed:
                continue
            deleting = [t for t in group if not freed.isdisjoint(usage[t])]
            group = [t for t in group if t not in deleting]
            for member in deleting:
                self._delete(self.table.records[member], (
                    f"checkpoint deleted: the experiment's checkpoints took "
                    f"{bytes_text(total)}, over checkpoint_budget={bytes_text(budget)}"
                ))
                if member in self._cleared:
                    for inode, (_, links, _) in usage[member].items():
                        gone[inode] = gone.get(inode, 0) + links
                    usage[member] = {}
            total = sum(size for inode, (size, nlink) in inodes.items()
                        if gone.get(inode, 0) < nlink)
        if total > budget and not self._warned:
            self._warned = True
            held = {t: sum(size for size, _, _ in files.values()) for t, files in usage.items()}
            logger.warning(
                "The checkpoints take %s, over checkpoint_budget=%s, and what is left belongs to "
                "trials that are paused or running (%s); they are kept, since they are needed "
                "to resume. Raise the budget or stop some trials.",
                bytes_text(total), bytes_text(budget),
                ", ".join(f"trial {t}: {bytes_text(n)}" for t, n in held.items() if n),
            )

    def _files(self, trial: Summary) -> dict[tuple[int, int], tuple[int, int, int]]:
        """The trial's checkpoint files by inode: size, links in its folder, and all links.

        Kept for a finished trial whose files are linked from its folder
        alone: nothing else changes their link counts but a copy from it,
        after which everything is counted again (``copied``). Files it
        shares with another trial are counted again each time, since
        deleting or pruning that trial's checkpoints changes them.
        """
        if trial.trial_id in self._cleared:
            return {}
        known = self._sizes.get(trial.trial_id)
        if known is not None:
            return known
        files = checkpoint_files(str(self.table.records.paths(trial.trial_id).checkpoints))
        if trial.status in FINISHED_STATUSES and not trial.alive and all(
            links >= nlink for _, links, nlink in files.values()
        ):
            self._sizes[trial.trial_id] = files
        return files

    def _delete(self, record: TrialRecord, reason: str) -> None:
        # What an unfinished save of a finished trial left counts, and goes.
        if not has_checkpoint(record.paths, unfinished=True):
            self._cleared.add(record.trial_id)
            return
        try:
            delete_checkpoint_folder(record.paths)
        except OSError as err:
            logger.warning("Could not delete the checkpoints of trial %d: %s",
                           record.trial_id, err)
            return
        self._cleared.add(record.trial_id)
        self._sizes.pop(record.trial_id, None)
        failure = (
            (record.failure_kind or "exit", record.failure_reason)
            if record.failure_reason else None
        )
        record.set_status(record.status, reason=reason, action="checkpoint_deleted",
                          failure=failure)

    def copied(self, target_id: int) -> None:
        """A checkpoint was copied: links into other trials' files changed, count again."""
        self._sizes.clear()
        self._cleared.discard(target_id)

    def forget(self, trial_id: int) -> None:
        """A trial's checkpoint changed outside a run (a copy into it, a resume)."""
        self._cleared.discard(trial_id)
        self._sizes.pop(trial_id, None)


def _freed(
    group: list[dict[tuple[int, int], tuple[int, int, int]]],
    gone: dict[tuple[int, int], int],
    inodes: dict[tuple[int, int], tuple[int, int]],
) -> set[tuple[int, int]]:
    """The files that deleting every folder of ``group`` would free, after those ``gone``."""
    links: dict[tuple[int, int], int] = {}
    for files in group:
        for inode, (_, count, _) in files.items():
            links[inode] = links.get(inode, 0) + count
    freed = set()
    for inode, count in links.items():
        before, nlink = gone.get(inode, 0), inodes[inode][1]
        if before < nlink <= before + count:
            freed.add(inode)
    return freed


def checkpoint_files(top: str) -> dict[tuple[int, int], tuple[int, int, int]]:
    """Every file under ``top`` by inode: its size, its links under ``top``, and all its links."""
    seen: dict[tuple[int, int], list[int]] = {}
    stack = [top]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            continue
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    found = seen.setdefault((info.st_dev, info.st_ino), [info.st_size, 0,
                                                                         info.st_nlink])
                    found[1] += 1
        except OSError:
            continue
    return {inode: (size, links, nlink) for inode, (size, links, nlink) in seen.items()}


__all__ = ["RetentionPolicy", "Retries", "checkpoint_files", "give_up_reason"]

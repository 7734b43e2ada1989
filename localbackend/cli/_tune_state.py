"""What a running tune knows about its trials, and how it saves that for ``--resume``.

:class:`TrialView` is the tuner's view of one trial: its phase, status,
last and best values, and run time. :class:`TuneState` holds every trial's
view and the tune's clock, remembers which trials changed since the last
save, and writes through ``_state.StateStore``: the whole state at
checkpoints (start, end, and when the journal outgrows the snapshot), and
after each batch one journal line with only what the batch changed. The
file format itself, and reading it back, belong to ``_state``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

from .. import Status
from ._common import TUNER_FORMAT_VERSION, TunerPaths, driver_identity
from ._schedulers import Scheduler
from ._search_space import SearchSpace
from ._state import StateStore
from ._tune_options import TuneOptions


@dataclass
class TrialView:
    """The tuner's view of one trial."""

    config: dict[str, Any]
    # running: should be running; paused: paused by the scheduler; interrupted:
    # paused by Ctrl-C, a time budget or a driver crash, resumed first; ended.
    phase: str = "running"
    status: str = Status.in_progress
    results: int = 0
    last_resource: Any = None
    last_value: Optional[float] = None
    best_value: Optional[float] = None
    runtime: float = 0.0
    run_started: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        # Written out at once, so a shallow copy will do (``asdict`` copies
        # every value deeply, on every batch).
        saved = {name: getattr(self, name) for name in _VIEW_FIELDS}
        saved["config"] = dict(self.config)
        # A wall-clock start means nothing to the process that resumes: the
        # trial's runtime so far is in ``runtime``.
        saved["run_started"] = None
        return saved

    def stop_clock(self) -> None:
        """The trial no longer runs: add its current run to its runtime."""
        if self.run_started is not None:
            self.runtime += time.time() - self.run_started
            self.run_started = None


_VIEW_FIELDS = tuple(field.name for field in dataclasses.fields(TrialView))


class TuneState:
    """Every trial's view and the tune's clock, saved as a snapshot plus a journal."""

    def __init__(
        self,
        options: TuneOptions,
        space: SearchSpace,
        scheduler: Scheduler,
        rng: random.Random,
        files: TunerPaths,
    ) -> None:
        self.options = options
        self.space = space
        self.scheduler = scheduler
        self.rng = rng
        self.trials: dict[int, TrialView] = {}
        # Time spent by earlier sessions of this tune (before --resume), and
        # when this session started.
        self.elapsed_before = 0.0
        self.session_start = time.monotonic()
        self.resumed = False
        self.driver = driver_identity()
        self.store = StateStore(files)
        # Trials changed since the state was last written, and the generator's
        # state as last written.
        self.touched: set[int] = set()
        self.saved_rng: Optional[tuple[Any, ...]] = None

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def touch(self, *trial_ids: int) -> None:
        """These trials changed: the next save writes them."""
        self.touched.update(trial_ids)

    def save(self, state: str = "running") -> None:
        """A checkpoint: the whole state, durably (at the start, at the end, and by size)."""
        rng_state = self.rng.getstate()
        self.store.snapshot(
            {
                "format_version": TUNER_FORMAT_VERSION,
                "state": state,
                "options": dataclasses.asdict(self.options),
                "search_space": self.space.to_json(),
                "rng_state": list(rng_state),
                "scheduler_state": self.scheduler.state_dict(),
                "scheduler_label": self.scheduler.label_header,
                "labels": {str(t): self.scheduler.label(t) for t in self.trials},
                "trials": {str(t): view.to_json() for t, view in self.trials.items()},
                "elapsed": self.elapsed(),
                "driver": self.driver,
                "saved": time.time(),
            }
        )
        self.touched.clear()
        self.saved_rng = rng_state

    def save_changes(self) -> None:
        """After a batch: append what it changed, in proportion to that alone."""
        rng_state = self.rng.getstate()
        if not self.touched and rng_state == self.saved_rng:
            return
        change: dict[str, Any] = {
            "elapsed": self.elapsed(),
            "trials": {
                str(t): {
                    "view": self.trials[t].to_json(),
                    "label": self.scheduler.label(t),
                    "scheduler": self.scheduler.trial_state(t),
                }
                for t in sorted(self.touched)
                if t in self.trials
            },
        }
        if rng_state != self.saved_rng:
            change["rng_state"] = list(rng_state)
        if self.store.append(change):
            self.save()
            return
        self.touched.clear()
        self.saved_rng = rng_state

    def load(self, state: dict[str, Any]) -> None:
        """Take over a state read back by ``_state.load_state``, for ``--resume``."""
        self.resumed = True
        self.store.continue_from(state)
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.trials = {int(t): TrialView(**view) for t, view in state.get("trials", {}).items()}

    def close(self) -> None:
        self.store.close()


__all__ = ["TrialView", "TuneState"]

"""The experiment folder as the driver holds it: its paths, its lock and its journal.

A new backend's folder is created (with its snapshot and journal) when the
first trial starts; until then ``set_path`` may move it. A restored
backend's folder exists already: it takes the lock, from a backend of this
process if need be, and opens the journal where the saved state ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import BackendConfigurationError, ExperimentError
from .._paths import ExperimentPaths
from ._journal import Journal, empty_state
from ._lock import ExperimentLock
from ._options import check_experiment_dir
from ._storage import atomic_write_json


class ExperimentFolder:
    """One experiment folder, held by one backend."""

    def __init__(self, root: Path, *, created: bool) -> None:
        self.paths = ExperimentPaths(root)
        self.lock = ExperimentLock(self.paths)
        self.journal: Journal | None = None
        self.created = created

    def append(self, op: str, **fields: Any) -> None:
        """Journal a change, once the folder exists."""
        if self.journal is not None:
            self.journal.append(op, **fields)

    def create(self, options: dict[str, Any], on_take_over: Callable[[], None]) -> None:
        """Create the folder (if it is not yet), take its lock and start its journal."""
        if self.created:
            return
        root = self.paths.root
        check_experiment_dir(root)
        if self.paths.metadata.exists():
            raise ExperimentError(
                str(root), "already holds an experiment",
                "Use LocalBackend.restore(experiment_dir) to carry it on, or choose a new folder.",
            )
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as err:
            raise BackendConfigurationError(
                "experiment_dir", str(root), f"cannot be created ({err.strerror})",
                "Choose a folder you can write to.",
            ) from err
        self.lock.acquire(on_take_over)
        state = empty_state(options)
        atomic_write_json(self.paths.metadata, state, durable=True, split="trials")
        self.open_journal(state["seq"])
        self.created = True

    def open_journal(self, seq: int) -> None:
        self.journal = Journal(self.paths, seq)
        self.journal.open()

    def move_to(self, new_root: Path) -> None:
        """Move a folder that holds no trial yet (only copied checkpoints) to ``new_root``."""
        check_experiment_dir(new_root)
        if self.created and new_root != self.paths.root:
            # Only copied checkpoints of trials not yet started can be here;
            # carry them over and start the bookkeeping afresh.
            import shutil

            self.close()
            new_root.mkdir(parents=True, exist_ok=True, mode=0o700)
            ours = (self.paths.metadata.name, self.paths.journal.name, self.paths.lock.name)
            for entry in self.paths.root.iterdir():
                if entry.name not in ours:
                    shutil.move(str(entry), str(new_root / entry.name))
            shutil.rmtree(self.paths.root, ignore_errors=True)
            self.created = False
        self.paths = ExperimentPaths(new_root)
        self.lock = ExperimentLock(self.paths)

    def compact(self) -> None:
        """Fold the journal into the snapshot."""
        if self.journal is not None:
            self.journal.compact()

    def close(self, *, compact: bool = False) -> None:
        """Close the journal (folding it into the snapshot first, if asked) and free the folder."""
        try:
            if self.journal is not None:
                try:
                    if compact:
                        self.journal.compact()
                finally:
                    self.journal.close()
        finally:
            self.lock.release()

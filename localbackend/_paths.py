"""Every file name the backend writes, in one place.

An experiment folder holds one sub-folder per trial, named by its id. No path
is ever built from a config value, so a config cannot make the backend write
outside the experiment folder.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, cast

RUNS_ROOT = "localbackend-runs"
# A trial folder's checkpoint copy in the making, and its replaced checkpoints.
# A keeper deletes a trial's checkpoints with ``_files.delete_folder``, which
# names its retired folder the same way (``.<name>-retired-``): what a keeper
# killed halfway leaves is found by ``checkpoint_leftovers`` too.
_STAGING = ".checkpoints-incoming-"
_RETIRED = ".checkpoints-retired-"

# What pathlib itself makes a folder's entries with, unparsed (see ``child``).
_CHILD_OF: Optional[Callable[[Path, str], Any]] = getattr(Path, "_make_child_relpath", None)
_FROM_STRING: Optional[Callable[[Path, str], Any]] = getattr(Path, "_from_parsed_string", None)


def child(parent: Path, name: str) -> Path:
    """``parent / name`` for a ``name`` without separators, made without interning ``name``.

    pathlib interns every component of a path it parses: on Python 3.11 when
    the path is made, on 3.12 and 3.13 when it is first turned into a string,
    and 3.12 never frees an interned string. A driver makes the paths of
    thousands of trials, each named by its own folder; parsed, every name
    would stay in the interpreter's table of interned strings for good
    (3.12), or leave a tombstone there that makes the table grow (3.11 and
    3.13; ``bench/analysis.md``, section 7). So a trial's paths are made the
    way pathlib makes the entries of a folder it lists, which it does not
    parse: ``_make_child_relpath`` on 3.11 and 3.12, ``_from_parsed_string``
    on 3.13. Both are pathlib's own, not public: on a Python that has
    neither, this is plain ``parent / name``, and ``tests/test_paths.py``
    fails there.
    """
    if _CHILD_OF is not None:
        return cast(Path, _CHILD_OF(parent, name))
    if _FROM_STRING is not None:
        return cast(Path, _FROM_STRING(parent, os.path.join(parent, name)))
    return parent / name


class TrialPaths:
    """The files of one trial; see the README for what each holds.

    Made by ``ExperimentPaths.trial``, it keeps the experiment folder (one
    ``Path`` shared by every trial) and the trial's id, and keeps its own
    folder's ``Path`` only while asked to: ``forget`` lets it go, for a
    trial that has ended (a ``Path`` is most of what a finished trial's
    record would hold), and ``keep`` takes it up again when the trial runs
    again. Without it every property builds the folder's ``Path`` anew.
    """

    __slots__ = ("_parent", "_root", "_trial_id")

    def __init__(self, root: Path) -> None:
        self._root: Path | None = root
        # Made from its folder alone: there is nothing to build it again from.
        self._parent = root
        self._trial_id = -1

    @classmethod
    def of_trial(cls, experiment_root: Path, trial_id: int) -> TrialPaths:
        paths = cls.__new__(cls)
        paths._parent = experiment_root
        paths._trial_id = trial_id
        paths._root = child(experiment_root, str(trial_id))
        return paths

    @property
    def root(self) -> Path:
        root = self._root
        if root is None:
            root = child(self._parent, str(self._trial_id))
        return root

    @property
    def trial_id(self) -> int:
        """The trial's id; -1 for paths made from the folder alone."""
        return self._trial_id

    @property
    def experiment_root(self) -> Path:
        """The experiment folder (the folder itself for paths made from it alone)."""
        return self._parent

    def forget(self) -> None:
        """Stop keeping the folder's ``Path`` (built again on each use)."""
        if self._trial_id >= 0:
            self._root = None

    def keep(self) -> None:
        """Keep the folder's ``Path`` again, for a trial that runs again."""
        if self._root is None:
            self._root = self.root

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrialPaths):
            return NotImplemented
        return self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"TrialPaths(root={self.root!r})"

    def __reduce__(self) -> tuple[type[TrialPaths], tuple[Path]]:
        # By its folder, whatever the slots: a launcher on another host
        # (Dask) unpickles it, perhaps with another version of this class.
        return (TrialPaths, (self.root,))

    @property
    def config(self) -> Path:
        return child(self.root, "config.json")

    @property
    def command(self) -> Path:
        return child(self.root, "command.json")

    @property
    def stdout(self) -> Path:
        return child(self.root, "stdout.log")

    @property
    def stderr(self) -> Path:
        return child(self.root, "stderr.log")

    @property
    def results(self) -> Path:
        return child(self.root, "results.jsonl")

    @property
    def checkpoints(self) -> Path:
        return child(self.root, "checkpoints")

    @property
    def status_history(self) -> Path:
        return child(self.root, "status.jsonl")

    @property
    def exit_status(self) -> Path:
        return child(self.root, "exit.json")

    @property
    def run_record(self) -> Path:
        """Written by the keeper when a run starts: its PIDs and where its output begins."""
        return child(self.root, "run.json")

    @property
    def checkpoint_request(self) -> Path:
        """What the driver wants done with the checkpoints when a run's tree is gone.

        ``{"run": N, "action": "delete" | "keep"}``, written by the driver and
        read by that run's keeper after it has reaped the tree.
        """
        return child(self.root, "checkpoint-request.json")

    def checkpoint_staging(self) -> Path:
        """Where a checkpoint copy is assembled before it replaces ``checkpoints``."""
        return child(self.root, f"{_STAGING}{os.getpid()}-{os.urandom(4).hex()}")

    def checkpoint_retired(self) -> Path:
        """Where the replaced checkpoint folder waits to be deleted."""
        return child(self.root, f"{_RETIRED}{os.getpid()}-{os.urandom(4).hex()}")

    def checkpoint_leftovers(self) -> list[Path]:
        """Staging and retired folders that a copy or delete killed halfway left behind."""
        try:
            with os.scandir(self.root) as entries:
                return [child(self.root, entry.name) for entry in entries
                        if entry.name.startswith((_STAGING, _RETIRED))]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def log(self, stream: str) -> Path:
        return self.stdout if stream == "stdout" else self.stderr

    @property
    def function(self) -> Path:
        """The pickled function a ``FunctionBackend`` trial runs."""
        return child(self.root, "function.pkl")

    def syne_tune_log(self, stream: str) -> Path:
        """Syne Tune's name for a log (``std.out``, ``std.err``): a link to ours."""
        return child(self.root, "std.out" if stream == "stdout" else "std.err")


@dataclass(frozen=True)
class ExperimentPaths:
    """The files of one experiment folder."""

    root: Path

    @property
    def metadata(self) -> Path:
        """Snapshot of the trial table (see ``_journal``)."""
        return self.root / "experiment.json"

    @property
    def journal(self) -> Path:
        """Changes to the trial table since the snapshot."""
        return self.root / "journal.jsonl"

    @property
    def lock(self) -> Path:
        """Held by the driver that owns the experiment."""
        return self.root / ".driver.lock"

    @property
    def driver(self) -> Path:
        """Who holds the lock: PID, host and start time."""
        return self.root / "driver.json"

    def trial(self, trial_id: int) -> TrialPaths:
        return TrialPaths.of_trial(self.root, int(trial_id))

    def driver_lease(self, token: str) -> Path:
        """Rewritten by a driver whose trials run on other hosts, which end them when it stops."""
        return self.root / f".lease-{token}.json"

    def visibility_probe(self, token: str, writer: str) -> Path:
        """Written by the driver, or by a worker answering it, to prove the folder is shared."""
        return self.root / f".probe-{token}-{writer}"


@dataclass(frozen=True)
class TunerPaths(ExperimentPaths):
    """The files ``localbackend tune`` keeps beside the trial folders."""

    @property
    def state(self) -> Path:
        """Everything ``--resume`` needs, as of the last checkpoint (see ``_state``)."""
        return self.root / "tuner.json"

    @property
    def state_journal(self) -> Path:
        """What each batch changed since ``tuner.json`` was written, one JSON line each."""
        return self.root / "tuner-journal.jsonl"

    @property
    def results(self) -> Path:
        """Every delivered result, one JSON object a line, with its trial id."""
        return self.root / "results.jsonl"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def events(self) -> Path:
        """The tuner's decisions: starts, pauses at rungs, promotions, checkpoint copies."""
        return self.root / "events.jsonl"

    @property
    def control(self) -> Path:
        """Requests from other processes, such as ``localbackend stop``."""
        return self.root / "control"

    @property
    def control_done(self) -> Path:
        """Handled requests, each with the driver's answer."""
        return self.control / "done"


def warm_imports_file(folder: str | os.PathLike[str], trial_id: int, run: int) -> str:
    """Where a warm run of ``localbackend check --preload`` lists what its script imported."""
    return os.path.join(folder, f"{int(trial_id)}-{int(run)}.json")


def default_experiment_dir(base: Path | None = None) -> Path:
    """A new, unique folder name under ``./localbackend-runs/`` (not created)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    parent = (base or Path.cwd()) / RUNS_ROOT
    return parent / f"{stamp}_{os.urandom(3).hex()}"

"""The experiment's trial table on disk: a snapshot plus an append-only journal.

The driver appends one JSON line to ``journal.jsonl`` for every change that
matters after a crash: a new trial, a launch, a process start and exit, a
status change, and how far results have been delivered. Each line is written
with one ``write`` on an ``O_APPEND`` file, so a reader never sees half a
line as complete, and each carries a sequence number. ``experiment.json``
holds a snapshot of the table, written atomically, with the sequence number
it includes; the journal is then started afresh.

A reader in another process (``localbackend status``) reads the snapshot,
then replays journal lines with a higher sequence number. If it finds a gap,
the journal was rotated between its two reads, and it simply reads again.
No lock is needed to read.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from .._errors import ExperimentError, experiment_folder_gone
from .._log import LazyLogger
from .._paths import ExperimentPaths
from ._storage import atomic_write_json

logger = LazyLogger(__name__)

FORMAT_VERSION = 1
# The journal is folded into the snapshot once it grows past this size.
COMPACT_BYTES = 8 * 1024 * 1024


def empty_state(options: dict[str, Any]) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "seq": 0, "options": options, "trials": {}}


def apply(state: dict[str, Any], entry: dict[str, Any]) -> None:
    """Fold one journal entry into the table (pure bookkeeping, no I/O)."""
    op = entry.get("op")
    state["seq"] = max(state.get("seq", 0), int(entry.get("seq", 0)))
    if op == "options":
        state["options"] = entry["options"]
        return
    if op == "supervisor":
        # The launcher's description of its session (for the local one, the
        # supervisor's PID and start time), which only the launcher reads.
        state["supervisor"] = {k: v for k, v in entry.items() if k not in ("seq", "op")}
        return
    if op == "trial":
        state["trials"][str(entry["trial"])] = new_trial(
            entry["trial"], entry["config"], entry["time"]
        )
        if entry.get("limits"):
            state["trials"][str(entry["trial"])]["limits"] = entry["limits"]
        return
    if op == "forget":
        # A start_trial that failed before its process was started.
        state["trials"].pop(str(entry.get("trial")), None)
        return
    trial = state["trials"].get(str(entry.get("trial")))
    if trial is None:
        if "trial" not in entry:
            return
        # The trial's first entry was lost (a full disk): keep what follows,
        # and let restore read the config from the trial folder.
        trial = state["trials"][str(entry["trial"])] = new_trial(
            entry["trial"], None, entry.get("time", 0.0)
        )
    if op == "config":
        trial["config"] = entry["config"]
    elif op == "status":
        trial["status"] = entry["status"]
        trial["history"].append(
            {k: entry[k] for k in (
                "time", "status", "run", "reason", "returncode", "signal", "failure",
                "failure_kind", "retry", "ran_for", "action",
            ) if k in entry}
        )
    elif op == "launch":
        # The GPUs and cores go with the run: a restore that re-attaches to it
        # counts them as taken.
        trial["runs"].append({
            "run": entry["run"], "launched": entry["time"], "gpus": entry.get("gpus") or [],
            "cpus": entry.get("cpus") or [],
        })
        trial["accept_until"] = None
    elif op == "launch_failed":
        # The run's process was never started: as if it had not been launched.
        if trial["runs"] and trial["runs"][-1]["run"] == entry["run"]:
            trial["runs"].pop()
            trial["accept_until"] = trial["runs"][-1].get("accept_until") if trial["runs"] else None
    elif op in ("started", "exited"):
        run = _run(trial, entry["run"])
        if run is not None:
            run.update({k: v for k, v in entry.items() if k not in ("op", "seq", "trial", "run")})
            run["state"] = op
    elif op == "delivered":
        trial["delivered"] = {
            "results": entry["results"], "stdout": entry["stdout"],
            "iterations": entry["iterations"], "last_metric": entry.get("last_metric"),
        }
        # Skips behind what is delivered now are done with.
        left = [gap for gap in trial.get("skipped", ())
                if gap["results"][1] > entry["results"] or gap["stdout"][1] > entry["stdout"]]
        if left:
            trial["skipped"] = left
        else:
            trial.pop("skipped", None)
    elif op == "skipped":
        # Output passed over for good while results before it were still to
        # be delivered: a restore delivers those, and steps over this.
        trial.setdefault("skipped", []).append(
            {"results": entry["results"], "stdout": entry["stdout"]}
        )
    elif op == "accept_until":
        trial["accept_until"] = {"results": entry["results"], "stdout": entry["stdout"]}
        if trial["runs"]:
            trial["runs"][-1]["accept_until"] = trial["accept_until"]


def new_trial(trial_id: int, config: Any, created: float) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "config": config,
        "creation_time": created,
        "status": None,
        "history": [],
        "runs": [],
        "delivered": {"results": 0, "stdout": 0, "iterations": 0},
        "accept_until": None,
    }


def _run(trial: dict[str, Any], run: int) -> dict[str, Any] | None:
    for entry in reversed(trial["runs"]):
        if entry["run"] == run:
            return entry  # type: ignore[no-any-return]
    return None


class Journal:
    """Appends entries for the driver that owns the experiment.

    It keeps only the last sequence number in memory: the table itself is
    rebuilt from the files when the journal is folded into a snapshot, so a
    long experiment does not hold a second copy of every trial.
    """

    def __init__(self, paths: ExperimentPaths, seq: int) -> None:
        self.paths = paths
        self.seq = seq
        self._fd = -1
        self._size = 0
        self._finalizer: weakref.finalize[..., Any] | None = None

    def open(self) -> None:
        self._fd = os.open(
            self.paths.journal, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        # A backend dropped without close() must not leak the descriptor.
        self._finalizer = weakref.finalize(self, os.close, self._fd)
        self._size = os.fstat(self._fd).st_size
        if self._size and os.pread(self._fd, 1, self._size - 1) != b"\n":
            # The last writer died in the middle of a line: end it, so that
            # our first entry is not glued to it.
            os.write(self._fd, b"\n")
            self._size += 1

    def append(self, op: str, **fields: Any) -> None:
        if self._fd < 0:
            return
        line = orjson.dumps({"seq": self.seq + 1, "op": op, **fields}) + b"\n"
        try:
            written = os.write(self._fd, line)
        except OSError as err:
            # A full disk must not take the tuner down. The entry is lost, and
            # its sequence number is not used, so the journal has no gap.
            logger.warning("could not append to %s: %s", self.paths.journal, err)
            return
        if written < len(line):
            # A torn line: end it so the next entry starts on its own line;
            # readers skip what does not parse.
            try:
                os.write(self._fd, b"\n")
            except OSError:
                pass
            return
        self.seq += 1
        self._size += len(line)
        if self._size > COMPACT_BYTES:
            self.compact()

    def compact(self) -> None:
        """Fold the journal into the snapshot (written atomically), then start it afresh."""
        if self._fd < 0:
            return
        state = load_state(self.paths.root, owner=True)
        atomic_write_json(self.paths.metadata, state, durable=True, split="trials")
        tmp = self.paths.journal.with_name(f".journal.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.replace(tmp, self.paths.journal)
        self.close()
        self.open()

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def load_state(root: Path, *, attempts: int = 5, owner: bool = False) -> dict[str, Any]:
    """The trial table of an experiment folder, read without any lock.

    A gap in the journal's sequence numbers normally means it was rotated
    between reading the snapshot and reading the journal, and the read is
    tried again. The driver that holds the lock (``owner``) knows nobody
    rotates under it: a gap is then damage, and is read past with a warning.
    """
    paths = ExperimentPaths(root)
    if owner and not paths.metadata.exists():
        # The driver that holds the lock wrote it, and nobody else removes it.
        raise experiment_folder_gone(str(root))
    if not root.is_dir():
        raise ExperimentError(
            str(root), "does not exist or is not a folder", "Pass the folder of an experiment."
        )
    for _ in range(attempts):
        try:
            snapshot = orjson.loads(paths.metadata.read_bytes())
        except FileNotFoundError:
            raise ExperimentError(
                str(root), "is not a localbackend experiment (it has no experiment.json)",
                "Pass the folder printed when the experiment started.",
            ) from None
        except orjson.JSONDecodeError as err:
            raise ExperimentError(
                str(root), f"has a damaged experiment.json ({err})",
                "Restore it from a backup; the trial folders are untouched.",
            ) from err
        version = snapshot.get("format_version") if isinstance(snapshot, dict) else None
        if not isinstance(version, int) or "trials" not in snapshot:
            raise ExperimentError(
                str(root), "has an experiment.json that localbackend did not write",
                "Pass the folder of a localbackend experiment.",
            )
        if version > FORMAT_VERSION:
            raise ExperimentError(
                str(root), f"was written in format version {version}, newer than this "
                f"localbackend understands ({FORMAT_VERSION})",
                "Upgrade localbackend to read it.",
            )
        if _replay_journal(paths, snapshot, tolerate_gaps=owner):
            return snapshot  # type: ignore[no-any-return]
        time.sleep(0.01)  # the journal was rotated under us; the new snapshot has it
    raise ExperimentError(
        str(root), "changed too fast to be read consistently", "Try again."
    )


def _replay_journal(
    paths: ExperimentPaths, state: dict[str, Any], *, tolerate_gaps: bool = False
) -> bool:
    # Line by line, not the whole file at once: a compaction replays the
    # journal of every trial, and the driver's peak memory is the state
    # together with whatever it holds of the journal.
    try:
        with open(paths.journal, "rb") as journal:
            return _replay_lines(paths, journal, state, tolerate_gaps)
    except FileNotFoundError:  # no entry since the snapshot
        return True


def _replay_lines(
    paths: ExperimentPaths, lines: Iterable[bytes], state: dict[str, Any], tolerate_gaps: bool
) -> bool:
    expected = state.get("seq", 0) + 1
    for line in lines:
        if not line.endswith(b"\n"):
            break  # an unfinished last line is not an entry yet
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        seq = entry.get("seq", 0)
        if seq < expected:
            continue
        if seq > expected:
            if not tolerate_gaps:
                return False
            logger.warning(
                "%s: entries %d to %d are missing; reading on", paths.journal, expected, seq - 1
            )
        apply(state, entry)
        expected = seq + 1
    return True

"""The tuner's resumable state: a snapshot, and an append-only journal of what changed.

``tuner.json`` is the whole state, written atomically and fsynced only at a
checkpoint: when a tune starts or resumes, when it ends for any reason
(finished, Ctrl-C, time budget, stop, failure), and when the journal has
grown past the snapshot's size. After each batch of results the tuner
appends one line to ``tuner-journal.jsonl`` with only what the batch
changed: the trials it touched (their view, label and scheduler state), the
elapsed time and, when it moved, the random generator's state. The cost of a
batch is thus the size of its changes, however large the experiment.

Each line is one ``write`` on an ``O_APPEND`` file and carries a sequence
number; the snapshot records the last number it includes. A SIGKILL loses
nothing written: the snapshot with the later lines replayed in order is the
state after the last batch. A reader in another process (``status``) reads
the snapshot, then the journal, and reads again if the snapshot was replaced
in between or the journal skips a number.
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from ..core._storage import atomic_write_bytes
from ._common import TunerPaths

# The journal is folded into a new snapshot once it is larger than the
# snapshot and than this, so that snapshots cost, spread over the batches,
# a constant factor of what the batches wrote.
MIN_JOURNAL_BYTES = 1 << 20
_READ_ATTEMPTS = 5


class StateStore:
    """Writes the state of the tune that holds the experiment."""

    def __init__(self, files: TunerPaths) -> None:
        self.files = files
        self.seq = 0
        self._fd = -1
        self._journal_bytes = 0
        self._snapshot_bytes = 0

    def continue_from(self, state: dict[str, Any]) -> None:
        """Carry on numbering after a state read back by :func:`load_state`."""
        self.seq = int(state.get("seq", 0))

    def snapshot(self, state: dict[str, Any]) -> None:
        """Write the whole state durably, then start the journal afresh."""
        data = orjson.dumps(
            {**state, "seq": self.seq}, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
        )
        atomic_write_bytes(self.files.state, data, durable=True)
        self._snapshot_bytes = len(data)
        # Readers holding the old journal keep reading it; new ones find it empty.
        atomic_write_bytes(self.files.state_journal, b"")
        self.close()
        self._fd = os.open(
            self.files.state_journal, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        self._journal_bytes = 0

    def append(self, change: dict[str, Any]) -> bool:
        """Append one batch of changes; True when it is time for a snapshot."""
        if self._fd < 0:
            return True  # no snapshot yet: the one the caller writes holds this change
        line = orjson.dumps({"seq": self.seq + 1, **change}, option=orjson.OPT_NON_STR_KEYS)
        line += b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self.seq += 1
        self._journal_bytes += len(line)
        return self._journal_bytes > max(MIN_JOURNAL_BYTES, self._snapshot_bytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def load_state(files: TunerPaths) -> dict[str, Any] | None:
    """The state after the last batch written, or None when there is no readable snapshot."""
    state: dict[str, Any] | None = None
    for _ in range(_READ_ATTEMPTS):
        try:
            with open(files.state, "rb") as source:
                identity = os.fstat(source.fileno()).st_ino
                snapshot = orjson.loads(source.read())
        except (FileNotFoundError, NotADirectoryError, orjson.JSONDecodeError):
            return None
        if not isinstance(snapshot, dict):
            return None
        state = snapshot
        complete = _replay(files, state)
        try:
            replaced = os.stat(files.state).st_ino != identity
        except FileNotFoundError:
            replaced = True
        if complete and not replaced:
            return state
    # Rewritten under us on every try: the last snapshot read is still a whole state.
    return state


def _replay(files: TunerPaths, state: dict[str, Any]) -> bool:
    """Apply the journal's lines after the snapshot; False on a gap in the numbers."""
    try:
        data = files.state_journal.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return True
    expected = int(state.get("seq", 0)) + 1
    for line in data.split(b"\n")[:-1]:  # an unfinished last line is not a change yet
        try:
            change = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(change, dict):
            continue
        seq = int(change.get("seq", 0))
        if seq < expected:
            continue  # already in the snapshot
        if seq > expected:
            return False
        apply_change(state, change)
        expected = seq + 1
    return True


def apply_change(state: dict[str, Any], change: dict[str, Any]) -> None:
    """Fold one journal line into the state."""
    state["seq"] = change["seq"]
    for key in ("elapsed", "rng_state"):
        if key in change:
            state[key] = change[key]
    trials = state.setdefault("trials", {})
    labels = state.setdefault("labels", {})
    scheduler = state.setdefault("scheduler_trials", {})
    for trial_id, entry in change.get("trials", {}).items():
        trials[trial_id] = entry["view"]
        labels[trial_id] = entry["label"]
        scheduler[trial_id] = entry["scheduler"]


__all__ = ["StateStore", "apply_change", "load_state"]

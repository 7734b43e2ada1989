"""The snapshot (``experiment.json``) is written a trial at a time, never as one whole text."""

from __future__ import annotations

import errno
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from localbackend import LocalBackend
from localbackend._paths import ExperimentPaths
from localbackend.core import _storage
from localbackend.core._journal import load_state
from tests.helpers import script, wait_not_busy

OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def _state(trials: int, size: int = 40) -> dict[str, Any]:
    """A snapshot-shaped table: options, ``trials`` trials of some bulk, and what follows."""
    return {
        "format_version": 1,
        "seq": 7,
        "options": {"entry_point": "/x/train.py", "binary": ["python"], "env": {}, "limits": {}},
        "trials": {
            str(trial_id): {
                "trial_id": trial_id,
                "config": {"lr": 0.1 * trial_id, "name": "é\n\"x\"", "layers": [1, 2, []]},
                "history": [{"time": 1.5, "status": "Completed", "reason": None}] * size,
                "runs": [],
                "empty": {},
            }
            for trial_id in range(trials)
        },
        "supervisor": {"pid": 1, "nested": {"deeper": [{}]}},
    }


@pytest.mark.parametrize("trials", [0, 1, 3])
def test_the_snapshot_is_what_one_indented_dump_would_be(tmp_path: Path, trials: int) -> None:
    path = tmp_path / "experiment.json"
    state = _state(trials)
    _storage.atomic_write_json(path, state, split="trials")
    assert path.read_bytes() == orjson.dumps(state, option=OPTIONS)


def test_a_split_on_what_is_not_a_mapping_of_plain_keys_is_one_dump(tmp_path: Path) -> None:
    path = tmp_path / "experiment.json"
    for trials in ([1, 2], {1: {"a": 1}, 2: [3]}, None, "text"):
        state = {"seq": 1, "trials": trials}
        _storage.atomic_write_json(path, state, split="trials")
        assert path.read_bytes() == orjson.dumps(state, option=OPTIONS), trials
    _storage.atomic_write_json(path, {"seq": 1}, split="trials")
    assert path.read_bytes() == orjson.dumps({"seq": 1}, option=OPTIONS)


def test_writing_a_large_snapshot_never_holds_its_whole_text(tmp_path: Path) -> None:
    state = _state(2_000)
    size = len(orjson.dumps(state, option=OPTIONS))
    assert size > 8 << 20, "the table must be large enough to tell"
    path = tmp_path / "experiment.json"
    tracemalloc.start()
    try:
        _storage.atomic_write_json(path, state, durable=True, split="trials")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == size
    # A trial's text and the write buffer, not the 8 MiB of the whole.
    assert peak < size / 16, f"{peak} bytes at peak to write {size}"


def test_a_snapshot_that_fails_halfway_leaves_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "experiment.json"
    path.write_bytes(b"old")
    real_write = os.write
    writes = 0

    def write_then_fail(fd: int, data: Any) -> int:
        nonlocal writes
        writes += 1
        if writes == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_then_fail)
    with pytest.raises(OSError, match="injected"):
        _storage.atomic_write_json(path, _state(2_000), durable=True, split="trials")
    monkeypatch.undo()
    assert writes == 2, "the snapshot must take more than one write to be written in parts"
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["experiment.json"]


def test_chunks_that_raise_leave_the_old_file(tmp_path: Path) -> None:
    from localbackend import _files

    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"new" * (1 << 20)
        raise ValueError("an encoder fails halfway")

    with pytest.raises(ValueError, match="halfway"):
        _files.atomic_write_bytes(path, chunks())
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_a_closed_experiment_reads_back_from_its_snapshot(experiment_dir: Path) -> None:
    backend = LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir)
    try:
        ids = [backend.start_trial({"n": 2, "index": i}).trial_id for i in range(3)]
        wait_not_busy(backend, ids)
    finally:
        backend.close()
    paths = ExperimentPaths(experiment_dir)
    assert not paths.journal.exists() or paths.journal.stat().st_size == 0
    snapshot = paths.metadata.read_bytes()
    state = orjson.loads(snapshot)
    assert sorted(state["trials"]) == [str(i) for i in ids]
    assert snapshot == orjson.dumps(state, option=OPTIONS)
    assert load_state(experiment_dir) == state

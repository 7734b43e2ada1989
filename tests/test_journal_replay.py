"""Reading the trial table back: the snapshot, then the journal's entries after it, line by line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from localbackend._errors import ExperimentError
from localbackend._paths import ExperimentPaths
from localbackend.core._journal import Journal, empty_state, load_state
from localbackend.core._storage import atomic_write_json


def _experiment(tmp_path: Path, seq: int = 0) -> ExperimentPaths:
    paths = ExperimentPaths(tmp_path / "experiment")
    paths.root.mkdir()
    state = empty_state({"entry_point": "train.py"})
    state["seq"] = seq
    atomic_write_json(paths.metadata, state)
    return paths


def _entry(seq: int, trial: int, **fields: Any) -> bytes:
    fields.setdefault("op", "trial")
    if fields["op"] == "trial":
        fields.setdefault("config", {"lr": trial / 10})
        fields.setdefault("time", 1.0)
    return orjson.dumps({"seq": seq, "trial": trial, **fields})


def test_an_unfinished_last_line_is_read_once_it_is_finished(tmp_path: Path) -> None:
    paths = _experiment(tmp_path)
    torn = _entry(2, 1)
    paths.journal.write_bytes(_entry(1, 0) + b"\n" + torn[:10])
    state = load_state(paths.root)
    assert list(state["trials"]) == ["0"] and state["seq"] == 1

    with paths.journal.open("ab") as journal:
        journal.write(torn[10:] + b"\n")
    state = load_state(paths.root)
    assert list(state["trials"]) == ["0", "1"] and state["seq"] == 2


def test_a_line_that_does_not_parse_is_skipped_and_the_lines_after_it_are_read(
    tmp_path: Path,
) -> None:
    paths = _experiment(tmp_path)
    # A torn line that a later writer ended (Journal.open does) before going on.
    paths.journal.write_bytes(
        _entry(1, 0) + b"\n" + _entry(2, 1)[:7] + b"\n" + _entry(2, 1) + b"\n"
        + _entry(3, 1, op="status", status="InProgress", time=2.0, run=0) + b"\n"
    )
    state = load_state(paths.root)
    assert state["trials"]["1"]["status"] == "InProgress"
    assert state["seq"] == 3


def test_entries_the_snapshot_already_holds_are_not_applied_again(tmp_path: Path) -> None:
    paths = _experiment(tmp_path, seq=2)
    paths.journal.write_bytes(
        b"".join(_entry(seq, trial) + b"\n" for seq, trial in ((1, 0), (2, 1), (3, 2)))
    )
    assert list(load_state(paths.root)["trials"]) == ["2"]


def test_a_gap_reads_as_a_rotation_to_others_and_is_read_past_by_the_owner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _experiment(tmp_path)
    paths.journal.write_bytes(_entry(1, 0) + b"\n" + _entry(5, 1) + b"\n")
    with pytest.raises(ExperimentError, match="changed too fast"):
        load_state(paths.root, attempts=1)
    state = load_state(paths.root, owner=True)
    assert list(state["trials"]) == ["0", "1"]
    assert "entries 2 to 4 are missing" in caplog.text


def test_a_compaction_keeps_every_trial_of_a_long_journal_and_starts_it_afresh(
    tmp_path: Path,
) -> None:
    paths = _experiment(tmp_path)
    journal = Journal(paths, seq=0)
    journal.open()
    try:
        for trial in range(300):
            journal.append("trial", trial=trial, config={"lr": trial}, time=1.0)
            journal.append("status", trial=trial, status="InProgress", time=2.0, run=0)
        before = load_state(paths.root)
        journal.compact()
        assert paths.journal.read_bytes() == b""
        assert orjson.loads(paths.metadata.read_bytes()) == before
        journal.append("status", trial=7, status="Completed", time=3.0, run=0)
    finally:
        journal.close()
    after = load_state(paths.root)
    assert len(after["trials"]) == 300 and after["seq"] == 601
    assert after["trials"]["7"]["status"] == "Completed"
    assert after["trials"]["8"]["config"] == {"lr": 8}

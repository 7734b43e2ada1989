"""Checkpoints: copy (atomic, independent), start from a copy, delete, delete_checkpoints."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localbackend import (
    CheckpointCopyError,
    InvalidTransitionError,
    LocalBackend,
    LocalBackendError,
    Status,
    TrialNotFoundError,
    checkpoint,
)
from localbackend.core import _storage
from tests.helpers import (
    collect,
    format_logs,
    script,
    until_status,
    wait_for,
    wait_for_trial_file,
    wait_not_busy,
)

GRACE = 0.5
FINISHED = (Status.completed, Status.failed)


def backend_for(experiment_dir: Path, **options: Any) -> LocalBackend:
    options.setdefault("grace_period", GRACE)
    return LocalBackend(script("checkpointing.py"), experiment_dir=experiment_dir, **options)


def run_to_end(backend: LocalBackend, config: dict[str, Any], **start: Any) -> list[int]:
    """Start a trial, let it finish, and return the epochs it reported."""
    trial_id = backend.start_trial(config, **start).trial_id
    statuses, results = collect(backend, [trial_id], until_status(*FINISHED))
    assert statuses[trial_id][1] == Status.completed, format_logs(backend, [trial_id])
    wait_not_busy(backend, [trial_id])
    return [r["epoch"] for _, r in results]


def checkpoint_epoch(backend: LocalBackend, trial_id: int) -> int | None:
    return folder_epoch(backend.trial_dir(trial_id))


def folder_epoch(trial_folder: Path) -> int | None:
    """The epoch in the latest checkpoint of a trial folder, or None without one."""
    state = checkpoint.load_json(directory=trial_folder / "checkpoints")
    return None if state is None else int(state["epoch"])


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> content hash), to compare before/after."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def hidden_leftovers(trial_folder: Path) -> list[str]:
    return sorted(p.name for p in trial_folder.iterdir() if p.name.startswith("."))


# -- copy and start from a copy -------------------------------------------------------


def test_copy_checkpoint_then_start_trial_continues_from_the_copy(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        assert run_to_end(backend, {"epochs": 3}) == [0, 1, 2]
        target = backend.new_trial_id()
        backend.copy_checkpoint(0, target)
        assert checkpoint_epoch(backend, 0) == 2
        assert run_to_end(backend, {"epochs": 5}) == [3, 4]
        assert backend.stdout(target) == ["starting at epoch 3\n"]
        # The source is untouched by the new trial's checkpoints.
        assert checkpoint_epoch(backend, 0) == 2
        assert checkpoint_epoch(backend, target) == 4


def test_start_trial_from_another_trials_checkpoint(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 2})
        assert run_to_end(backend, {"epochs": 4}, checkpoint_trial_id=0) == [2, 3]
        assert backend.stdout(1) == ["starting at epoch 2\n"]
        assert checkpoint_epoch(backend, 0) == 1
        assert checkpoint_epoch(backend, 1) == 3


def test_copy_onto_a_paused_trial_replaces_its_checkpoint_for_the_resume(
    experiment_dir: Path,
) -> None:
    with backend_for(experiment_dir) as backend:
        backend.start_trial({"epochs": 8, "block_at": 0})
        wait_for_trial_file(backend, 0, "blocked")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        collect(backend, [0], lambda s, _r: s[0][1] == Status.paused)
        run_to_end(backend, {"epochs": 5})
        stray = backend.trial_dir(0) / "checkpoints" / "only-in-old-target.txt"
        stray.write_text("old")
        backend.copy_checkpoint(1, 0)
        assert checkpoint_epoch(backend, 0) == 4
        # The old checkpoint is replaced as a whole, not merged into.
        assert not stray.exists()
        backend.resume_trial(0)
        _, results = collect(backend, [0], until_status(*FINISHED))
        assert [r["epoch"] for _, r in results] == [5, 6, 7]
        assert backend.stdout(0)[-1] == "starting at epoch 5\n"


def test_copy_is_independent_of_the_source(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 2})
        source_folder = backend.trial_dir(0) / "checkpoints"
        # A Syne Tune style file, written straight into the checkpoint folder.
        (source_folder / "model.bin").write_bytes(b"source weights")
        before = tree_digest(source_folder)
        target = backend.new_trial_id()
        backend.copy_checkpoint(0, target)
        target_folder = experiment_dir / str(target) / "checkpoints"
        assert tree_digest(target_folder) == before
        # Files of published checkpoints are shared read-only by hard link
        # (tests/test_checkpoint_copy_links.py); every other file is copied.
        for relative in [name for name in before if not name.startswith("ckpt-")]:
            copied = target_folder / relative
            original = source_folder / relative
            assert os.stat(copied).st_ino != os.stat(original).st_ino, relative
            # Rewrite the copy in place (same inode), as a careless trial would.
            with open(copied, "r+b") as rewritten:
                rewritten.write(b"XXXX")
        assert tree_digest(source_folder) == before


def test_copy_onto_a_running_target_raises_and_leaves_it(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 3})
        backend.start_trial({"epochs": 5, "block_at": 0})
        wait_for_trial_file(backend, 1, "blocked")
        before = tree_digest(backend.trial_dir(1) / "checkpoints")
        with pytest.raises(InvalidTransitionError) as caught:
            backend.copy_checkpoint(0, 1)
        assert caught.value.trial_id == 1
        assert "trial 1" in str(caught.value)
        assert tree_digest(backend.trial_dir(1) / "checkpoints") == before
        assert checkpoint_epoch(backend, 1) == 0
        backend.stop_trial(1)


def test_copy_onto_a_trial_whose_process_is_still_ending_raises(experiment_dir: Path) -> None:
    with backend_for(experiment_dir, grace_period=1.0) as backend:
        run_to_end(backend, {"epochs": 3})
        backend.start_trial({"epochs": 5, "block_at": 0, "ignore_term": 1})
        wait_for_trial_file(backend, 1, "blocked")
        backend.pause_trial(1)
        assert backend.busy_trial_ids() == [(1, Status.stopping)]
        with pytest.raises(InvalidTransitionError, match="trial 1"):
            backend.copy_checkpoint(0, 1)
        assert checkpoint_epoch(backend, 1) == 0
        wait_not_busy(backend, [1])
        backend.copy_checkpoint(0, 1)
        assert checkpoint_epoch(backend, 1) == 2


def test_copy_from_a_trial_without_checkpoint_raises(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 0})
        target = backend.new_trial_id()
        with pytest.raises(CheckpointCopyError) as caught:
            backend.copy_checkpoint(0, target)
        assert caught.value.src_trial_id == 0
        assert "trial 0" in str(caught.value)
        assert "no checkpoint" in str(caught.value)
        assert not (experiment_dir / str(target)).exists()
        with pytest.raises(CheckpointCopyError, match="trial 0"):
            backend.start_trial({"epochs": 1}, checkpoint_trial_id=0)
        assert backend.new_trial_id() == target
        assert not (experiment_dir / str(target)).exists()


def test_copy_onto_itself_raises(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 1})
        before = tree_digest(backend.trial_dir(0) / "checkpoints")
        with pytest.raises(CheckpointCopyError, match="same trial"):
            backend.copy_checkpoint(0, 0)
        assert tree_digest(backend.trial_dir(0) / "checkpoints") == before


@pytest.mark.parametrize(
    ("src", "tgt", "named"),
    [(5, 1, "5"), (0, 7, "7"), ("0", 1, "'0'"), (0, None, "None"), (True, 1, "True")],
)
def test_copy_with_unknown_ids_raises(src: Any, tgt: Any, named: str, experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 1})
        with pytest.raises(TrialNotFoundError) as caught:
            backend.copy_checkpoint(src, tgt)
        assert named in str(caught.value)
        assert sorted(p.name for p in experiment_dir.iterdir() if p.is_dir()) == ["0"]


# -- a failed copy leaves the target as it was -------------------------------------------


def _failing_renames(should_fail: Callable[[Path, Path], bool]) -> Any:
    """An ``os.rename`` / ``os.replace`` that raises where ``should_fail(src, dst)`` says."""
    real = os.rename

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if should_fail(Path(src), Path(dst)):
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        real(src, dst, *args, **kwargs)

    return rename


def _fail_renames(
    monkeypatch: pytest.MonkeyPatch, should_fail: Callable[[Path, Path], bool]
) -> None:
    # On POSIX both are rename(2); the code under test may use either.
    failing = _failing_renames(should_fail)
    monkeypatch.setattr(os, "rename", failing)
    monkeypatch.setattr(os, "replace", failing)


def _into(target: Path, *, always: bool) -> Callable[[Path, Path], bool]:
    """Fails moving anything onto ``target`` or into it: once, or every time."""
    failed: list[Path] = []

    def should_fail(src: Path, dst: Path) -> bool:
        if (dst == target or dst.parent == target) and (always or not failed):
            failed.append(src)
            return True
        return False

    return should_fail


def _fail_copytree_midway() -> Any:
    real = shutil.copytree

    def copytree(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        real(src, dst, *args, **kwargs)  # the copy is made, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    return copytree


def _fail_exchange(first: Path, second: Path) -> bool:
    raise OSError(errno.EIO, "I/O error (injected)", str(second))


def _no_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a filesystem without renameat2(RENAME_EXCHANGE) (NFS, some FUSE ones)."""
    monkeypatch.setattr(_storage, "_exchange", lambda first, second: False)


@pytest.mark.parametrize(
    ("fault", "existing_target", "exchange"),
    [
        ("exchange", True, "fails"),
        ("rename_into_place_once", True, "unsupported"),
        ("rename_into_place_once", False, "works"),
        # Without the exchange, a persistent rename fault once left the
        # target with no checkpoints folder at all.
        ("rename_into_place_always", True, "unsupported"),
        ("rename_into_place_always", False, "works"),
        ("copytree", True, "works"),
        ("copytree", True, "unsupported"),
        ("copytree", False, "works"),
    ],
)
def test_failed_copy_leaves_the_target_untouched(
    fault: str,
    existing_target: bool,
    exchange: str,
    experiment_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 4})
        if existing_target:
            run_to_end(backend, {"epochs": 2})
            target = 1
        else:
            target = backend.new_trial_id()
        target_folder = experiment_dir / str(target)
        source_before = tree_digest(backend.trial_dir(0) / "checkpoints")
        target_before = tree_digest(target_folder / "checkpoints")
        if exchange == "fails":
            monkeypatch.setattr(_storage, "_exchange", _fail_exchange)
        elif exchange == "unsupported":
            _no_exchange(monkeypatch)
        if fault.startswith("rename_into_place"):
            _fail_renames(
                monkeypatch,
                _into(target_folder / "checkpoints", always=fault.endswith("always")),
            )
        elif fault == "copytree":
            monkeypatch.setattr(shutil, "copytree", _fail_copytree_midway())
        with pytest.raises(CheckpointCopyError) as caught:
            backend.copy_checkpoint(0, target)
        monkeypatch.undo()
        assert isinstance(caught.value.__cause__, OSError)
        assert f"trial {target}" in str(caught.value)
        assert "injected" in str(caught.value)
        assert tree_digest(target_folder / "checkpoints") == target_before
        assert tree_digest(backend.trial_dir(0) / "checkpoints") == source_before
        if target_folder.exists():
            assert hidden_leftovers(target_folder) == []
        if existing_target:
            assert folder_epoch(target_folder) == 1
        else:
            assert not (target_folder / "checkpoints").exists()
            assert backend.new_trial_id() == target
        # The backend carries on normally afterwards.
        backend.copy_checkpoint(0, target)
        assert folder_epoch(target_folder) == 3


def test_copy_without_exchange_holds_the_old_or_the_new_checkpoint_whichever_rename_fails(
    experiment_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail every rename from the n-th on, for each n: as if the copy froze or died there."""
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 4})
        run_to_end(backend, {"epochs": 2})
        source = backend.trial_dir(0) / "checkpoints"
        target_folder = backend.trial_dir(1)
        target = target_folder / "checkpoints"
        pristine = tmp_path / "pristine-target"
        shutil.copytree(target, pristine, symlinks=True)
        old_latest, new_latest = checkpoint.latest(directory=target), checkpoint.latest(
            directory=source
        )
        assert old_latest is not None and new_latest is not None
        old_digest, new_digest = tree_digest(old_latest), tree_digest(new_latest)
        outcomes: list[str] = []
        for first_failure in itertools.count(1):
            shutil.rmtree(target)
            shutil.copytree(pristine, target, symlinks=True)
            renames: list[tuple[Path, Path]] = []

            def should_fail(
                src: Path, dst: Path, first: int = first_failure,
                renames: list[tuple[Path, Path]] = renames,
            ) -> bool:
                if target_folder not in (*src.parents, *dst.parents):
                    return False  # the experiment's own files (journal, ...)
                renames.append((src, dst))
                return len(renames) >= first

            with monkeypatch.context() as patch:
                _no_exchange(patch)
                _fail_renames(patch, should_fail)
                try:
                    backend.copy_checkpoint(0, 1)
                    outcomes.append("copied")
                except CheckpointCopyError as err:
                    assert "injected" in str(err)
                    outcomes.append("refused")
            latest = checkpoint.latest(directory=target)
            assert latest is not None, f"no checkpoint left, renames {renames}"
            if outcomes[-1] == "refused":
                assert tree_digest(target) == tree_digest(pristine), renames
                assert tree_digest(latest) == old_digest
            else:
                assert tree_digest(latest) == new_digest, renames
                assert folder_epoch(target_folder) == 3
            assert hidden_leftovers(target_folder) == [], renames
            if len(renames) < first_failure:
                break  # no rename failed: this was the whole copy
        assert outcomes[0] == "refused", outcomes
        assert outcomes[1:] == ["copied"] * (len(outcomes) - 1), outcomes
        assert len(outcomes) >= 4, outcomes  # the switch, then tidying up, was exercised
        # Run whole, the copy replaces the old checkpoints, not merges with them.
        assert sorted(tree_digest(target).values()) == sorted(tree_digest(source).values())
        assert len(checkpoint_folders(target)) == len(checkpoint_folders(source))
        assert run_to_end(backend, {"epochs": 5}, checkpoint_trial_id=1) == [4]


def checkpoint_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("ckpt-"))


@pytest.mark.parametrize("holder", ["target", "source"])
def test_copy_without_exchange_refuses_files_outside_checkpoint_folders(
    holder: str, experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Syne Tune style files cannot be switched all at once without the exchange."""
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 4})
        run_to_end(backend, {"epochs": 2})
        holder_id = 1 if holder == "target" else 0
        (backend.trial_dir(holder_id) / "checkpoints" / "model.bin").write_bytes(b"weights")
        target = backend.trial_dir(1) / "checkpoints"
        before = tree_digest(target)
        _no_exchange(monkeypatch)
        with pytest.raises(CheckpointCopyError) as caught:
            backend.copy_checkpoint(0, 1)
        message = str(caught.value)
        assert isinstance(caught.value.__cause__, _storage.CheckpointSwapUnsupportedError)
        assert "RENAME_EXCHANGE" in message and "'model.bin'" in message, message
        assert "delete_checkpoint(1)" in message, message
        assert "free disk space" not in message, message
        assert tree_digest(target) == before
        assert hidden_leftovers(backend.trial_dir(1)) == []
        # As the hint says: delete the target's checkpoint first, then copy.
        backend.delete_checkpoint(1)
        backend.copy_checkpoint(0, 1)
        assert tree_digest(target) == tree_digest(backend.trial_dir(0) / "checkpoints")


@pytest.mark.parametrize("role", ["source", "target"])
def test_copy_with_a_symlinked_checkpoint_folder_explains_the_link(
    role: str, experiment_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 4})
        run_to_end(backend, {"epochs": 2})
        linked = backend.trial_dir(0 if role == "source" else 1) / "checkpoints"
        elsewhere = tmp_path / "elsewhere"
        linked.rename(elsewhere)
        linked.symlink_to(elsewhere)
        before = tree_digest(elsewhere)
        if role == "target":
            # With the exchange, a linked target is simply swapped out.
            _no_exchange(monkeypatch)
        with pytest.raises(CheckpointCopyError) as caught:
            backend.copy_checkpoint(0, 1)
        message = str(caught.value)
        assert isinstance(caught.value.__cause__, _storage.SymlinkedCheckpointError)
        assert f"{linked} is a symbolic link (to {elsewhere})" in message, message
        assert "free disk space" not in message, message
        assert "replace the link" in message, message
        assert linked.is_symlink() and tree_digest(elsewhere) == before
        assert hidden_leftovers(backend.trial_dir(1)) == []
        # As the hint says: put the folder itself in place of the link.
        linked.unlink()
        elsewhere.rename(linked)
        backend.copy_checkpoint(0, 1)
        assert folder_epoch(backend.trial_dir(1)) == 3


# -- delete ----------------------------------------------------------------------


def test_delete_checkpoint_twice_is_harmless(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 2})
        folder = backend.trial_dir(0) / "checkpoints"
        assert folder.exists()
        backend.delete_checkpoint(0)
        assert checkpoint_epoch(backend, 0) is None
        backend.delete_checkpoint(0)
        assert not folder.exists() or list(folder.iterdir()) == []
        assert hidden_leftovers(backend.trial_dir(0)) == []
        # A trial never started yet has nothing to delete, and that is fine too.
        backend.delete_checkpoint(backend.new_trial_id())
        with pytest.raises(CheckpointCopyError):
            backend.copy_checkpoint(0, backend.new_trial_id())


def test_delete_checkpoint_of_a_paused_trial_makes_it_resume_from_scratch(
    experiment_dir: Path,
) -> None:
    with backend_for(experiment_dir) as backend:
        backend.start_trial({"epochs": 3, "block_at": 1})
        wait_for_trial_file(backend, 0, "blocked")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        backend.delete_checkpoint(0)
        backend.resume_trial(0)
        wait_for(
            lambda: len(backend.stdout(0)) == 2, timeout=30, what="the resumed run to start",
            on_fail=lambda: format_logs(backend),
        )
        assert backend.stdout(0) == ["starting at epoch 0\n", "starting at epoch 0\n"]
        backend.stop_trial(0)


def test_delete_checkpoint_of_a_running_trial_takes_effect_once_it_ends(
    experiment_dir: Path,
) -> None:
    with backend_for(experiment_dir) as backend:
        backend.start_trial({"epochs": 3, "block_at": 0})
        wait_for_trial_file(backend, 0, "blocked")
        backend.delete_checkpoint(0)
        backend.stop_trial(0)
        wait_not_busy(backend, [0])
        assert checkpoint_epoch(backend, 0) is None


def test_delete_checkpoint_of_an_unknown_trial_raises(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        with pytest.raises(TrialNotFoundError, match="3"):
            backend.delete_checkpoint(3)
        with pytest.raises(LocalBackendError, match="'0'"):
            backend.delete_checkpoint("0")  # type: ignore[arg-type]


# -- delete_checkpoints=True ---------------------------------------------------------


def _gone(backend: LocalBackend, trial_id: int) -> bool:
    return checkpoint_epoch(backend, trial_id) is None


def test_delete_checkpoints_removes_them_on_completion_and_stop_but_not_on_pause(
    experiment_dir: Path,
) -> None:
    with backend_for(experiment_dir, delete_checkpoints=True) as backend:
        backend.start_trial({"epochs": 2})  # completes
        backend.start_trial({"epochs": 5, "block_at": 0})  # stopped while running
        backend.start_trial({"epochs": 5, "block_at": 0})  # paused, then stopped
        backend.start_trial({"epochs": 5, "block_at": 0})  # paused only
        for trial_id in (1, 2, 3):
            wait_for_trial_file(backend, trial_id, "blocked")
        collect(backend, [0], until_status(*FINISHED))
        backend.stop_trial(1)
        backend.pause_trial(2)
        backend.pause_trial(3)
        wait_not_busy(backend, [0, 1, 2, 3])
        for trial_id in (0, 1):
            wait_for(lambda t=trial_id: _gone(backend, t), timeout=10,  # type: ignore[misc]
                     what=f"trial {trial_id}'s checkpoint to be deleted")
        # A paused trial keeps its checkpoint: it is needed to resume.
        assert checkpoint_epoch(backend, 2) == 0
        assert checkpoint_epoch(backend, 3) == 0
        backend.stop_trial(2)
        wait_for(lambda: _gone(backend, 2), timeout=10, what="trial 2's checkpoint deleted")
        assert checkpoint_epoch(backend, 3) == 0


def test_delete_checkpoints_removes_every_checkpoint_in_stop_all(experiment_dir: Path) -> None:
    with backend_for(experiment_dir, delete_checkpoints=True) as backend:
        backend.start_trial({"epochs": 5, "block_at": 0})
        backend.start_trial({"epochs": 5, "block_at": 0})
        for trial_id in (0, 1):
            wait_for_trial_file(backend, trial_id, "blocked")
        backend.pause_trial(1)
        wait_not_busy(backend, [1])
        assert checkpoint_epoch(backend, 1) == 0
        backend.stop_all()
        assert backend.busy_trial_ids() == []
        wait_for(lambda: _gone(backend, 0) and _gone(backend, 1), timeout=10,
                 what="every checkpoint to be deleted")


def test_without_delete_checkpoints_stop_and_stop_all_keep_them(experiment_dir: Path) -> None:
    with backend_for(experiment_dir) as backend:
        run_to_end(backend, {"epochs": 2})
        backend.start_trial({"epochs": 5, "block_at": 0})
        backend.start_trial({"epochs": 5, "block_at": 0})
        for trial_id in (1, 2):
            wait_for_trial_file(backend, trial_id, "blocked")
        backend.stop_trial(1)
        backend.stop_all()
        assert [checkpoint_epoch(backend, t) for t in (0, 1, 2)] == [1, 0, 0]

"""copy_checkpoint's fallbacks and durability, each fault injected by patching the one call.

A refused hard link falls back to a copy; a missing reflink or
``copy_file_range`` falls back to the next way of copying; a failure
anywhere leaves the target as it was; and the copy is flushed (one
``syncfs``, or an fsync of each new folder when everything was linked)
before the rename that publishes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localbackend import checkpoint
from localbackend._paths import TrialPaths
from localbackend.core import _copying, _storage
from tests.test_backend_checkpoints import tree_digest


def make_trial(root: Path, name: str, content: bytes, *, loose: bool = True) -> TrialPaths:
    paths = TrialPaths(root / name)
    with checkpoint.save(directory=paths.checkpoints) as folder:
        for index in range(3):
            (folder / f"part-{index}.bin").write_bytes(content * (index + 1))
    if loose:
        (paths.checkpoints / "model.pt").write_bytes(content + b" loose")
    return paths


def inodes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): os.stat(p).st_ino for p in folder.rglob("*")
            if p.is_file()}


def shared_with(source: TrialPaths, target: TrialPaths) -> set[str]:
    """Relative paths whose file is the same inode in both trials."""
    theirs = inodes(source.checkpoints)
    return {name for name, ino in inodes(target.checkpoints).items() if theirs.get(name) == ino}


def failing(code: int, *, times: int | None = None,
            then: Callable[..., Any] | None = None) -> tuple[Callable[..., Any], list[Any]]:
    """A stand-in that raises OSError(code) (the first ``times`` calls), else calls ``then``."""
    calls: list[Any] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if times is None or len(calls) <= times:
            raise OSError(code, os.strerror(code) + " (injected)")
        assert then is not None
        return then(*args, **kwargs)

    return call, calls


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.ENOTSUP])
def test_a_refused_link_falls_back_to_copying_every_file(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"weights")
    before = tree_digest(source.checkpoints)
    target = TrialPaths(tmp_path / "1")
    link, calls = failing(code)
    monkeypatch.setattr(_copying.os, "link", link)
    _storage.copy_checkpoint_folder(source, target)
    assert len(calls) == 1  # the filesystem said no once; later files are not tried
    assert tree_digest(target.checkpoints) == before
    assert shared_with(source, target) == set()
    for path in target.checkpoints.rglob("*.bin"):
        assert os.stat(path).st_mode & 0o200, path  # a copy keeps its write permission


def test_a_file_with_too_many_links_is_copied_and_the_rest_still_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"weights", loose=False)
    target = TrialPaths(tmp_path / "1")
    link, calls = failing(errno.EMLINK, times=1, then=os.link)
    monkeypatch.setattr(_copying.os, "link", link)
    _storage.copy_checkpoint_folder(source, target)
    assert len(calls) == 3
    assert len(shared_with(source, target)) == 2
    assert tree_digest(target.checkpoints) == tree_digest(source.checkpoints)


def test_without_reflinks_or_copy_file_range_files_are_still_copied_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", os.urandom(1 << 16))
    (source.checkpoints / "empty").write_bytes(b"")
    target = TrialPaths(tmp_path / "1")
    ioctl, clones = failing(errno.EOPNOTSUPP)
    copy_range, ranges = failing(errno.EXDEV)
    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    monkeypatch.setattr(_copying.os, "copy_file_range", copy_range)
    monkeypatch.setattr(_copying.os, "link", failing(errno.EXDEV)[0])
    _storage.copy_checkpoint_folder(source, target)
    assert (len(clones), len(ranges)) == (1, 1)  # each tried once, then left alone
    assert tree_digest(target.checkpoints) == tree_digest(source.checkpoints)


def test_a_filesystem_with_reflinks_clones_the_copied_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"weights")
    target = TrialPaths(tmp_path / "1")
    cloned: list[int] = []

    def ficlone(fd: int, request: int, source_fd: int) -> int:
        # As a reflink would: the target file ends up with the source's bytes.
        assert request == _copying.FICLONE
        cloned.append(fd)
        size = os.fstat(source_fd).st_size
        os.write(fd, os.pread(source_fd, size, 0))
        return 0

    monkeypatch.setattr(fcntl, "ioctl", ficlone)
    _storage.copy_checkpoint_folder(source, target)
    assert len(cloned) == 1  # the loose file; published files are linked
    assert tree_digest(target.checkpoints) == tree_digest(source.checkpoints)


@pytest.mark.parametrize("where", ["link", "copy"])
@pytest.mark.parametrize("existing_target", [True, False])
def test_a_failure_while_copying_leaves_the_target_as_it_was(
    where: str, existing_target: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"new")
    before = tree_digest(source.checkpoints)
    target = (make_trial(tmp_path, "1", b"old") if existing_target
              else TrialPaths(tmp_path / "1"))
    target_before = tree_digest(target.checkpoints)
    if where == "link":
        monkeypatch.setattr(_copying.os, "link", failing(errno.EIO)[0])
    else:
        monkeypatch.setattr(_copying.os, "sendfile", failing(errno.ENOSPC)[0])
        monkeypatch.setattr(_copying.os, "copy_file_range", failing(errno.ENOSPC)[0])
    with pytest.raises(OSError, match="injected"):
        _storage.copy_checkpoint_folder(source, target)
    assert tree_digest(target.checkpoints) == target_before
    assert tree_digest(source.checkpoints) == before
    target.root.mkdir(exist_ok=True)
    assert [p.name for p in target.root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("step", ["replace", "exchange", "syncfs"])
def test_a_failed_publish_or_flush_leaves_the_target_as_it_was(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"new")
    before = tree_digest(source.checkpoints)
    target = (make_trial(tmp_path, "1", b"old") if step == "exchange"
              else TrialPaths(tmp_path / "1"))
    target_before = tree_digest(target.checkpoints)
    fail_to_publish(step, monkeypatch)
    with pytest.raises(OSError, match=r"injected|Input/output"):
        _storage.copy_checkpoint_folder(source, target)
    monkeypatch.undo()
    assert tree_digest(target.checkpoints) == target_before
    assert tree_digest(source.checkpoints) == before
    assert [p.name for p in target.root.iterdir() if p.name.startswith(".")] == []
    _storage.copy_checkpoint_folder(source, target)  # and it works once the fault is gone
    assert tree_digest(target.checkpoints) == before


def fail_to_publish(step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make one step of publishing a copy fail with EIO: replace, exchange or syncfs."""
    if step == "replace":
        monkeypatch.setattr(_storage.os, "replace", failing(errno.EIO)[0])
    elif step == "exchange":
        monkeypatch.setattr(_storage, "_exchange", failing(errno.EIO)[0])
    else:
        syncfs, _ = failing(errno.EIO)
        monkeypatch.setattr(_copying, "_libc_syncfs", lambda: _errno_call(syncfs))


def _errno_call(raising: Callable[..., Any]) -> Callable[[int], int]:
    """A ``syncfs`` stand-in: -1 with errno set, as the C call reports a failure."""
    import ctypes

    def call(fd: int) -> int:
        try:
            raising(fd)
        except OSError as err:
            ctypes.set_errno(err.errno or errno.EIO)
            return -1
        return 0

    return call


class FlushLog:
    """Records syncfs, fsync (with the path synced) and the publishing rename, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, syncfs: bool = True) -> None:
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace
        real_syncfs = _copying._libc_syncfs()

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            self.events.append(("publish", str(dst)))
            real_replace(src, dst)

        def syncfs_call(fd: int) -> int:
            self.events.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
            return int(real_syncfs(fd))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(_storage.os, "replace", replace)
        monkeypatch.setattr(_copying, "_libc_syncfs", lambda: syncfs_call if syncfs else None)

    def before_publish(self) -> list[tuple[str, str]]:
        names = [kind for kind, _ in self.events]
        return self.events[: names.index("publish")]


def test_a_copy_with_copied_files_is_flushed_by_one_syncfs_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _copying._libc_syncfs() is None:
        pytest.skip("this libc has no syncfs")
    source = make_trial(tmp_path, "0", b"weights")
    target = TrialPaths(tmp_path / "1")
    log = FlushLog(monkeypatch)
    _storage.copy_checkpoint_folder(source, target)
    flushes = log.before_publish()
    assert [kind for kind, _ in flushes] == ["syncfs"], log.events
    assert ("fsync", str(target.root)) in log.events[len(flushes):]  # the rename itself


def test_a_copy_of_linked_files_only_fsyncs_its_new_folders_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"weights", loose=False)
    target = TrialPaths(tmp_path / "1")
    log = FlushLog(monkeypatch)
    _storage.copy_checkpoint_folder(source, target)
    flushes = log.before_publish()
    assert {kind for kind, _ in flushes} == {"fsync"}, log.events
    staging = Path(flushes[-1][1])
    assert [Path(path).name for _, path in flushes] == ["ckpt-00000001", staging.name]


def test_without_syncfs_every_copied_file_is_fsynced_before_it_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"weights")
    target = TrialPaths(tmp_path / "1")
    log = FlushLog(monkeypatch, syncfs=False)
    _storage.copy_checkpoint_folder(source, target)
    synced = {Path(path).name for kind, path in log.before_publish() if kind == "fsync"}
    assert {"model.pt", "part-0.bin", "part-1.bin", "part-2.bin", "ckpt-00000001"} <= synced


def test_copying_over_a_target_leaves_no_staging_folder(tmp_path: Path) -> None:
    source = make_trial(tmp_path, "0", b"new")
    target = make_trial(tmp_path, "1", b"old")
    _storage.copy_checkpoint_folder(source, target)
    _storage.copy_checkpoint_folder(source, target)
    assert tree_digest(target.checkpoints) == tree_digest(source.checkpoints)
    assert sorted(p.name for p in target.root.iterdir()) == ["checkpoints"]
    shutil.rmtree(source.root)  # the target's shared files survive the source's deletion
    assert checkpoint.latest(directory=target.checkpoints) is not None
    assert len(tree_digest(target.checkpoints)) == 4


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): os.stat(p).st_mode for p in folder.rglob("*")}


@pytest.mark.parametrize("step", ["link", "replace", "exchange", "syncfs"])
def test_a_failed_copy_leaves_the_source_files_as_writable_as_they_were(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"new")
    source_modes = modes(source.checkpoints)
    assert any(mode & 0o200 for mode in source_modes.values())
    target = (make_trial(tmp_path, "1", b"old") if step == "exchange"
              else TrialPaths(tmp_path / "1"))
    if step == "link":
        # The first file is linked (and made read-only), the second fails.
        monkeypatch.setattr(_copying.os, "link", _nth_fails(os.link, 2))
    else:
        fail_to_publish(step, monkeypatch)
    with pytest.raises(OSError, match=r"injected|Input/output"):
        _storage.copy_checkpoint_folder(source, target)
    monkeypatch.undo()
    assert modes(source.checkpoints) == source_modes
    _storage.copy_checkpoint_folder(source, target)  # once it succeeds, they are shared
    assert shared_with(source, target)
    assert all(not os.stat(source.checkpoints / name).st_mode & 0o222
               for name in shared_with(source, target))


def _nth_fails(real: Callable[..., Any], n: int) -> Callable[..., Any]:
    calls = 0

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("existing_target", [True, False])
def test_a_failure_once_the_copy_is_switched_in_says_so(
    existing_target: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_trial(tmp_path, "0", b"new")
    target = (make_trial(tmp_path, "1", b"old") if existing_target
              else TrialPaths(tmp_path / "1"))
    target.root.mkdir(exist_ok=True)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(target.root):
            raise OSError(errno.EIO, "Input/output error (injected)")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(_storage.CheckpointNotDurableError, match="in place") as raised:
        _storage.copy_checkpoint_folder(source, target)
    monkeypatch.undo()
    assert raised.value.folder == target.checkpoints
    assert tree_digest(target.checkpoints) == tree_digest(source.checkpoints)
    assert [p.name for p in target.root.iterdir() if p.name.startswith(".")] == []


def test_what_a_killed_copy_or_delete_left_is_removed_by_the_next_one(tmp_path: Path) -> None:
    source = make_trial(tmp_path, "0", b"new")
    target = make_trial(tmp_path, "1", b"old")
    # What a driver killed during a copy, and a keeper killed during a delete, leave.
    staging, retired = target.checkpoint_staging(), target.checkpoint_retired()
    for folder in (staging, retired):
        (folder / "ckpt-00000001").mkdir(parents=True)
        (folder / "ckpt-00000001" / "part.bin").write_bytes(b"x" * 1000)
    _storage.copy_checkpoint_folder(source, target)
    assert sorted(p.name for p in target.root.iterdir()) == ["checkpoints"]
    assert tree_digest(target.checkpoints) == tree_digest(source.checkpoints)
    for folder in (staging, retired):
        (folder / "part.bin").parent.mkdir(parents=True)
        (folder / "part.bin").write_bytes(b"x")
    _storage.delete_checkpoint_folder(target)
    assert sorted(p.name for p in target.root.iterdir()) == []


def test_the_backend_says_when_a_copy_is_in_place_but_not_synced(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localbackend import CheckpointCopyError, LocalBackend
    from tests.helpers import script, wait_not_busy

    with LocalBackend(script("checkpointing.py"), experiment_dir=experiment_dir) as backend:
        source = backend.start_trial({"epochs": 2}).trial_id
        wait_not_busy(backend, [source])
        target = backend.new_trial_id()
        target_root = backend.trial_dir(source).parent / str(target)
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}") == str(target_root):
                raise OSError(errno.EIO, "Input/output error (injected)")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(CheckpointCopyError, match="The copy is in place") as raised:
            backend.copy_checkpoint(source, target)
        monkeypatch.undo()
        assert "left as it was" not in str(raised.value)
        assert tree_digest(target_root / "checkpoints") == tree_digest(
            backend.trial_dir(source) / "checkpoints")


def test_what_a_crashed_driver_left_is_removed_when_the_experiment_is_restored(
    experiment_dir: Path,
) -> None:
    from localbackend import LocalBackend
    from tests.helpers import script, wait_not_busy

    with LocalBackend(script("checkpointing.py"), experiment_dir=experiment_dir) as backend:
        trial = backend.start_trial({"epochs": 2}).trial_id
        wait_not_busy(backend, [trial])
        paths = TrialPaths(backend.trial_dir(trial))
    before = tree_digest(paths.checkpoints)
    # What a driver killed during a copy into the trial, and a keeper killed
    # while it deleted the trial's checkpoints, leave; nothing copies or
    # deletes into the trial again, so only the restore can remove them.
    for folder in (paths.checkpoint_staging(), paths.checkpoint_retired()):
        (folder / "ckpt-00000001").mkdir(parents=True)
        (folder / "ckpt-00000001" / "part.bin").write_bytes(b"x" * 1000)
    with LocalBackend.restore(experiment_dir) as backend:
        assert paths.checkpoint_leftovers() == []
        assert tree_digest(paths.checkpoints) == before
        statuses, _ = backend.fetch_status_results([trial])
        assert statuses[trial][1] == "Completed"

"""Files the driver writes: atomic JSON, and checkpoint copies and deletes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson

from . import _protocol as proto
from ._paths import TrialPaths


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` so that a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any, *, durable: bool = False) -> None:
    """Write ``obj`` as indented JSON, atomically (see ``atomic_write_bytes``)."""
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    atomic_write_bytes(path, data, durable=durable)


def has_checkpoint(paths: TrialPaths) -> bool:
    try:
        with os.scandir(paths.checkpoints) as entries:
            return any(not e.name.startswith(proto.CHECKPOINT_TMP_PREFIX) for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _ignore_unpublished(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name.startswith(proto.CHECKPOINT_TMP_PREFIX)}


def copy_checkpoint_folder(src: TrialPaths, tgt: TrialPaths) -> None:
    """Copy ``src``'s checkpoint folder over ``tgt``'s, all or nothing.

    The copy is assembled under a staging name and swapped with the target
    in one atomic ``renameat2(RENAME_EXCHANGE)``, so the target holds either
    the old checkpoint or the new one at every moment; until then the target
    is untouched, and on any error the staging folder is removed. Symlinks
    are copied as links, never followed, and files are copied (not linked),
    so a trial rewriting a copied file in place cannot change the source.
    """
    if src.checkpoints.is_symlink():
        # Copying through it would copy whatever it points to, outside the trial.
        raise OSError(f"{src.checkpoints} is a symbolic link; copy the folder it points to "
                      "into place instead")
    tgt.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = tgt.checkpoint_staging()
    retired = tgt.checkpoint_retired()
    try:
        # A published checkpoint may be pruned by the running source trial
        # while we copy; try again from the newer state.
        for attempt in range(3):
            try:
                shutil.copytree(
                    src.checkpoints, staging, symlinks=True, ignore=_ignore_unpublished
                )
                break
            except (FileNotFoundError, shutil.Error):
                shutil.rmtree(staging, ignore_errors=True)
                if attempt == 2:
                    raise
        _fsync_tree(staging)
        if tgt.checkpoints.exists() or tgt.checkpoints.is_symlink():
            if _exchange(staging, tgt.checkpoints):
                shutil.rmtree(staging, ignore_errors=True)  # now the old checkpoint
            else:
                os.replace(tgt.checkpoints, retired)
                try:
                    os.replace(staging, tgt.checkpoints)
                except BaseException:
                    os.replace(retired, tgt.checkpoints)
                    raise
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, tgt.checkpoints)
        _fsync_dir(tgt.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2``); False if unsupported."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(second))


def delete_checkpoint_folder(paths: TrialPaths) -> None:
    """Remove a trial's checkpoints; a missing folder is fine."""
    if not paths.checkpoints.exists():
        return
    retired = paths.checkpoint_retired()
    try:
        os.replace(paths.checkpoints, retired)
    except FileNotFoundError:
        return
    shutil.rmtree(retired, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

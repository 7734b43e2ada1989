"""File helpers shared by the driver, the keeper and the trial-side ``checkpoint`` module.

Small reads, atomic writes, fsyncs and folder deletion. Standard library
only, and light to import: the keeper and every trial script that uses
``localbackend.checkpoint`` load this module.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import stat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

from ._protocol import CHECKPOINT_PREFIX, CHECKPOINT_TMP_PREFIX

_BLOCK = 1 << 20
# Pieces of an atomic write are gathered into writes of this size.
_WRITE_BLOCK = 64 << 10
# Published checkpoints are CHECKPOINT_PREFIX + this many digits (see checkpoint.save()).
CHECKPOINT_DIGITS = 8
_PUBLISHED = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)")


def file_size(path: str | os.PathLike[str]) -> int:
    """Size of a file in bytes; 0 if it does not exist (yet, or any more)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def count_lines(path: str | os.PathLike[str], start: int = 0, end: int | None = None) -> int:
    """Newlines in ``path`` between two byte offsets (to the end of the file by default)."""
    if end is not None and end <= start:
        return 0
    count = 0
    try:
        with open(path, "rb") as source:
            source.seek(start)
            remaining = end - start if end is not None else None
            while remaining is None or remaining > 0:
                block = source.read(_BLOCK if remaining is None else min(remaining, _BLOCK))
                if not block:
                    break
                count += block.count(b"\n")
                if remaining is not None:
                    remaining -= len(block)
    except OSError:
        return 0
    return count


def which(program: str, path: str | None = None) -> str | None:
    """The first executable ``program`` on ``path`` (default ``$PATH``), as ``shutil.which``.

    For a bare name only; ``shutil`` costs the driver an import it otherwise
    never needs.
    """
    if path is None:
        path = os.environ.get("PATH")
        if path is None:
            path = os.confstr("CS_PATH") or os.defpath
    if not path:  # an empty PATH finds nothing, as for shutil.which
        return None
    for folder in path.split(os.pathsep):
        candidate = os.path.join(folder, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A JSON object from a small file, or None when it is missing or not an object."""
    try:
        with open(path, "rb") as source:
            value = json.loads(source.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def delete_folder(folder: str | os.PathLike[str]) -> None:
    """Remove a folder as one step for its readers: rename it aside, then delete it.

    The aside name is ``.<name>-retired-<pid>-<random>`` next to the folder,
    unique to this call; see ``delete_folder_atomically``.
    """
    path = os.fspath(folder)
    parent, name = os.path.split(path.rstrip(os.sep))
    retired = os.path.join(parent, f".{name}-retired-{os.getpid()}-{os.urandom(4).hex()}")
    delete_folder_atomically(path, retired)


def delete_folder_atomically(
    folder: str | os.PathLike[str], retired: str | os.PathLike[str]
) -> bool:
    """Rename ``folder`` to ``retired`` (same parent), then delete it; False if it was missing.

    Readers see the folder whole until the rename and absent after it, never
    half deleted, and a kill during the deletion leaves only the ``retired``
    name behind. A missing folder is fine, and so is another process deleting
    it at the same time: one rename wins, the others find it gone. Give each
    caller its own ``retired`` name; a leftover of an earlier, killed attempt
    under the same name is removed first. A symlink is removed, not followed.
    """
    try:
        os.rename(folder, retired)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        _remove(retired)  # left by an earlier attempt that was killed
        try:
            os.rename(folder, retired)
        except (FileNotFoundError, NotADirectoryError):
            return False
    _remove(retired)
    return True


def _remove(path: str | os.PathLike[str]) -> None:
    # shutil costs an import the keeper and trial scripts mostly never need.
    import shutil

    if os.path.islink(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        # The folder is already out of sight under its retired name; what an
        # error leaves of it is garbage, never a checkpoint anyone reads.
        shutil.rmtree(path, ignore_errors=True)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes | Iterable[bytes], *, durable: bool = False
) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    The data goes to a temporary file next to ``path`` (unique to this call,
    so concurrent writers never share one), which then replaces ``path`` by
    rename. ``durable`` fsyncs the file before the rename. ``data`` may be
    an iterable of pieces, written as they come (gathered into writes of
    about ``_WRITE_BLOCK`` bytes), so that a large text need never be held whole.
    On any error, from the pieces too, the temporary file is removed and the
    error propagates; ``path`` is unchanged.
    """
    target = os.fspath(path)
    parent, name = os.path.split(target)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    pieces = (data,) if isinstance(data, bytes) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_pieces(fd, pieces)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_pieces(fd: int, pieces: Iterable[bytes]) -> None:
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        pending.append(piece)
        size += len(piece)
        if size >= _WRITE_BLOCK:
            _write_all(fd, b"".join(pending))  # one piece alone is not copied
            pending, size = [], 0
    _write_all(fd, b"".join(pending))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_tree(top: str | os.PathLike[str]) -> None:
    """Fsync every regular file and folder under ``top``, each folder after its content.

    Symlinks are not followed (their target lies elsewhere) and fifos or
    devices are skipped (opening a fifo would block).
    """
    for folder, _subfolders, files in os.walk(top, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(folder)


def fsync_directory(folder: str | os.PathLike[str]) -> None:
    """Fsync a folder, so that renames and new entries in it survive a crash."""
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_folder_name(number: int) -> str:
    """The name of published checkpoint ``number``: ``ckpt-00000042``."""
    return f"{CHECKPOINT_PREFIX}{number:0{CHECKPOINT_DIGITS}d}"


def temporary_checkpoint_name(number: int, pid: int, *, old: bool = False) -> str:
    """``.tmp-ckpt-<number>-<pid>``: a save in progress; with ``old``, a checkpoint being deleted.

    ``checkpoint.save()`` removes such folders once the process ``pid`` is gone.
    """
    name = f"{CHECKPOINT_TMP_PREFIX}{number:0{CHECKPOINT_DIGITS}d}-{pid}"
    return name + "-old" if old else name


def published_checkpoints(root: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """The published checkpoint folders in ``root`` as (number, path), oldest first.

    Only real folders named ``ckpt-<digits>`` count; anything else (temporary
    folders, files a script wrote straight into ``root``, symlinks) does not.
    A missing ``root`` has none.
    """
    found = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                match = _PUBLISHED.fullmatch(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    found.append((int(match.group(1)), entry.path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found.sort()
    return found


def wait_readable(fds: list[int], timeout: float) -> None:
    """Sleep until one of ``fds`` is readable or ``timeout`` seconds pass.

    ``poll`` rather than ``select``: a driver with more than 1,024 open
    descriptors (torch data loaders) gets descriptor numbers ``select``
    cannot take.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    try:
        poller.poll(max(0.0, timeout) * 1000.0)
    except InterruptedError:
        pass

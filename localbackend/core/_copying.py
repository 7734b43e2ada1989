"""How a checkpoint's files are copied: hard links where that is safe, fast copies elsewhere.

``TreeCopier.copy_file`` is the ``copy_function`` of the ``shutil.copytree``
that ``_storage.copy_checkpoint_folder`` runs into its staging folder:

- a file inside a published ``checkpoint.save()`` folder (``ckpt-<digits>``
  at the top of the checkpoint folder) is hard-linked, and the shared file
  loses its write permission. ``checkpoint.save()`` never writes a published
  folder again (a new checkpoint is a new folder; old ones are unlinked), so
  neither trial can change the other's copy through it; a script that opens
  such a file for writing gets ``PermissionError`` instead of writing through
  to the other trial (root ignores file modes: see the README);
- every other file (Syne Tune style files written straight into the folder,
  which scripts do rewrite in place) is copied for real: a reflink
  (``FICLONE``) where the filesystem has them, else ``os.copy_file_range``
  (in the kernel), else ``os.sendfile``;
- a link that the filesystem refuses (another filesystem, no hard links, too
  many links) falls back to a copy of that file, and after EXDEV, EPERM or
  ENOTSUP, of every later file too.

``make_durable`` then makes the staging folder survive a power cut in one
step: a single ``syncfs`` of the target filesystem rather than an fsync per
file when anything was copied, and an fsync of the new folders alone when
everything was linked (a published checkpoint's data was fsynced when it was
saved).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from pathlib import Path
from typing import Any

from .._files import fsync_directory, fsync_tree, published_checkpoints

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), share a whole file's blocks
_CHUNK = 1 << 30
# A link refused for one of these reasons would be refused for every file.
_NO_LINKS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}
_ONE_FILE = {errno.EMLINK}  # this file has too many links; others may still link
_NO_CLONES = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY,
              errno.EBADF, errno.ENOSYS, errno.EPERM}
_NO_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP,
             errno.EBADF, errno.EPERM}
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class TreeCopier:
    """Copies one checkpoint folder ``source``; counts what it linked, cloned and copied."""

    def __init__(self, source: str | os.PathLike[str]) -> None:
        self.source = os.path.abspath(source)
        # copytree joins each name onto the folder as it was given.
        self._given = os.path.join(os.fspath(source), "")
        self.shared = {os.path.basename(path) for _, path in published_checkpoints(source)}
        self.link = True
        self.clone = True
        self.copy_range = hasattr(os, "copy_file_range")
        self.linked = self.cloned = self.copied = 0

    def copy_file(self, src: str, dst: str) -> str:
        """``copytree``'s ``copy_function``: link, clone or copy ``src`` to ``dst``."""
        if self.link and self._is_shared(src) and self._link(src, dst):
            self.linked += 1
            return dst
        if not stat.S_ISREG(os.lstat(src).st_mode):
            import shutil

            shutil.copy2(src, dst)  # what copytree does: a fifo or device raises
            self.copied += 1
            return dst
        self._copy_data(src, dst)
        import shutil

        shutil.copystat(src, dst)
        return dst

    def _is_shared(self, src: str) -> bool:
        if src.startswith(self._given):  # as copytree passes it: no relpath per file
            relative = src[len(self._given):]
        else:
            relative = os.path.relpath(src, self.source)
        top = relative.split(os.sep, 1)[0]
        return top in self.shared and top != relative

    def _link(self, src: str, dst: str) -> bool:
        try:
            before = os.lstat(src)
            if not stat.S_ISREG(before.st_mode):
                return False
            os.link(src, dst, follow_symlinks=False)
        except OSError as err:
            if err.errno in _NO_LINKS:
                self.link = False
            elif err.errno not in _ONE_FILE:
                raise
            return False
        mode = stat.S_IMODE(before.st_mode)
        if mode & _WRITE_BITS:
            try:
                os.chmod(dst, mode & ~_WRITE_BITS)
            except OSError:
                # A file we cannot make read-only is not shared: copy it instead.
                os.unlink(dst)
                return False
        return True

    def _copy_data(self, src: str, dst: str) -> None:
        with open(src, "rb") as source:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                if self.clone and self._clone(source.fileno(), fd):
                    self.cloned += 1
                    return
                self._copy_bytes(source.fileno(), fd)
                self.copied += 1
            finally:
                os.close(fd)

    def _clone(self, source: int, target: int) -> bool:
        import fcntl

        try:
            fcntl.ioctl(target, FICLONE, source)
        except OSError as err:
            if err.errno not in _NO_CLONES:
                raise
            self.clone = False
            return False
        return True

    def _copy_bytes(self, source: int, target: int) -> None:
        offset = 0
        if self.copy_range:
            try:
                while True:
                    done = os.copy_file_range(source, target, _CHUNK)
                    if done == 0:
                        return
                    offset += done
            except OSError as err:
                if err.errno not in _NO_RANGE or offset:
                    raise
                self.copy_range = False
        while True:
            done = os.sendfile(target, source, offset, _CHUNK)
            if done == 0:
                return
            offset += done


def make_durable(folder: Path, copier: TreeCopier) -> None:
    """Make the copy in ``folder`` survive a crash, in as few flushes as it needs."""
    if copier.copied or copier.cloned:
        if sync_filesystem(folder):
            return
        fsync_tree(folder)
        return
    for parent, _subfolders, _files in os.walk(folder, topdown=False):
        fsync_directory(parent)


def sync_filesystem(folder: Path) -> bool:
    """``syncfs`` the filesystem holding ``folder``; False where the call is missing."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        return False
    import ctypes

    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            if err in (errno.ENOSYS, errno.EINVAL):
                return False
            raise OSError(err, os.strerror(err), str(folder))
    finally:
        os.close(fd)
    return True


@functools.lru_cache(maxsize=1)
def _libc_syncfs() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None

"""How a checkpoint's files are copied: hard links where that is safe, fast copies elsewhere.

``_storage.copy_checkpoint_folder`` copies a checkpoint folder into its
staging folder in two parts, both through one ``TreeCopier``:

- the published ``checkpoint.save()`` folders (``ckpt-<digits>`` at the top
  of the checkpoint folder) are linked by ``TreeCopier.link_published``: each
  file is hard-linked, and the shared file loses its write permission.
  ``checkpoint.save()`` never writes a published folder again (a new
  checkpoint is a new folder; old ones are unlinked), so neither trial can
  change the other's copy through it; a script that opens such a file for
  writing gets ``PermissionError`` instead of writing through to the other
  trial (root ignores file modes: see the README). The walk works relative to
  open folder descriptors, so that no path is joined in Python or looked up
  again by the kernel for each file: a checkpoint of thousands of small
  files costs about what its links alone cost;
- everything else (Syne Tune style files written straight into the folder,
  which scripts do rewrite in place) goes through the ``shutil.copytree``
  whose ``ignore`` is ``TreeCopier.ignore`` (which leaves out the published
  folders and unfinished saves) and whose ``copy_function`` is
  ``TreeCopier.copy_file``: each file is copied for real, a reflink
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

from .. import _protocol as proto
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
_DIRECTORY = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | os.O_NOFOLLOW


class TreeCopier:
    """Copies one checkpoint folder ``source``; counts what it linked, cloned and copied."""

    def __init__(self, source: str | os.PathLike[str]) -> None:
        self.source = os.path.abspath(source)
        self.shared = [os.path.basename(path) for _, path in published_checkpoints(source)]
        self.link = True
        self.clone = True
        self.copy_range = hasattr(os, "copy_file_range")
        self.linked = self.cloned = self.copied = 0
        # The folders of the copy, parents first, relative to the staging folder.
        self.folders: list[str] = []
        self._staging = ""
        # Each source file this copy made read-only, with the mode it had.
        self._made_read_only: list[tuple[str, int]] = []

    def ignore(self, folder: str, names: list[str]) -> set[str]:
        """``copytree``'s ``ignore``: unfinished saves, and the published folders it links.

        Both are at the top of the checkpoint folder; deeper down, a name that
        looks like an unfinished save is the script's own.
        """
        left_out: set[str] = set()
        folder = os.path.abspath(folder)
        if folder == self.source:
            left_out.update(name for name in names if name.startswith(proto.CHECKPOINT_TMP_PREFIX))
            left_out.update(self.shared)
        self.folders.append(os.path.relpath(folder, self.source))  # copytree makes it next
        return left_out

    def copy_file(self, src: str, dst: str) -> str:
        """``copytree``'s ``copy_function``: a real copy of ``src`` at ``dst``.

        A file that is gone by the time it is read was removed or renamed by
        the running trial after the folder was listed (a Syne Tune style
        script renames a temporary file over the old one): it is left out,
        as a listing made a moment later would have left it out. Its data,
        once the file is open, is what it held then.
        """
        import shutil

        try:
            if not stat.S_ISREG(os.lstat(src).st_mode):
                shutil.copy2(src, dst)  # what copytree does: a fifo or device raises
                self.copied += 1
                return dst
            self._copy_data(src, dst)
        except FileNotFoundError:
            if os.path.lexists(src):
                raise  # not the source that is missing
            return dst
        try:
            shutil.copystat(src, dst)
        except FileNotFoundError:
            if os.path.lexists(src):
                raise
        return dst

    def link_published(self, staging: str | os.PathLike[str]) -> None:
        """Link every published folder of the source into ``staging`` (which exists)."""
        staging = self._staging = os.fspath(staging)
        for name in self.shared:
            source = os.path.join(self.source, name)
            target = os.path.join(staging, name)
            source_fd = os.open(source, _DIRECTORY)
            try:
                os.mkdir(target, 0o700)
                self.folders.append(name)
                target_fd = os.open(target, _DIRECTORY)
                try:
                    self._link_folder(source_fd, target_fd, source, target)
                finally:
                    os.close(target_fd)
            finally:
                os.close(source_fd)
            import shutil

            shutil.copystat(source, target)  # what copytree does for each folder

    def _link_folder(self, source_fd: int, target_fd: int, source: str, target: str) -> None:
        """Link (or, where refused, copy) what the folder ``source_fd`` holds into ``target_fd``."""
        with os.scandir(source_fd) as entries:
            for entry in entries:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    self._link_subfolder(source_fd, target_fd, name, source, target)
                elif entry.is_symlink():
                    _copy_symlink(os.path.join(source, name), os.path.join(target, name))
                elif not (self.link and self._link(source_fd, target_fd, source, name)):
                    self.copy_file(os.path.join(source, name), os.path.join(target, name))

    def _link_subfolder(
        self, source_fd: int, target_fd: int, name: str, source: str, target: str
    ) -> None:
        os.mkdir(name, 0o700, dir_fd=target_fd)
        self.folders.append(os.path.relpath(os.path.join(target, name), self._staging))
        inner_source = os.open(name, _DIRECTORY, dir_fd=source_fd)
        try:
            inner_target = os.open(name, _DIRECTORY, dir_fd=target_fd)
            try:
                self._link_folder(inner_source, inner_target, os.path.join(source, name),
                                  os.path.join(target, name))
            finally:
                os.close(inner_target)
        finally:
            os.close(inner_source)
        import shutil

        shutil.copystat(os.path.join(source, name), os.path.join(target, name))

    def _link(self, source_fd: int, target_fd: int, source: str, name: str) -> bool:
        """Hard-link one regular file and take away its write permission; False to copy it."""
        try:
            before = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
            if not stat.S_ISREG(before.st_mode):
                return False  # copied as copytree copies it (a fifo or device raises)
            os.link(name, name, src_dir_fd=source_fd, dst_dir_fd=target_fd,
                    follow_symlinks=False)
        except OSError as err:
            if err.errno in _NO_LINKS:
                self.link = False
            elif err.errno not in _ONE_FILE:
                raise
            return False
        mode = stat.S_IMODE(before.st_mode)
        if mode & _WRITE_BITS:
            try:
                os.chmod(name, mode & ~_WRITE_BITS, dir_fd=target_fd)
            except OSError:
                # A file we cannot make read-only is not shared: copy it instead.
                os.unlink(name, dir_fd=target_fd)
                return False
            self._made_read_only.append((os.path.join(source, name), mode))
        self.linked += 1
        return True

    def give_back_write_permission(self) -> None:
        """Undo the read-only modes this copy set, for a copy that failed and is discarded.

        Only files this copy made read-only are touched: one already shared by
        an earlier copy had no write permission to give back.
        """
        for path, mode in self._made_read_only:
            try:
                os.chmod(path, mode)
            except OSError:
                pass  # gone with a pruned checkpoint
        self._made_read_only.clear()

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


def _copy_symlink(source: str, target: str) -> None:
    """A symlink copied as a link, never followed, as ``copytree(symlinks=True)`` copies it."""
    import shutil

    os.symlink(os.readlink(source), target)
    shutil.copystat(source, target, follow_symlinks=False)


def make_durable(folder: Path, copier: TreeCopier) -> None:
    """Make the copy in ``folder`` survive a crash, in as few flushes as it needs."""
    if copier.copied or copier.cloned:
        if sync_filesystem(folder):
            return
        fsync_tree(folder)
        return
    for relative in reversed(copier.folders):  # each folder after the folders in it
        fsync_directory(os.path.join(folder, relative))


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

"""Files the driver writes: atomic JSON, and checkpoint copies and deletes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .. import _protocol as proto
from .._files import atomic_write_bytes as atomic_write_bytes
from .._files import (
    checkpoint_folder_name,
    delete_folder_atomically,
    fsync_directory,
    published_checkpoints,
    temporary_checkpoint_name,
)
from .._paths import TrialPaths

if TYPE_CHECKING:
    from ._copying import TreeCopier


class CheckpointFolderError(OSError):
    """A checkpoint folder that ``copy_checkpoint_folder`` refuses to copy from or onto.

    Raised before anything is changed; ``folder`` is the folder at fault.
    """

    def __init__(self, message: str, folder: Path) -> None:
        super().__init__(message)
        self.folder = folder

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (str(self), self.folder)


class SymlinkedCheckpointError(CheckpointFolderError):
    """The checkpoint folder is a symbolic link; copying through it could reach anywhere."""


class CheckpointSwapUnsupportedError(CheckpointFolderError):
    """The target cannot be replaced in one step on this filesystem, given what it holds."""


class CheckpointNotDurableError(CheckpointFolderError):
    """The copy is in place (``folder``), but syncing it to disk failed afterwards."""


_JSON_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def atomic_write_json(
    path: Path, obj: Any, *, durable: bool = False, split: str | None = None
) -> None:
    """Write ``obj`` as indented JSON, atomically (see ``atomic_write_bytes``).

    With ``split``, the mapping ``obj[split]`` (the snapshot's trials) is
    encoded one entry at a time, and each piece written as it is made: the
    file is the same, but its whole text is never held at once.
    """
    atomic_write_bytes(path, _json_pieces(obj, split), durable=durable)


def _json_pieces(obj: Any, split: str | None) -> Iterator[bytes]:
    """``orjson.dumps(obj, option=_JSON_OPTIONS)``, with ``obj[split]`` a piece per entry.

    orjson indents a value nested ``depth`` levels deep as it would alone,
    each line after the first shifted by two spaces a level; no string in
    its output holds a raw newline, so the shift is a plain replacement.
    """
    inner = obj.get(split) if split is not None and isinstance(obj, dict) else None
    if not (
        isinstance(inner, dict) and inner
        and all(isinstance(key, str) for key in obj)
        and all(isinstance(key, (str, int)) and not isinstance(key, bool) for key in inner)
    ):
        yield orjson.dumps(obj, option=_JSON_OPTIONS)
        return
    for index, (key, value) in enumerate(obj.items()):
        yield b"{\n  " if index == 0 else b",\n  "
        yield orjson.dumps(key) + b": "
        if key != split:
            yield orjson.dumps(value, option=_JSON_OPTIONS).replace(b"\n", b"\n  ")
            continue
        for entry, (name, item) in enumerate(inner.items()):
            yield (b"{\n    " if entry == 0 else b",\n    ") + orjson.dumps(str(name)) + b": "
            yield orjson.dumps(item, option=_JSON_OPTIONS).replace(b"\n", b"\n    ")
        yield b"\n  }"
    yield b"\n}"


def has_checkpoint(paths: TrialPaths, *, unfinished: bool = False) -> bool:
    """Whether the trial's checkpoint folder holds anything; unfinished saves too, if asked."""
    try:
        with os.scandir(paths.checkpoints) as entries:
            return any(unfinished or not e.name.startswith(proto.CHECKPOINT_TMP_PREFIX)
                       for e in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False


def prune_checkpoints(paths: TrialPaths, keep: int) -> None:
    """Once no run of the trial is alive: its newest ``keep`` published checkpoints, no more.

    A run killed between a save's publish and its pruning left one
    checkpoint too many, and one killed inside a save left its unfinished
    folder, which no later save of that run will remove. With no run alive,
    nobody writes there.
    """
    published = published_checkpoints(paths.checkpoints)
    for _, folder in published[: max(len(published) - keep, 0)]:
        delete_folder_atomically(Path(folder), paths.checkpoint_retired())
    try:
        with os.scandir(paths.checkpoints) as entries:
            unfinished = [Path(e.path) for e in entries
                          if e.name.startswith(proto.CHECKPOINT_TMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return
    for save in unfinished:
        _discard(save)


def copy_checkpoint_folder(src: TrialPaths, tgt: TrialPaths) -> None:
    """Copy ``src``'s checkpoint folder over ``tgt``'s, all or nothing.

    The copy is assembled (and made durable) under a staging name first; until
    then the target is untouched, and on any error the staging folder is
    removed. Then the target holds its old checkpoint or the new one at every
    moment, whatever fails or is killed when:

    - without a target folder, the copy is renamed into place;
    - otherwise the two folders are swapped in one atomic
      ``renameat2(RENAME_EXCHANGE)``;
    - where the filesystem lacks that, the target folder is never moved
      away: the copied ``checkpoint.save()`` folders are renamed into it
      under numbers above its own, the newest first, and that one rename is
      the switch (``checkpoint.latest()`` reads the highest number). Only
      then are the old ones deleted. Files outside such folders cannot be
      switched all at once this way, so a copy that involves them is
      refused with ``CheckpointSwapUnsupportedError``, the target unchanged.

    Files of published ``checkpoint.save()`` folders, which are never written
    again, are hard-linked and made read-only; every other file is copied, so
    a trial rewriting one in place cannot change the source (see
    ``_copying``). Symlinks inside are copied as links, never followed. A
    checkpoint folder that is itself a symlink is refused with
    ``SymlinkedCheckpointError``. A copy that fails gives the source's files
    back the write permission it took. A failure to sync the target's folder
    once the copy is switched in raises ``CheckpointNotDurableError``: the
    copy is in place. Staging and retired folders that a copy or delete
    killed halfway left in the target's folder are removed first.
    """
    if src.checkpoints.is_symlink():
        raise _symlink_error(src.checkpoints, "source")
    tgt.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    remove_leftovers(tgt)
    staging = tgt.checkpoint_staging()
    from ._copying import make_durable

    try:
        copier = _assemble(src.checkpoints, staging)
        try:
            make_durable(staging, copier)
            if not (tgt.checkpoints.exists() or tgt.checkpoints.is_symlink()):
                os.replace(staging, tgt.checkpoints)
            elif _exchange(staging, tgt.checkpoints):
                pass  # ``staging`` now holds the old checkpoint; removed below
            else:
                _publish_into(staging, tgt.checkpoints)
        except CheckpointNotDurableError:
            raise  # switched in: its files stay shared, read-only
        except BaseException:
            copier.give_back_write_permission()
            raise
        _sync_switched(tgt.root, tgt.checkpoints)
    finally:
        _discard(staging)


def _assemble(source: Path, staging: Path) -> TreeCopier:
    """Copy the checkpoint folder ``source`` into ``staging``, which must not exist yet.

    A published checkpoint may be pruned by the running source trial while
    it is copied: the copy is then made again, from the newer state. A
    failed attempt leaves the source's files as writable as they were.
    """
    import shutil  # copies only: off the driver's import path

    from ._copying import TreeCopier

    attempts = 0
    while True:
        copier = TreeCopier(source)
        try:
            shutil.copytree(
                source, staging, symlinks=True, ignore=copier.ignore,
                copy_function=copier.copy_file,
            )
            copier.link_published(staging)
            return copier
        except BaseException as err:
            copier.give_back_write_permission()
            attempts += 1
            if attempts == 3 or not isinstance(err, (FileNotFoundError, shutil.Error)):
                raise
        shutil.rmtree(staging, ignore_errors=True)


def _sync_switched(folder: Path, checkpoints: Path) -> None:
    """Fsync ``folder`` after the copy was switched into it; a failure now says so."""
    try:
        fsync_directory(folder)
    except OSError as err:
        raise CheckpointNotDurableError(
            f"the copy is in place in {checkpoints}, but syncing {folder} to disk failed "
            f"({err}): it may not survive a power cut", checkpoints,
        ) from err


def remove_leftovers(paths: TrialPaths) -> None:
    """Remove the staging and retired folders of copies and deletes killed halfway.

    Only the driver that holds the experiment's lock copies into a trial
    folder or deletes its checkpoints here, one call at a time, and a keeper
    deletes them only while it supervises one of the trial's runs, when
    neither is allowed: whatever such a folder holds, nobody is writing it.
    A copy or delete sweeps its trial's folder first, and a restore sweeps
    every trial of which no keeper still lives (``_restore``).
    """
    for leftover in paths.checkpoint_leftovers():
        _discard(leftover)


def _publish_into(staging: Path, target: Path) -> None:
    """Without RENAME_EXCHANGE: switch ``target`` to the copy in ``staging`` in one rename.

    ``target`` is never moved or emptied. The copy's checkpoint folders enter
    it under numbers above every number it has, the newest first: that first
    rename makes the copy the latest checkpoint, and is the only step whose
    failure counts. Before it, a failure leaves ``target`` as it was; after
    it, the target holds the new latest checkpoint whatever else fails, so
    moving the older copies in and deleting the old checkpoints is tidying up,
    which the target's next ``checkpoint.save()`` finishes if it is cut short.
    """
    if target.is_symlink():
        raise _symlink_error(target, "target")
    with os.scandir(target) as entries:
        empty = next(entries, None) is None
    if empty:
        os.replace(staging, target)  # an empty folder is replaced in one rename
        return
    old = published_checkpoints(target)
    new = published_checkpoints(staging)
    if not new and not _loose_entries(staging, new):
        raise CheckpointFolderError(
            f"the copy for {target} holds no checkpoint (the source's was emptied meanwhile)",
            target,
        )
    for folder, published, role in ((target, old, "target"), (staging, new, "copied")):
        loose = _loose_entries(folder, published)
        if loose:
            shown = ", ".join(repr(name) for name in loose[:3])
            raise CheckpointSwapUnsupportedError(
                f"{target} cannot be replaced in one step: its filesystem does not support "
                f"renameat2(RENAME_EXCHANGE), and the {role} checkpoint holds entries other "
                f"than checkpoint.save() folders ({shown}{', ...' if len(loose) > 3 else ''}), "
                "which cannot be switched all at once",
                target,
            )
    base = old[-1][0] if old else 0
    numbered = [(base + index, path) for index, (_, path) in enumerate(new, start=1)]
    newest_number, newest = numbered[-1]
    os.rename(newest, target / checkpoint_folder_name(newest_number))  # the switch
    _sync_switched(target, target)
    for number, path in reversed(numbered[:-1]):
        try:
            os.rename(path, target / checkpoint_folder_name(number))
        except OSError:
            break  # the copy is in place; only its older checkpoints are missing
    pid = os.getpid()
    for number, path in old:
        # Each is renamed to a name that checkpoint.save() removes once we
        # are gone, in case we are killed in the middle of deleting it.
        retired = target / temporary_checkpoint_name(number, pid, old=True)
        try:
            delete_folder_atomically(path, retired)
        except OSError:
            continue  # older than the copy: checkpoint.latest() never returns it


def _loose_entries(folder: Path, published: list[tuple[int, str]]) -> list[str]:
    """Entries of ``folder`` other than published checkpoints and unfinished saves."""
    names = {os.path.basename(path) for _, path in published}
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.name not in names and not entry.name.startswith(proto.CHECKPOINT_TMP_PREFIX)
        )


def _symlink_error(folder: Path, role: str) -> SymlinkedCheckpointError:
    try:
        points_to = f" (to {os.readlink(folder)})"
    except OSError:
        points_to = ""
    return SymlinkedCheckpointError(
        f"the {role} checkpoint folder {folder} is a symbolic link{points_to}, not a folder; "
        "checkpoints are never copied through a link, which could reach outside the trial",
        folder,
    )


def _discard(path: Path) -> None:
    """Remove a staging folder, or the symlink an exchange may have left in its place."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


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
    """Remove a trial's checkpoints; a missing folder is fine (see ``delete_folder_atomically``)."""
    remove_leftovers(paths)
    delete_folder_atomically(paths.checkpoints, paths.checkpoint_retired())

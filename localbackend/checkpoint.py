"""Crash-safe checkpoints for trial scripts.

A trial's checkpoint folder holds published checkpoints as sub-folders
``ckpt-00000001``, ``ckpt-00000002``, ... A checkpoint is written into a
temporary folder ``.tmp-ckpt-<number>-<pid>``, every file in it is fsynced,
and only then is the folder renamed to its ``ckpt-`` name. A rename is atomic,
so a process killed at any moment leaves either the old latest checkpoint or
the new one, never a torn one::

    from localbackend import checkpoint

    folder = checkpoint.latest()
    if folder is not None:
        state = load(folder / "model.bin")
    ...
    with checkpoint.save() as folder:
        write(folder / "model.bin")

Scripts that write files straight into the checkpoint folder, as Syne Tune
scripts do, keep working: those files are never read or deleted here.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from localbackend._errors import LocalBackendError
from localbackend._files import (
    checkpoint_folder_name,
    delete_folder_atomically,
    fsync_directory,
    fsync_tree,
    published_checkpoints,
    temporary_checkpoint_name,
)
from localbackend._protocol import (
    CHECKPOINT_TMP_PREFIX,
    ENV_CHECKPOINT_DIR,
    ENV_KEEP_CHECKPOINTS,
    ST_CHECKPOINT_DIR_ARG,
)

__all__ = ["CheckpointError", "directory", "latest", "load_json", "save", "save_json"]

# Temporary folders: ".tmp-ckpt-<number>-<pid>" for a save in progress and
# ".tmp-ckpt-<number>-<pid>-old" for an old checkpoint being deleted.
_TEMPORARY = re.compile(re.escape(CHECKPOINT_TMP_PREFIX) + r"(\d+)-(\d+)(-old)?")
# Temporary folders that saves of this process are writing right now.
_active_temporary: set[str] = set()
_active_lock = threading.Lock()


class CheckpointError(LocalBackendError, ValueError):
    """A checkpoint folder cannot be found or a checkpoint request is invalid."""

    def __init__(self, message: str, directory: str | None = None) -> None:
        super().__init__(message)
        self.directory = directory


def directory(directory: str | os.PathLike[str] | None = None) -> Path:
    """The trial's checkpoint folder.

    Taken from, in order: the ``directory`` argument, the environment variable
    ``LOCALBACKEND_CHECKPOINT_DIR``, and ``--st_checkpoint_dir`` on the
    command line (as Syne Tune passes it). Raises ``CheckpointError`` if none
    is given. The folder need not exist yet.
    """
    if directory is not None:
        return Path(directory)
    from_env = os.environ.get(ENV_CHECKPOINT_DIR)
    if from_env:
        return Path(from_env)
    from_argv = _argv_option(sys.argv[1:], "--" + ST_CHECKPOINT_DIR_ARG)
    if from_argv:
        return Path(from_argv)
    raise CheckpointError(
        "No checkpoint folder is known: the environment variable "
        f"{ENV_CHECKPOINT_DIR} is not set and there is no --{ST_CHECKPOINT_DIR_ARG} "
        "argument. Run the script under localbackend (or Syne Tune), or pass "
        "directory=... explicitly."
    )


def latest(directory: str | os.PathLike[str] | None = None) -> Path | None:
    """The newest complete checkpoint folder, or None if there is none yet.

    Only folders published by ``save()`` count; temporary folders and any
    other files in the checkpoint folder are ignored.
    """
    newest = _published(_resolve(directory))
    return newest[-1][1] if newest else None


def save(
    directory: str | os.PathLike[str] | None = None, keep: int | None = None
) -> CheckpointSave:
    """Write a new checkpoint: ``with checkpoint.save() as folder: ...``.

    Write the checkpoint's files into ``folder``, a fresh temporary folder.
    When the ``with`` block ends normally, the files are fsynced and the folder
    is published, atomically, as the new latest checkpoint; then all but the
    newest ``keep`` checkpoints are deleted, along with temporary folders left
    by saves that were killed. If the block raises, the temporary folder is
    removed and the exception propagates; the previous checkpoint stays latest.

    ``keep`` defaults to 2. A backend with ``keep_checkpoints=K`` makes K the
    default and the most any save keeps.
    """
    policy = _keep_policy()
    if keep is None:
        keep = policy or 2
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(
            f"keep={keep!r} is not valid: it is how many checkpoints to keep, an "
            "integer of at least 1 (the newest checkpoint is always kept)."
        )
    return CheckpointSave(_resolve(directory), min(keep, policy) if policy else keep)


def _keep_policy() -> int | None:
    """The backend's ``keep_checkpoints``, from the trial's environment."""
    text = os.environ.get(ENV_KEEP_CHECKPOINTS, "")
    return int(text) if text.isdigit() and int(text) >= 1 else None


def load_json(name: str = "state.json", directory: str | os.PathLike[str] | None = None) -> Any:
    """The JSON file ``name`` of the latest checkpoint, or None if there is none."""
    _check_file_name(name)
    folder = latest(directory)
    if folder is None:
        return None
    try:
        content = (folder / name).read_bytes()
    except FileNotFoundError:
        return None
    return orjson.loads(content)


def save_json(
    obj: Any,
    name: str = "state.json",
    directory: str | os.PathLike[str] | None = None,
    keep: int | None = None,
) -> Path:
    """Save ``obj`` as the JSON file ``name`` of a new checkpoint; returns its folder."""
    _check_file_name(name)
    content = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    pending = save(directory, keep=keep)
    with pending as folder:
        (folder / name).write_bytes(content)
    assert pending.published is not None
    return pending.published


class CheckpointSave:
    """The context manager ``save()`` returns; ``published`` is set on success."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep
        self.published: Path | None = None
        self._temporary: Path | None = None
        self._number = 0

    def __enter__(self) -> Path:
        if self._temporary is not None:
            raise CheckpointError("A checkpoint.save() context can be entered only once.")
        self.root.mkdir(parents=True, exist_ok=True)
        number = _next_number(self.root)
        with _active_lock:
            while _temporary_name(number, os.getpid()) in _active_temporary:
                number += 1  # another thread of this process is saving this number
            temporary = self.root / _temporary_name(number, os.getpid())
            _active_temporary.add(temporary.name)
        try:
            if temporary.exists():
                # Left by an earlier failed save of a process with our pid.
                shutil.rmtree(temporary)
            temporary.mkdir()
        except BaseException:
            _active_temporary.discard(temporary.name)
            raise
        self._temporary = temporary
        self._number = number
        return temporary

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        temporary = self._temporary
        assert temporary is not None
        try:
            if exc_type is not None:
                return  # the finally block removes the unfinished checkpoint
            fsync_tree(temporary)
            self.published = _publish(temporary, self.root, self._number)
        finally:
            if self.published is None:
                shutil.rmtree(temporary, ignore_errors=True)
            _active_temporary.discard(temporary.name)
        try:
            _delete_old(self.root, self.keep)
        except OSError as err:
            # The new checkpoint is safely published; failing to tidy up old
            # ones must not make the caller believe the save failed.
            warnings.warn(
                f"Checkpoint {self.published} was saved, but deleting older checkpoints "
                f"in {self.root} failed: {err}. Check the folder's permissions.",
                stacklevel=2,
            )


def _resolve(directory_arg: str | os.PathLike[str] | None) -> Path:
    # The public functions' ``directory`` argument hides the function of that
    # name, so they resolve the folder through here.
    from localbackend._report import enable_stack_dumps

    enable_stack_dumps()
    return directory(directory_arg)


def _temporary_name(number: int, pid: int) -> str:
    return temporary_checkpoint_name(number, pid)


def _argv_option(argv: list[str], option: str) -> str | None:
    """Value of ``option`` given as ``option VALUE`` or ``option=VALUE``; the last wins."""
    value = None
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(option + "="):
            value = arg[len(option) + 1 :]
    return value


def _check_file_name(name: str) -> None:
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise CheckpointError(
            f"name={name!r} is not a plain file name; pass a name such as 'state.json' "
            "without folders."
        )


def _published(root: Path) -> list[tuple[int, Path]]:
    """Published checkpoints in ``root``, oldest first."""
    return [(number, Path(path)) for number, path in published_checkpoints(root)]


def _next_number(root: Path) -> int:
    published = _published(root)
    return published[-1][0] + 1 if published else 1


def _publish(temporary: Path, root: Path, number: int) -> Path:
    """Rename ``temporary`` to the first free ``ckpt-`` name from ``number`` on."""
    while True:
        # Another save (another thread, or a process sharing the folder) may
        # have published this number meanwhile; then take the next one.
        number = max(number, _next_number(root))
        final = root / checkpoint_folder_name(number)
        try:
            # Renaming onto a non-empty folder fails instead of replacing it,
            # so a checkpoint published meanwhile is never lost.
            os.rename(temporary, final)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                number += 1
                continue
            raise
        fsync_directory(root)
        return final


def _delete_old(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and stale temporary folders."""
    published = _published(root)
    for number, folder in published[: max(len(published) - keep, 0)]:
        # Rename first so that a kill during rmtree leaves a temporary folder,
        # which a later save removes, and never a half-deleted ``ckpt-``.
        # (A missing folder means someone else deleted it already.)
        delete_folder_atomically(
            folder, root / temporary_checkpoint_name(number, os.getpid(), old=True)
        )
    with os.scandir(root) as entries:
        stale = [
            entry.path
            for entry in entries
            if (match := _TEMPORARY.fullmatch(entry.name))
            and entry.is_dir(follow_symlinks=False)
            and _is_stale(entry.name, match)
        ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def _is_stale(name: str, match: re.Match[str]) -> bool:
    pid = int(match.group(2))
    if pid == os.getpid():
        return name not in _active_temporary
    return not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    # A reused pid makes a dead saver look alive; its folder then waits for a
    # later save, which is safe, only late.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

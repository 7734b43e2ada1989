"""Drivers for 5. checkpoint copy.

The orchestrator writes one checkpoint (``ckpt-00000001/``: one large file
and many small ones) under ``params["source"]``. Each driver moves it into a
finished trial's checkpoint folder with a rename (free, same filesystem),
times ``rounds`` copies to another trial, and moves it back. Before each
timed copy, ``os.sync()`` (untimed) writes back what the previous copy left
dirty, so every copy starts from the same clean page cache.

* floor: ``shutil.copytree``; also ``copytree`` plus an fsync of every file
  and folder, or plus one ``syncfs`` of the filesystem (what a copy that
  survives a power cut costs, two ways), and a tree of hard links (what a
  copy of immutable files could cost).
* localbackend: ``copy_checkpoint(0, new_trial_id())``, twice: of the
  checkpoint as a published ``checkpoint.save()`` folder (linked), and of
  the same files written loose into the checkpoint folder, Syne Tune style
  (copied).
* Syne Tune: ``copy_checkpoint(0, 1)``.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

from bench.drivers._common import make_localbackend, make_syne, scratch, wait_until

CHECKPOINT = "ckpt-00000001"


def _timed(copy: Callable[[], object], remove: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        os.sync()
        start = time.perf_counter()
        copy()
        samples.append(time.perf_counter() - start)
        remove()
    return samples


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link_tree(source: str, target: str) -> None:
    shutil.copytree(source, target, copy_function=os.link)


def _syncfs(folder: str) -> None:
    import ctypes

    fd = os.open(folder, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed", folder)
    finally:
        os.close(fd)


class _Adopted:
    """Moves the prepared checkpoint into ``folder`` and back, by rename.

    ``loose`` makes its files the checkpoint folder's own, as a Syne Tune
    script writes them, instead of a published ``checkpoint.save()`` folder.
    """

    def __init__(self, source: str, folder: str, loose: bool = False) -> None:
        self.source = os.path.join(source, CHECKPOINT)
        self.inside = folder if loose else os.path.join(folder, CHECKPOINT)
        if loose and os.path.isdir(folder):
            os.rmdir(folder)  # the finished trial's empty checkpoint folder
        os.makedirs(os.path.dirname(self.inside), exist_ok=True)

    def __enter__(self) -> _Adopted:
        os.rename(self.source, self.inside)
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.rename(self.inside, self.source)


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    source = os.path.join(params["source"], CHECKPOINT)
    target = scratch(params, "copy")
    rounds = int(params["rounds"])

    def remove() -> None:
        shutil.rmtree(target)

    def copy_and_fsync() -> None:
        shutil.copytree(source, target)
        _fsync_tree(target)
        fd = os.open(os.path.dirname(target), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def copy_and_syncfs() -> None:
        shutil.copytree(source, target)
        _syncfs(target)

    return {
        "copytree": _timed(lambda: shutil.copytree(source, target), remove, rounds),
        "copytree_fsync": _timed(copy_and_fsync, remove, rounds),
        "copytree_syncfs": _timed(copy_and_syncfs, remove, rounds),
        "hardlinks": _timed(lambda: _link_tree(source, target), remove, rounds),
    }


def _finished_trial(backend: Any) -> int:
    trial_id = int(backend.start_trial({"index": 0}).trial_id)
    wait_until(lambda: all(t != trial_id for t, _ in backend.busy_trial_ids()),
               timeout=60, what="the source trial to finish", interval=0.01)
    backend.fetch_status_results([trial_id])
    return trial_id


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_localbackend(params, "trivial")
    try:
        source_id = _finished_trial(backend)
        folder = os.path.join(str(backend.trial_dir(source_id)), "checkpoints")
        target = backend.new_trial_id()
        samples: dict[str, list[float]] = {}
        for key, loose in (("copy", False), ("copy_loose", True)):
            with _Adopted(params["source"], folder, loose=loose):
                samples[key] = _timed(lambda: backend.copy_checkpoint(source_id, target),
                                      lambda: backend.delete_checkpoint(target),
                                      int(params["rounds"]))
    finally:
        backend.close()
    return samples


def run_syne(params: dict[str, Any]) -> dict[str, Any]:
    backend = make_syne(params, "trivial")
    try:
        source_id = _finished_trial(backend)
        with _Adopted(params["source"], str(backend.checkpoint_trial_path(source_id))):
            samples = _timed(lambda: backend.copy_checkpoint(source_id, source_id + 1),
                             lambda: backend.delete_checkpoint(source_id + 1),
                             int(params["rounds"]))
    finally:
        for proc in backend.trial_subprocess.values():
            proc.wait()
    return {"copy": samples}

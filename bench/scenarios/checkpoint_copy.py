"""Report for 5. checkpoint copy; the drivers are ``bench.drivers.checkpoint_copy``.

``prepare`` writes the checkpoint once per bench run and says what the
filesystem allows; ``cleanup`` removes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from bench._env import filesystem_of
from bench._plan import FLOOR, LOCALBACKEND, Job, JobResult, MiB, Profile, errors_of, results_for
from bench._stats import (
    MEBIBYTES,
    SECONDS,
    Check,
    Section,
    Summary,
    Table,
    format_ratio,
    format_summary,
    ratio,
)
from bench.drivers.checkpoint_copy import CHECKPOINT

FICLONE = 0x40049409  # from linux/fs.h: clone a whole file (a reflink)
SYNE = "syne-tune 0.16"
ROWS = {
    "copytree": "floor: shutil.copytree",
    "copytree_fsync": "floor: copytree + fsync of every file",
    "copytree_syncfs": "floor: copytree + one syncfs",
    "hardlinks": "floor: tree of hard links",
}


def _write_checkpoint(root: Path, profile: Profile) -> int:
    folder = root / CHECKPOINT
    (folder / "shards").mkdir(parents=True)
    block = os.urandom(MiB)
    written = 0
    with open(folder / "model.bin", "wb") as large:
        while written < profile.checkpoint_large_bytes:
            chunk = block[: min(MiB, profile.checkpoint_large_bytes - written)]
            large.write(chunk)
            written += len(chunk)
    small = block[: profile.checkpoint_small_bytes]
    for index in range(profile.checkpoint_small_files):
        (folder / "shards" / f"shard-{index:05d}.bin").write_bytes(small)
        written += len(small)
    return written


def _reflink_support(folder: Path) -> str:
    source, clone = folder / "reflink-probe", folder / "reflink-probe-clone"
    source.write_bytes(b"x" * 4096)
    try:
        with open(source, "rb") as src, open(clone, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return "supported"
    except OSError as err:
        return f"not supported ({errno.errorcode.get(err.errno or 0, err.errno)})"
    finally:
        source.unlink()
        clone.unlink(missing_ok=True)


def prepare(profile: Profile, run_dir: Path, contenders: list[str]) -> dict[str, Any]:
    source = run_dir / "checkpoint-source"
    source.mkdir()
    size = _write_checkpoint(source, profile)
    os.sync()
    return {"source": str(source), "bytes": size, "files": profile.checkpoint_small_files + 1,
            "filesystem": filesystem_of(source), "reflink": _reflink_support(run_dir)}


def cleanup(shared: dict[str, Any]) -> None:
    if "source" in shared:
        shutil.rmtree(shared["source"], ignore_errors=True)


def jobs(profile: Profile, contenders: list[str]) -> list[Job]:
    rows = {"floor": FLOOR, "localbackend": LOCALBACKEND, "syne": SYNE}
    return [Job("checkpoint_copy", c, rows[c], 0, {"rounds": profile.checkpoint_rounds})
            for c in rows if c in contenders]


def _samples(results: list[JobResult], label: str, key: str) -> Summary | None:
    values: list[float] = []
    for r in results_for(results, label):
        assert r.measurements is not None
        values += r.measurements.get(key, [])
    return Summary.of(values)


def summarize(results: list[JobResult], profile: Profile) -> Section:
    params = results[0].job.params if results else {}
    size = params.get("bytes", profile.checkpoint_large_bytes
                      + profile.checkpoint_small_files * profile.checkpoint_small_bytes)
    section = Section(
        f"5. Checkpoint copy: {MEBIBYTES.show(size)} in "
        f"{params.get('files', profile.checkpoint_small_files + 1)} files",
        f"One checkpoint of one {MEBIBYTES.show(profile.checkpoint_large_bytes)} file and "
        f"{profile.checkpoint_small_files} files of "
        f"{profile.checkpoint_small_bytes // 1024} KiB, copied to another trial; median "
        f"[min-max] over {profile.checkpoint_rounds} copies, each after an untimed "
        f"`os.sync()`. The source is in the page cache, as a checkpoint just written is.",
    )
    table = Table(["copy", "time", "throughput", "/ copytree"])
    rows: list[tuple[str, Summary | None]] = []
    for key, name in ROWS.items():
        rows.append((name, _samples(results, FLOOR, key)))
    published = _samples(results, LOCALBACKEND, "copy")
    loose = _samples(results, LOCALBACKEND, "copy_loose")
    rows.append((f"{LOCALBACKEND}: copy_checkpoint of a checkpoint.save() folder (linked)",
                 published))
    rows.append((f"{LOCALBACKEND}: copy_checkpoint of loose files, Syne Tune style (copied)",
                 loose))
    rows.append((f"{SYNE}: copy_checkpoint (copytree)", _samples(results, SYNE, "copy")))
    baseline = rows[0][1]
    for name, value in rows:
        speed = None if value is None else Summary.of([size / value.median])
        table.add(name, format_summary(value, SECONDS),
                  "-" if speed is None else f"{MEBIBYTES.show(speed.median)}/s",
                  format_ratio(ratio(value, baseline)))
    section.tables.append(("", table))
    for what, value, target in (
        ("a checkpoint.save() folder (hard links)", published, 0.05),
        ("loose files (a real, durable copy)", loose, 1.3),
    ):
        measured = ratio(value, baseline)
        section.checks.append(Check(
            f"copy_checkpoint of {what} ≤ {target:g}x shutil.copytree",
            "-" if measured is None else f"{format_ratio(measured)} copytree",
            None if measured is None else measured <= target,
        ))
    section.notes.append(
        f"What the filesystem allows: {params.get('filesystem', 'unknown')}; reflinks "
        f"(`FICLONE`) {params.get('reflink', 'not probed')}; hard links work within one "
        f"filesystem. `shutil.copytree` copies file data inside the kernel (`sendfile`), so "
        f"it does not pass through Python, but it still writes every byte, and only into the "
        f"page cache: a copy that must survive a power cut also waits for the disk (the "
        f"fsync and syncfs rows)."
    )
    section.notes.append(
        "localbackend's `copy_checkpoint` assembles the copy in a staging folder and swaps it "
        "in atomically. Files of published `checkpoint.save()` folders, which are never "
        "written again, are hard-linked and made read-only, and only the new folders are "
        "fsynced (the data was made durable when it was saved): compare with the hard-link "
        "row. Loose files, which scripts do rewrite in place, are copied (a reflink where the "
        "filesystem has them, else `copy_file_range`) and made durable by one `syncfs` of the "
        "target filesystem instead of an fsync per file: compare with the copytree + syncfs "
        "row. On a filesystem without reflinks that copy cannot beat the disk's write speed."
    )
    section.errors += errors_of(results)
    return section

"""copy_checkpoint shares published checkpoints by hard link, and copies everything else.

Real files and real writer processes: a trial that rewrites a copied file in
place (truncating ``open("w")``, append, ``r+b``) never changes the other
trial's checkpoint, in either direction. A published file is shared and made
read-only, so such a rewrite fails loudly instead of writing through; as root
(which ignores file modes) the writer runs as an unprivileged user that owns
the files, as a trial of that user would.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from localbackend import LocalBackend, Status, checkpoint
from localbackend._paths import TrialPaths
from localbackend.core import _copying, _storage
from tests.helpers import collect, format_logs, script, until_status, wait_not_busy
from tests.test_backend_checkpoints import tree_digest

NOBODY = 65534




@pytest.fixture
def open_root() -> Iterator[Path]:
    """A folder that an unprivileged writer can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="lb-copy-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_source(root: Path) -> TrialPaths:
    """A trial folder with one published checkpoint (two files, one nested) and a loose file."""
    paths = TrialPaths(root / "0")
    paths.root.mkdir(mode=0o755)
    with checkpoint.save(directory=paths.checkpoints) as folder:
        (folder / "weights.bin").write_bytes(b"w" * 5000)
        (folder / "optimizer").mkdir()
        (folder / "optimizer" / "state.bin").write_bytes(b"s" * 300)
    (paths.checkpoints / "model.pt").write_bytes(b"loose weights")  # Syne Tune style
    return paths


def target_of(root: Path) -> TrialPaths:
    paths = TrialPaths(root / "1")
    paths.root.mkdir(mode=0o755)
    return paths


def published_files(paths: TrialPaths) -> list[Path]:
    latest = checkpoint.latest(directory=paths.checkpoints)
    assert latest is not None
    return sorted(p for p in latest.rglob("*") if p.is_file())


def writer_python() -> str:
    """An interpreter the writer's user can run; the project's venv may sit in /root."""
    if os.geteuid() != 0:
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            return candidate
    pytest.skip("no system python3 for an unprivileged writer process")


def rewrite(path: Path, how: str, *, unprivileged: bool = False) -> str:
    """Rewrite ``path`` in place from a separate process; returns "ok" or the error's name."""
    modes = {"truncate": "w", "append": "a", "overwrite": "r+b"}
    code = textwrap.dedent(f"""
        import sys
        try:
            with open(sys.argv[1], {modes[how]!r}) as f:
                f.write({'b' if how == 'overwrite' else ''}"XXXX")
        except OSError as err:
            print(type(err).__name__)
        else:
            print("ok")
    """)
    as_user: dict[str, object] = {}
    if unprivileged and os.geteuid() == 0:
        as_user = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    done = subprocess.run(
        [writer_python(), "-c", code, str(path)], capture_output=True, text=True,
        timeout=60, check=False, **as_user,  # type: ignore[call-overload]
    )
    assert done.returncode == 0, done.stderr
    return str(done.stdout.strip())


def test_published_files_are_shared_read_only_and_loose_files_are_copied(
    open_root: Path,
) -> None:
    source = make_source(open_root)
    before = tree_digest(source.checkpoints)
    target = target_of(open_root)
    _storage.copy_checkpoint_folder(source, target)
    assert tree_digest(target.checkpoints) == before
    for copied in published_files(target):
        original = source.checkpoints / copied.relative_to(target.checkpoints)
        assert os.stat(copied).st_ino == os.stat(original).st_ino, copied
        assert stat.S_IMODE(os.stat(copied).st_mode) & 0o222 == 0, oct(os.stat(copied).st_mode)
    loose = target.checkpoints / "model.pt"
    assert os.stat(loose).st_ino != os.stat(source.checkpoints / "model.pt").st_ino
    assert stat.S_IMODE(os.stat(loose).st_mode) == stat.S_IMODE(
        os.stat(source.checkpoints / "model.pt").st_mode
    )


@pytest.mark.parametrize("how", ["truncate", "append", "overwrite"])
@pytest.mark.parametrize("writer", ["target", "source"])
def test_rewriting_a_shared_file_in_place_fails_loudly_and_changes_neither(
    how: str, writer: str, open_root: Path
) -> None:
    source = make_source(open_root)
    if os.geteuid() == 0:
        # The files belong to the trial's user, as they would if it had saved them.
        for path in (open_root, *open_root.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
    before = tree_digest(source.checkpoints)
    target = target_of(open_root)
    _storage.copy_checkpoint_folder(source, target)
    side = target if writer == "target" else source
    for path in published_files(side):
        assert rewrite(path, how, unprivileged=True) == "PermissionError", path
    assert tree_digest(source.checkpoints) == before
    assert tree_digest(target.checkpoints) == before


@pytest.mark.parametrize("how", ["truncate", "append", "overwrite"])
@pytest.mark.parametrize("writer", ["target", "source"])
def test_rewriting_a_copied_loose_file_in_place_never_reaches_the_other_trial(
    how: str, writer: str, open_root: Path
) -> None:
    source = make_source(open_root)
    before = tree_digest(source.checkpoints)
    target = target_of(open_root)
    _storage.copy_checkpoint_folder(source, target)
    side, other = (target, source) if writer == "target" else (source, target)
    assert rewrite(side.checkpoints / "model.pt", how) == "ok"
    assert tree_digest(other.checkpoints) == before
    assert tree_digest(side.checkpoints)["model.pt"] != before["model.pt"]


def test_a_checkpoint_saved_in_the_target_is_a_new_folder_and_the_source_keeps_its_own(
    tmp_path: Path,
) -> None:
    with LocalBackend(script("checkpointing.py"), experiment_dir=tmp_path / "exp",
                      grace_period=0.5) as backend:
        source_id = backend.start_trial({"epochs": 2}).trial_id
        statuses, _ = collect(backend, [source_id], until_status(Status.completed, Status.failed))
        assert statuses[source_id][1] == Status.completed, format_logs(backend, [source_id])
        wait_not_busy(backend, [source_id])
        source = backend.trial_dir(source_id) / "checkpoints"
        before = tree_digest(source)
        inodes = {p: os.stat(p).st_ino for p in source.rglob("*") if p.is_file()}
        target_id = backend.new_trial_id()
        backend.copy_checkpoint(source_id, target_id)
        # The target trial resumes from the shared checkpoint and saves three more:
        # each is a new folder, and the old shared ones are unlinked on its side only.
        trial = backend.start_trial({"epochs": 5})
        assert trial.trial_id == target_id
        statuses, results = collect(backend, [trial.trial_id],
                                    until_status(Status.completed, Status.failed))
        assert statuses[trial.trial_id][1] == Status.completed, format_logs(backend)
        assert [r["epoch"] for _, r in results] == [2, 3, 4]
        wait_not_busy(backend, [trial.trial_id])
        assert tree_digest(source) == before
        assert {p: os.stat(p).st_ino for p in inodes} == inodes
        target = backend.trial_dir(trial.trial_id) / "checkpoints"
        assert checkpoint.load_json(directory=target) == {"epoch": 4}
        shared = {os.stat(p).st_ino for p in target.rglob("*") if p.is_file()}
        assert shared.isdisjoint(inodes.values())


def test_a_published_tree_is_linked_whole_with_its_symlinks_and_folder_modes(
    tmp_path: Path,
) -> None:
    paths = TrialPaths(tmp_path / "0")
    with checkpoint.save(directory=paths.checkpoints) as folder:
        deep = folder / "shards" / "layer-0" / "part"
        deep.mkdir(parents=True)
        for index in range(20):
            (deep / f"{index}.bin").write_bytes(bytes([index]) * 100)
        (folder / "shards" / "latest").symlink_to("layer-0")  # relative, inside
        (folder / "outside").symlink_to(tmp_path)  # must stay a link, never followed
        (folder / "shards").chmod(0o750)
    published = checkpoint.latest(directory=paths.checkpoints)
    assert published is not None
    before = tree_digest(paths.checkpoints)
    target = TrialPaths(tmp_path / "1")
    _storage.copy_checkpoint_folder(paths, target)
    copied = target.checkpoints / published.name
    assert tree_digest(target.checkpoints) == before
    for original in published.rglob("*"):
        twin = copied / original.relative_to(published)
        if original.is_symlink():
            assert twin.is_symlink() and os.readlink(twin) == os.readlink(original), twin
        elif original.is_dir():
            assert twin.is_dir() and not twin.is_symlink(), twin
            assert stat.S_IMODE(twin.stat().st_mode) == stat.S_IMODE(original.stat().st_mode)
        else:
            assert os.stat(twin).st_ino == os.stat(original).st_ino, twin
    assert stat.S_IMODE((copied / "shards").stat().st_mode) == 0o750


def test_files_named_like_an_unfinished_save_inside_a_checkpoint_are_copied(
    tmp_path: Path,
) -> None:
    # Only an unfinished save at the top of the checkpoint folder is left
    # out; deeper down, such names are the script's own data.
    source = TrialPaths(tmp_path / "0")
    with checkpoint.save(directory=source.checkpoints) as folder:
        (folder / ".tmp-ckpt-cache.bin").write_bytes(b"published")
        (folder / "sub").mkdir()
        (folder / "sub" / ".tmp-ckpt-1-2").write_bytes(b"deeper")
    (source.checkpoints / "loose").mkdir()
    (source.checkpoints / "loose" / ".tmp-ckpt-9-9").write_bytes(b"loose")
    (source.checkpoints / ".tmp-ckpt-unfinished").mkdir()  # a save that never ended
    target = target_of(tmp_path)
    _storage.copy_checkpoint_folder(source, target)
    copied = target.checkpoints
    names = sorted(str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_file())
    assert names == ["ckpt-00000001/.tmp-ckpt-cache.bin", "ckpt-00000001/sub/.tmp-ckpt-1-2",
                     "loose/.tmp-ckpt-9-9"]


def test_a_loose_file_that_the_running_source_replaces_during_the_copy_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Syne Tune style script writes a temporary file and renames it over
    # the old one. One that is renamed between the copy's listing and its
    # read was not there when the copy read the folder: it is left out,
    # instead of failing the copy (the fault injected: the rename, at that moment).
    source = make_source(tmp_path)
    (source.checkpoints / "state.json.123.tmp").write_text("new")
    real = _copying.TreeCopier.copy_file

    def renamed_first(self: _copying.TreeCopier, src: str, dst: str) -> str:
        if not src.endswith(".tmp"):
            return real(self, src, dst)
        os.replace(src, src.removesuffix(".123.tmp"))
        try:
            return real(self, src, dst)
        finally:
            # The trial goes on saving: a copy made again would meet the next one.
            Path(src).write_text("newer")

    monkeypatch.setattr(_copying.TreeCopier, "copy_file", renamed_first)
    target = target_of(tmp_path)
    _storage.copy_checkpoint_folder(source, target)
    copied = target.checkpoints
    assert not (copied / "state.json.123.tmp").exists()
    assert (source.checkpoints / "state.json").read_text() == "new"
    published = "ckpt-00000001"
    assert tree_digest(copied / published) == tree_digest(source.checkpoints / published)

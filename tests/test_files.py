"""The shared file helpers: standard library only, atomic writes, atomic folder deletion."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from localbackend import _files
from tests.conftest import REPO


def _new_modules(statement: str) -> list[str]:
    """Modules a fresh interpreter loads for ``statement``, beyond its own start-up."""
    code = textwrap.dedent(
        f"""
        import json, sys
        before = set(sys.modules)
        {statement}
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env,
        check=True, timeout=60,
    ).stdout
    return list(json.loads(out))


def test_the_file_helpers_import_only_the_standard_library() -> None:
    loaded = _new_modules("import localbackend._files")
    ours = [name for name in loaded if name.split(".")[0] == "localbackend"]
    assert ours == ["localbackend", "localbackend._files", "localbackend._protocol"]
    foreign = [
        name for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names and name not in ours
    ]
    assert foreign == []
    # shutil is loaded only by a deletion, which the keeper rarely does.
    assert "shutil" not in loaded


def test_the_checkpoint_module_loads_no_driver_code() -> None:
    loaded = _new_modules("import localbackend.checkpoint")
    ours = sorted(name for name in loaded if name.split(".")[0] == "localbackend")
    assert ours == [
        "localbackend", "localbackend._errors", "localbackend._files", "localbackend._protocol",
        "localbackend.checkpoint",
    ]
    foreign = {
        name.split(".")[0] for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names and name not in ours
    }
    assert foreign == {"orjson"}


# -- delete_folder_atomically -----------------------------------------------------------

_DELETER = """
import os, sys, time
from localbackend._files import delete_folder_atomically

parent, go, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 30
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("never told to go")
won = []
for index in range(count):
    folder = os.path.join(parent, f"folder-{index}")
    retired = os.path.join(parent, f".folder-{index}-retired-{os.getpid()}")
    won.append(delete_folder_atomically(folder, retired))
print(" ".join("1" if w else "0" for w in won))
"""


def _tree(folder: Path) -> None:
    (folder / "sub" / "deeper").mkdir(parents=True)
    for index in range(5):
        (folder / f"file-{index}").write_bytes(b"x" * 1000)
        (folder / "sub" / "deeper" / f"file-{index}").write_bytes(b"y" * 1000)


def test_two_processes_deleting_the_same_folders_at_once(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    count = 40
    for index in range(count):
        _tree(parent / f"folder-{index}")
    go = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    deleters = [
        subprocess.Popen(
            [sys.executable, "-c", _DELETER, str(parent), str(go), str(count)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for _ in range(2)
    ]
    go.touch()
    outcomes = []
    for deleter in deleters:
        out, err = deleter.communicate(timeout=60)
        assert deleter.returncode == 0, err
        outcomes.append([word == "1" for word in out.split()])
    # Each folder was deleted by exactly one of them; the other found it gone.
    assert [a + b for a, b in zip(*outcomes, strict=True)] == [1] * count, outcomes
    assert sorted(os.listdir(parent)) == []


def test_delete_folder_atomically_edge_cases(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert _files.delete_folder_atomically(missing, tmp_path / ".missing-retired") is False
    # A leftover of an earlier, killed attempt under the same retired name.
    folder, retired = tmp_path / "folder", tmp_path / ".folder-retired"
    _tree(folder)
    _tree(retired)
    assert _files.delete_folder_atomically(folder, retired) is True
    assert not folder.exists() and not retired.exists()
    # A symlink is removed, never followed.
    outside = tmp_path / "outside"
    _tree(outside)
    link = tmp_path / "link"
    link.symlink_to(outside)
    assert _files.delete_folder_atomically(link, tmp_path / ".link-retired") is True
    assert not os.path.lexists(link) and not os.path.lexists(tmp_path / ".link-retired")
    assert len(list(outside.rglob("file-*"))) == 10
    # delete_folder picks a unique retired name itself.
    _tree(folder)
    _files.delete_folder(folder)
    _files.delete_folder(folder)
    assert sorted(os.listdir(tmp_path)) == ["outside"]


# -- atomic_write_bytes --------------------------------------------------------------

_WRITER = """
import sys
from localbackend._files import atomic_write_bytes

path, rounds, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for index in range(rounds):
    atomic_write_bytes(path, (b"ab"[index % 2:index % 2 + 1]) * size, durable=index % 10 == 0)
"""


def test_a_reader_never_sees_half_a_file(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    size = 1 << 20
    path.write_bytes(b"a" * size)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), "60", str(size)], env=env,
        stderr=subprocess.PIPE, text=True,
    )
    reads = 0
    try:
        deadline = time.monotonic() + 60
        while writer.poll() is None and time.monotonic() < deadline:
            data = path.read_bytes()
            assert len(data) == size and data.count(data[:1]) == size, "a torn file"
            reads += 1
    finally:
        _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert reads > 0
    assert sorted(os.listdir(tmp_path)) == ["state.bin"]


@pytest.mark.parametrize("fault", ["write", "replace"])
def test_a_failed_atomic_write_leaves_the_old_file(
    fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device (injected)")

    monkeypatch.setattr(os, fault, failing)
    with pytest.raises(OSError, match="injected"):
        _files.atomic_write_bytes(path, b"new" * 1000, durable=True)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]
    _files.atomic_write_bytes(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


def test_fsync_tree_skips_fifos_and_symlinks(tmp_path: Path) -> None:
    top = tmp_path / "top"
    _tree(top)
    os.mkfifo(top / "sub" / "fifo")  # opening it would block
    (top / "dangling").symlink_to(tmp_path / "nowhere")
    _files.fsync_tree(top)
    _files.fsync_tree(str(top))


def test_which_finds_what_shutil_which_finds(tmp_path: Path) -> None:
    import shutil

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\n")  # not executable: skipped
    (second / "tool").write_text("#!/bin/sh\n")
    (second / "tool").chmod(0o755)
    (first / "sub").mkdir()  # a folder of that name is not a program
    search = os.pathsep.join([str(first), str(second)])
    for name in ("tool", "sub", "missing"):
        assert _files.which(name, search) == shutil.which(name, path=search)
    assert _files.which("tool", search) == str(second / "tool")


def test_which_with_an_empty_path_finds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    program = tmp_path / "tool"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "")
    assert _files.which("tool") is None
    assert shutil.which("tool") is None

"""Tests for localbackend.checkpoint, including SIGKILL during saves."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from localbackend import checkpoint
from localbackend._protocol import ENV_CHECKPOINT_DIR

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 30.0


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(autouse=True)
def no_ambient_checkpoint_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CHECKPOINT_DIR, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Children a test starts; every one is killed and reaped afterwards."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_latest_is_none_without_checkpoints(tmp_path: Path) -> None:
    assert checkpoint.latest(tmp_path / "missing") is None
    assert checkpoint.latest(tmp_path) is None


def test_save_publishes_numbered_folders(tmp_path: Path) -> None:
    with checkpoint.save(tmp_path) as folder:
        assert folder.parent == tmp_path
        assert folder.name == f".tmp-ckpt-00000001-{os.getpid()}"
        (folder / "model.bin").write_bytes(b"one")
        (folder / "sub").mkdir()
        (folder / "sub" / "deep.txt").write_text("deep")
        # Not visible until the block ends.
        assert checkpoint.latest(tmp_path) is None
    first = checkpoint.latest(tmp_path)
    assert first == tmp_path / "ckpt-00000001"
    assert (first / "model.bin").read_bytes() == b"one"
    assert (first / "sub" / "deep.txt").read_text() == "deep"

    with checkpoint.save(tmp_path) as folder:
        (folder / "model.bin").write_bytes(b"two")
        assert checkpoint.latest(tmp_path) == first
    assert checkpoint.latest(tmp_path) == tmp_path / "ckpt-00000002"
    assert names(tmp_path) == ["ckpt-00000001", "ckpt-00000002"]


def test_save_creates_the_checkpoint_folder(tmp_path: Path) -> None:
    target = tmp_path / "a 0" / "nested"
    with checkpoint.save(target) as folder:
        (folder / "x").write_text("x")
    assert checkpoint.latest(target) == target / "ckpt-00000001"


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keep_limits_published_checkpoints(tmp_path: Path, keep: int) -> None:
    for number in range(1, 6):
        with checkpoint.save(tmp_path, keep=keep) as folder:
            (folder / "n").write_text(str(number))
    expected = [f"ckpt-{n:08d}" for n in range(6 - keep, 6)]
    assert names(tmp_path) == expected
    latest = checkpoint.latest(tmp_path)
    assert latest is not None and (latest / "n").read_text() == "5"


@pytest.mark.parametrize("keep", [0, -1, True, 1.5, "2"])
def test_invalid_keep_is_rejected_before_anything_is_written(tmp_path: Path, keep: object) -> None:
    with pytest.raises(checkpoint.CheckpointError, match="keep="):
        checkpoint.save(tmp_path, keep=keep)  # type: ignore[arg-type]
    assert names(tmp_path) == []


def test_exception_in_block_removes_temporary_folder(tmp_path: Path) -> None:
    checkpoint.save_json({"n": 1}, directory=tmp_path)
    with pytest.raises(RuntimeError, match="boom"), checkpoint.save(tmp_path) as folder:
        (folder / "partial").write_bytes(b"x" * 1000)
        raise RuntimeError("boom")
    assert names(tmp_path) == ["ckpt-00000001"]
    assert checkpoint.load_json(directory=tmp_path) == {"n": 1}


def test_failed_fsync_leaves_previous_checkpoint_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint.save_json({"n": 1}, directory=tmp_path)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        checkpoint.save_json({"n": 2}, directory=tmp_path)
    monkeypatch.undo()
    assert names(tmp_path) == ["ckpt-00000001"]
    assert checkpoint.load_json(directory=tmp_path) == {"n": 1}


def test_save_removes_stale_temporary_folders(tmp_path: Path) -> None:
    dead = dead_pid()
    stale = [
        f".tmp-ckpt-00000003-{dead}",  # a save killed mid-way
        f".tmp-ckpt-00000002-{dead}-old",  # a deletion killed mid-way
        f".tmp-ckpt-00000009-{os.getpid()}",  # ours, from an earlier failed save
    ]
    alive = f".tmp-ckpt-00000004-{os.getppid()}"  # a live process may still be saving
    for name in [*stale, alive]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "half-written").write_bytes(b"x")
    assert checkpoint.latest(tmp_path) is None
    checkpoint.save_json({"n": 1}, directory=tmp_path)
    assert names(tmp_path) == [alive, "ckpt-00000001"]


def test_syne_tune_style_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text('{"epoch": 3}')
    (tmp_path / "ckpt-notanumber").mkdir()
    (tmp_path / "ckpt-00000099").write_text("a file, not a checkpoint folder")
    assert checkpoint.latest(tmp_path) is None
    for n in range(3):
        checkpoint.save_json({"n": n}, directory=tmp_path, keep=1)
    assert names(tmp_path) == [
        "checkpoint.json",
        "ckpt-00000003",
        "ckpt-00000099",
        "ckpt-notanumber",
    ]
    assert (tmp_path / "checkpoint.json").read_text() == '{"epoch": 3}'


def test_save_and_load_json(tmp_path: Path) -> None:
    assert checkpoint.load_json(directory=tmp_path) is None
    published = checkpoint.save_json({"epoch": 2, "w": [0.5, 1.0]}, directory=tmp_path)
    assert published == tmp_path / "ckpt-00000001"
    assert checkpoint.load_json(directory=tmp_path) == {"epoch": 2, "w": [0.5, 1.0]}
    checkpoint.save_json([1, 2], name="other.json", directory=tmp_path)
    # The latest checkpoint has no state.json.
    assert checkpoint.load_json(directory=tmp_path) is None
    assert checkpoint.load_json("other.json", directory=tmp_path) == [1, 2]
    for bad in ("", "../x.json", "sub/x.json", ".."):
        with pytest.raises(checkpoint.CheckpointError, match="plain file name"):
            checkpoint.save_json({}, name=bad, directory=tmp_path)


def test_directory_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, from_env, from_argv = tmp_path / "explicit", tmp_path / "env", tmp_path / "argv"
    monkeypatch.setattr(
        sys, "argv", ["train.py", "--lr", "0.1", "--st_checkpoint_dir", str(from_argv)]
    )
    assert checkpoint.directory() == from_argv
    monkeypatch.setenv(ENV_CHECKPOINT_DIR, str(from_env))
    assert checkpoint.directory() == from_env
    assert checkpoint.directory(explicit) == explicit
    assert checkpoint.directory(str(explicit)) == explicit


@pytest.mark.parametrize(
    "argv",
    [
        ["--st_checkpoint_dir", "{dir}"],
        ["--st_checkpoint_dir={dir}"],
        ["--epochs", "3", "--st_checkpoint_dir={dir}", "--lr", "0.1"],
    ],
)
def test_directory_from_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    target = tmp_path / "a 0"
    monkeypatch.setattr(sys, "argv", ["train.py", *[a.format(dir=target) for a in argv]])
    assert checkpoint.directory() == target
    checkpoint.save_json({"ok": True})
    assert checkpoint.load_json() == {"ok": True}
    assert checkpoint.latest() == target / "ckpt-00000001"


def test_no_directory_is_a_clear_error() -> None:
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.directory()
    message = str(caught.value)
    assert ENV_CHECKPOINT_DIR in message and "--st_checkpoint_dir" in message
    assert "directory=" in message
    assert isinstance(caught.value, ValueError)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.latest()
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is checkpoint.CheckpointError and str(copy) == message


def test_save_context_cannot_be_reused(tmp_path: Path) -> None:
    pending = checkpoint.save(tmp_path)
    with pending:
        pass
    with pytest.raises(checkpoint.CheckpointError, match="only once"), pending:
        pass


# The child saves checkpoints as fast as it can; each holds a payload and a
# manifest with the payload's sha256. A torn checkpoint fails the check.
KILL_CHILD = textwrap.dedent(
    """
    import hashlib, os, sys
    from pathlib import Path
    from localbackend import checkpoint
    folder, ready, run = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    ready.touch()
    seq = 0
    while True:
        payload = os.urandom(256 * 1024 + seq)
        with checkpoint.save(folder, keep=2) as target:
            (target / "payload.bin").write_bytes(payload)
            (target / "sub").mkdir()
            manifest = {"sha256": hashlib.sha256(payload).hexdigest(), "run": run, "seq": seq}
            (target / "sub" / "manifest.json").write_text(__import__("json").dumps(manifest))
        seq += 1
    """
)


def test_sigkill_during_save_never_tears_the_latest_checkpoint(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    folder = tmp_path / "checkpoints"
    rng = random.Random(1234)
    started = time.monotonic()
    last_number = 0
    killed_mid_save = 0
    for run in range(50):
        ready = tmp_path / f"ready-{run}"
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_CHILD, str(folder), str(ready), str(run)],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        spawned.append(child)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while not ready.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                out, err = child.communicate()
                pytest.fail(f"child not ready, rc={child.returncode}\n{out!r}\n{err.decode()}")
            time.sleep(0.002)
        # The random delay is the fault injection: it lands the kill anywhere
        # in a save, including the first one and the clean-up after publishing.
        time.sleep(rng.uniform(0.0, 0.06))
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=CHILD_TIMEOUT)
        assert child.returncode == -signal.SIGKILL, err.decode()
        killed_mid_save += any(n.endswith(f"-{child.pid}") for n in names(folder))

        latest = checkpoint.latest(folder)
        if latest is None:
            assert last_number == 0, "a published checkpoint disappeared"
            continue
        number = int(latest.name.removeprefix("ckpt-"))
        assert number >= last_number, "the latest checkpoint went backwards"
        last_number = number
        manifest = orjson.loads((latest / "sub" / "manifest.json").read_bytes())
        payload = (latest / "payload.bin").read_bytes()
        assert hashlib.sha256(payload).hexdigest() == manifest["sha256"], latest
        assert len(payload) == 256 * 1024 + manifest["seq"]
    assert last_number > 0, "no save ever completed; the test did not test anything"
    # Most kills should land inside a save (its temporary folder survives).
    assert killed_mid_save >= 10, killed_mid_save
    # The next save cleans up the temporary folders the killed ones left.
    checkpoint.save_json({"done": True}, directory=folder)
    assert [n for n in names(folder) if not n.startswith("ckpt-")] == []
    assert time.monotonic() - started < 30

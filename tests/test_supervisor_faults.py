"""The supervisor survives faults that concern one launch or one command.

Faults are injected into the real supervisor process by the
``sitecustomize`` in ``tests/scripts/supervisor_faults`` (put on PYTHONPATH
before the backend starts its supervisor, which inherits the environment):
a failing ``os.fork``, or descriptor numbers above 1024. Garbage commands are
written straight to the live supervisor's stdin.
"""

from __future__ import annotations

import fcntl
import json
import resource
import struct
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend, Status
from tests.helpers import (
    SCRIPTS,
    collect,
    format_logs,
    script,
    status_history,
    until_status,
    wait_for,
    wait_for_trial_file,
)

GRACE = 0.5
FORK_FAILED = (
    "the process could not be started: BlockingIOError: [Errno 11] Resource temporarily "
    "unavailable (fork failed in the supervisor)"
)


@dataclass
class Faults:
    marker: Path  # while it exists, os.fork fails in the supervisor
    log: Path  # one line per fork in the supervisor: "_handle|_reap ok|failed"

    def forks(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Faults:
    injected = Faults(marker=tmp_path / "fail-fork", log=tmp_path / "forks.log")
    monkeypatch.setenv("PYTHONPATH", str(SCRIPTS / "supervisor_faults"))
    monkeypatch.setenv("LOCALBACKEND_TEST_FORK_MARKER", str(injected.marker))
    monkeypatch.setenv("LOCALBACKEND_TEST_FORK_LOG", str(injected.log))
    return injected


def steady_backend(experiment_dir: Path, **options: Any) -> LocalBackend:
    options.setdefault("grace_period", GRACE)
    return LocalBackend(script("steady.py"), experiment_dir=experiment_dir, **options)


def supervisor_pid(backend: LocalBackend) -> int:
    process = backend._supervisor._process
    assert process is not None and process.poll() is None, "the supervisor is not running"
    return process.pid


def steps(results: list[tuple[int, dict[str, Any]]], trial_id: int) -> list[int]:
    return [r["step"] for t, r in results if t == trial_id]


def keeps_reporting(backend: LocalBackend, trial_id: int, more: int = 3) -> None:
    """Wait until ``trial_id`` delivers ``more`` new results, still InProgress."""
    statuses, _ = collect(
        backend, [trial_id], lambda _s, r: len(steps(r, trial_id)) >= more, timeout=30
    )
    assert statuses[trial_id][1] == Status.in_progress, format_logs(backend, [trial_id])


def runs_to_completion(backend: LocalBackend, count: int = 3) -> int:
    trial_id = backend.start_trial({"steps": count}).trial_id
    statuses, results = collect(
        backend, [trial_id], until_status(Status.completed, Status.failed), timeout=30
    )
    assert statuses[trial_id][1] == Status.completed, format_logs(backend, [trial_id])
    assert steps(results, trial_id) == list(range(count))
    return trial_id


def unread_command_bytes(backend: LocalBackend) -> int:
    """Bytes the driver wrote to the supervisor's stdin that it has not read yet."""
    stdin = backend._supervisor._stdin
    assert stdin is not None
    raw = fcntl.ioctl(stdin.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


# -- a failed fork fails that launch only -------------------------------------------


@pytest.mark.parametrize("fault, reason", [
    ("", FORK_FAILED),
    # An error of no known kind: the supervisor lives on all the same, with
    # the signals it blocked for the fork unblocked again.
    ("unexpected", "the process could not be started: RuntimeError: an injected failure of "
     "no known kind (in the supervisor)"),
], ids=["EAGAIN", "unforeseen"])
def test_a_failed_fork_fails_only_that_launch(
    fault: str, reason: str, experiment_dir: Path, faults: Faults
) -> None:
    with steady_backend(experiment_dir) as backend:
        running = backend.start_trial({}).trial_id
        keeps_reporting(backend, running)
        pid = supervisor_pid(backend)
        faults.marker.write_text(fault)
        unlucky = backend.start_trial({}).trial_id
        statuses, _ = collect(
            backend, [running, unlucky], lambda s, _r: s[unlucky][1] != Status.in_progress
        )
        assert statuses[unlucky][1] == Status.failed, format_logs(backend)
        assert reason in (statuses[unlucky][0].stderr_tail or ""), format_logs(backend)
        assert status_history(backend, unlucky)[-1]["reason"] == reason
        assert statuses[running][1] == Status.in_progress, format_logs(backend)
        assert faults.forks()[-1] == "_handle failed"
        # The other trial was not disturbed: its results keep arriving.
        keeps_reporting(backend, running)
        faults.marker.unlink()
        runs_to_completion(backend)
        keeps_reporting(backend, running)
        assert supervisor_pid(backend) == pid
        backend.stop_trial(running)
        collect(backend, [running], until_status(Status.stopped))


def test_a_failed_fork_of_a_queued_resume_fails_only_that_run(
    experiment_dir: Path, faults: Faults
) -> None:
    # A long grace period: the paused run ends when the test releases it.
    with steady_backend(experiment_dir, grace_period=30.0) as backend:
        paused = backend.start_trial({"hold_on_term": 1}).trial_id
        other = backend.start_trial({}).trial_id
        keeps_reporting(backend, paused)
        keeps_reporting(backend, other)
        pid = supervisor_pid(backend)
        backend.pause_trial(paused)
        wait_for_trial_file(backend, paused, "terminating")
        backend.resume_trial(paused)
        # Once the supervisor has read the resume, it holds it in its queue
        # (the paused run is still alive) and forks it from _reap later.
        wait_for(
            lambda: unread_command_bytes(backend) == 0, timeout=10,
            what="the supervisor to read the resume command",
        )
        faults.marker.touch()
        (backend.trial_dir(paused) / "release").touch()
        statuses, _ = collect(
            backend, [paused, other], lambda s, _r: s[paused][1] != Status.in_progress
        )
        assert statuses[paused][1] == Status.failed, format_logs(backend)
        assert FORK_FAILED in (statuses[paused][0].stderr_tail or ""), format_logs(backend)
        assert faults.forks()[-1] == "_reap failed"
        assert statuses[other][1] == Status.in_progress, format_logs(backend)
        keeps_reporting(backend, other)
        faults.marker.unlink()
        runs_to_completion(backend)
        assert supervisor_pid(backend) == pid
        backend.stop_trial(other)
        collect(backend, [other], until_status(Status.stopped))


# -- bad commands are logged and skipped --------------------------------------------

GARBAGE = [
    b"this is not JSON",
    b"\xff\xfe not even UTF-8",
    b"[1, 2, 3]",
    b'"a string"',
    b'{"trial": 0, "run": 0}',
    b'{"op": "explode", "trial": 0, "run": 0}',
    b'{"op": "spawn", "trial": 99, "run": 0}',
    b'{"op": "spawn", "trial": "x", "run": 0, "argv": 1}',
    b'{"op": "terminate", "trial": "zero", "run": 0}',
    b'{"op": "terminate", "trial": true, "run": 0}',
    b'{"op": "terminate"}',
    # Every field there, but of the wrong type: the supervisor itself reads
    # env and preload to judge a warm start, before any keeper exists.
    *(json.dumps({
        "op": "spawn", "trial": 98, "run": 0, "executable": sys.executable, "argv": ["x"],
        "env": {}, "cwd": "/", "stdout": "o", "stderr": "e", "results": "r",
        "exit_file": "x", "run_file": "u", "grace": 1, **wrong,
    }).encode() for wrong in ({"env": 1, "preload": ["json"]}, {"preload": 1},
                              {"argv": "python"}, {"grace": "soon"})),
    b'{"op": "' + b"x" * 200_000 + b'"}',
]


def test_garbage_on_the_supervisors_stdin_is_logged_and_skipped(
    experiment_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with steady_backend(experiment_dir) as backend:
        running = backend.start_trial({}).trial_id
        keeps_reporting(backend, running)
        pid = supervisor_pid(backend)
        client = backend._supervisor
        with client._lock:
            assert client._stdin is not None
            client._stdin.write(b"\n".join(GARBAGE) + b"\n")
            client._stdin.flush()
        logged: list[str] = []

        def all_logged() -> bool:
            logged.extend(
                line for line in capfd.readouterr().err.splitlines()
                if line.startswith("localbackend supervisor:")
            )
            return len(logged) >= len(GARBAGE)

        wait_for(all_logged, timeout=10, what="the supervisor to log every bad command",
                 on_fail=lambda: "\n".join(logged))
        assert len(logged) == len(GARBAGE), "\n".join(logged)
        assert supervisor_pid(backend) == pid
        # The offending line is shown, shortened.
        assert all(len(line) < 600 for line in logged), [len(line) for line in logged]
        assert "this is not JSON" in logged[0]
        assert "explode" in logged[5]
        assert f"{len(GARBAGE[-1])} bytes" in logged[-1]
        keeps_reporting(backend, running)
        runs_to_completion(backend)
        backend.stop_trial(running)
        collect(backend, [running], until_status(Status.stopped))
        assert supervisor_pid(backend) == pid


# -- descriptor numbers above 1024 -----------------------------------------------


def test_the_supervisor_works_with_descriptors_above_1024(
    experiment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files ({hard}) is too low")
    monkeypatch.setenv("PYTHONPATH", str(SCRIPTS / "supervisor_faults"))
    # The supervisor's own pipes then get numbers past select()'s FD_SETSIZE.
    monkeypatch.setenv("LOCALBACKEND_TEST_MIN_FD", "1100")
    with steady_backend(experiment_dir) as backend:
        running = backend.start_trial({}).trial_id
        keeps_reporting(backend, running)
        runs_to_completion(backend)
        backend.pause_trial(running)
        backend.resume_trial(running)
        keeps_reporting(backend, running)
        backend.stop_trial(running)
        collect(backend, [running], until_status(Status.stopped))

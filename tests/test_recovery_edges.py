"""Edges of driver and supervisor death: what restore and a live driver must get right."""

from __future__ import annotations

import errno
import glob
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from localbackend import LocalBackend, Status
from tests.crash_helpers import alive, kill_pids, wait_gone
from tests.helpers import drain, format_logs, wait_for

CHATTY = """
import json, os, signal, time
folder = os.environ["LOCALBACKEND_TRIAL_DIR"]
open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    with open(os.environ["LOCALBACKEND_RESULTS_FILE"], "a") as results:
        results.write(json.dumps({"pid": os.getpid()}) + "\\n")
    time.sleep(0.05)
"""

LATE = """
import os, signal, sys, time
from localbackend import report
def on_sigterm(signum, frame):
    report(phase="after_pause", pid=os.getpid())
    sys.exit(0)
signal.signal(signal.SIGTERM, on_sigterm)
report(phase="run", pid=os.getpid())
while True:
    time.sleep(0.05)
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _pids(folder: Path) -> list[int]:
    return [int(p.rsplit("-", 1)[1]) for p in glob.glob(str(folder / "pid-*"))]


def test_restore_waits_for_a_run_the_dead_driver_never_heard_of(tmp_path: Path) -> None:
    script, exp = _script(tmp_path, "chatty.py", CHATTY), tmp_path / "exp"
    driver = (
        "import glob, os, signal, sys, time\n"
        "from localbackend import LocalBackend\n"
        "b = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=5)\n"
        "b.start_trial({})\n"
        "while not glob.glob(sys.argv[2] + '/0/pid-*'): time.sleep(0.01)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # before it ever reads an event\n"
    )
    subprocess.run([sys.executable, "-c", driver, str(script), str(exp)], check=False)
    first = _pids(exp / "0")
    try:
        with LocalBackend.restore(exp) as backend:
            assert not alive(first), "restore returned while the old run still ran"
            statuses, _ = backend.fetch_status_results([0])
            assert statuses[0][1] == Status.paused
            backend.resume_trial(0)
            wait_for(lambda: len(_pids(exp / "0")) == 2, what="the resumed run",
                     on_fail=lambda: format_logs(backend))
            backend.wait(timeout=10)
            results = backend.fetch_status_results([0])[1]
            new = [p for p in _pids(exp / "0") if p not in first]
            assert results and {r["pid"] for _, r in results} == set(new)
            backend.stop_trial(0)
    finally:
        kill_pids(_pids(exp / "0"))


def test_restore_never_delivers_what_a_paused_run_wrote_before_a_resume(tmp_path: Path) -> None:
    script, exp = _script(tmp_path, "late.py", LATE), tmp_path / "exp"
    driver = (
        "import os, signal, sys\n"
        "from localbackend import LocalBackend\n"
        "b = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=5)\n"
        "b.start_trial({})\n"
        "b.wait(30)\n"  # the first result is read but not fetched
        "b.pause_trial(0)\n"
        "while b.busy_trial_ids(): b.wait(1)\n"  # the run reported again on SIGTERM
        "b.resume_trial(0)\n"
        "while not b.wait(1): pass\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", driver, str(script), str(exp)], check=False)
    with LocalBackend.restore(exp) as backend:
        _, results = backend.fetch_status_results([0])
        phases = [r["phase"] for _, r in results]
        assert "after_pause" not in phases, results
        assert phases.count("run") >= 1


def test_supervisor_death_fails_running_trials_and_a_new_one_takes_over(tmp_path: Path) -> None:
    script = _script(tmp_path, "chatty.py", CHATTY)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=5) as backend:
        backend.start_trial({})
        wait_for(lambda: _pids(backend.trial_dir(0)), what="the trial to start")
        old = _pids(backend.trial_dir(0))
        supervisor = backend._supervisor._process
        assert supervisor is not None
        os.kill(supervisor.pid, signal.SIGKILL)
        statuses, _ = drain(backend, [0])
        assert statuses[0][1] == Status.failed
        assert "supervisor" in statuses[0][0].stderr_tail
        wait_gone(old, timeout=5)
        backend.start_trial({})  # a new supervisor starts
        wait_for(lambda: _pids(backend.trial_dir(1)), what="trial 1 to start")
        backend.wait(timeout=10)
        assert backend.fetch_status_results([1])[1]
        backend.stop_trial(1)
        drain(backend, [1])
        assert backend.busy_trial_ids() == []


def test_a_failed_journal_write_leaves_the_experiment_restorable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path, "quick.py", "from localbackend import report\nreport(x=1)\n")
    backend = LocalBackend(script, experiment_dir=tmp_path / "exp")
    backend.start_trial({})
    assert backend._journal is not None
    journal_fd = backend._journal._fd
    real_write = os.write
    failed: list[bytes] = []

    def full_once(fd: int, data: bytes) -> int:
        if fd == journal_fd and not failed:
            failed.append(data)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_once)
    backend.start_trial({})
    monkeypatch.undo()
    assert failed
    drain(backend, [0, 1])
    backend.close()
    # The entry that did not fit (trial 1's first) is lost; restore takes its
    # config from the trial folder and keeps what the later entries say.
    with LocalBackend.restore(tmp_path / "exp") as restored:
        statuses, results = restored.fetch_status_results([0, 1])
        assert [statuses[t][1] for t in (0, 1)] == [Status.completed, Status.completed]
        assert statuses[1][0].config == {}
        assert results == []


def test_resume_after_a_deferred_delete_starts_without_the_checkpoint(tmp_path: Path) -> None:
    script = _script(tmp_path, "ckpt.py", """
        import signal, sys, time
        from localbackend import checkpoint, report
        had = checkpoint.latest() is not None
        checkpoint.save_json({"step": 1})
        def on_sigterm(signum, frame):
            time.sleep(0.3)  # ends slowly, so the delete must wait for it
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_sigterm)
        report(had_checkpoint=had)
        while True:
            time.sleep(0.05)
    """)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=5) as backend:
        backend.start_trial({})
        backend.wait(timeout=30)
        assert [r["had_checkpoint"] for _, r in backend.fetch_status_results([0])[1]] == [False]
        backend.pause_trial(0)
        backend.delete_checkpoint(0)
        backend.resume_trial(0)
        backend.wait(timeout=30)
        assert [r["had_checkpoint"] for _, r in backend.fetch_status_results([0])[1]] == [False]
        backend.stop_trial(0)

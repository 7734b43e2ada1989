"""Promises of the backend that do not depend on the driver's habits.

Checkpoint deletion that happens when the processes are gone, not when the
driver next polls; a dropped backend that leaves no zombie; a restore in the
same process that takes the experiment over; a lock that belongs to the
backend, not a thread; waiting with more than 1,024 descriptors; calls on a
backend whose supervisor died; and failed calls that change nothing.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest

from localbackend import (
    ExperimentError,
    ExperimentMovedError,
    LocalBackend,
    LocalBackendError,
    Status,
    SupervisorError,
    TrialLaunchError,
)
from localbackend.core._lock import experiment_is_held
from tests.helpers import collect, drain, format_logs, wait_for

# Saves a checkpoint, reports, then idles; on SIGTERM it waits ``--term_delay``
# seconds (still inside the grace period) before it exits 0.
SLOW_TO_STOP = """
import os, signal, sys, time
from localbackend import checkpoint, report
delay = float(sys.argv[sys.argv.index("--term_delay") + 1]) if "--term_delay" in sys.argv else 0.0
checkpoint.save_json({"step": 1})
def on_sigterm(signum, frame):
    open(os.path.join(os.environ["LOCALBACKEND_TRIAL_DIR"], "sigterm"), "w").close()
    time.sleep(delay)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_sigterm)
report(pid=os.getpid())
while True:
    time.sleep(0.05)
"""

# Saves a checkpoint, reports and exits 0: a trial that completes.
COMPLETES = """
import os
from localbackend import checkpoint, report
checkpoint.save_json({"step": 1})
report(pid=os.getpid())
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _first_result(backend: LocalBackend, trial_id: int) -> dict[str, Any]:
    _, results = collect(backend, [trial_id], lambda _s, r: bool(r))
    return results[0][1]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _keeper_gone(backend: LocalBackend, trial_id: int) -> bool:
    """The trial's whole tree is gone: its keeper wrote exit.json and exited."""
    run = json.loads((backend.trial_dir(trial_id) / "run.json").read_text())
    return (backend.trial_dir(trial_id) / "exit.json").exists() and _gone(int(run["keeper"]))


# -- checkpoint deletion does not depend on the driver polling -----------------


def test_delete_checkpoint_of_a_paused_trial_that_has_ended_deletes_at_once(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=5) as backend:
        backend.start_trial({})
        _first_result(backend, 0)
        checkpoints = backend.trial_dir(0) / "checkpoints"
        assert checkpoints.exists()
        backend.pause_trial(0)
        # The tree ends; the driver is not told (no fetch, no wait).
        wait_for(lambda: _keeper_gone(backend, 0), what="trial 0's processes to end",
                 on_fail=lambda: format_logs(backend, [0]))
        backend.delete_checkpoint(0)
        assert not checkpoints.exists()
        assert backend.busy_trial_ids() == []


@pytest.mark.parametrize("how", ["delete_checkpoint", "stop_trial"])
def test_a_deferred_deletion_happens_when_the_processes_end_without_polling(
    tmp_path: Path, how: str
) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    with LocalBackend(
        script, experiment_dir=tmp_path / "exp", grace_period=10,
        delete_checkpoints=how == "stop_trial",
    ) as backend:
        backend.start_trial({"term_delay": 1.0})
        pid = _first_result(backend, 0)["pid"]
        checkpoints = backend.trial_dir(0) / "checkpoints"
        if how == "delete_checkpoint":
            backend.pause_trial(0)
            backend.delete_checkpoint(0)
        else:
            backend.stop_trial(0)
        # Still in its grace period: the deletion has to wait for the tree.
        wait_for((backend.trial_dir(0) / "sigterm").exists, what="the trial's SIGTERM handler")
        assert checkpoints.exists() and not _gone(pid)
        # From here on the driver calls nothing at all.
        wait_for(lambda: not checkpoints.exists(), timeout=20,
                 what="the checkpoints to go once the trial has exited",
                 on_fail=lambda: format_logs(backend, [0]))
        assert _gone(pid)


def test_delete_checkpoints_on_completion_needs_no_polling(tmp_path: Path) -> None:
    script = _script(tmp_path, "done.py", COMPLETES)
    with LocalBackend(
        script, experiment_dir=tmp_path / "exp", delete_checkpoints=True
    ) as backend:
        backend.start_trial({})
        checkpoints = backend.trial_dir(0) / "checkpoints"
        wait_for(lambda: (backend.trial_dir(0) / "exit.json").exists(), what="the trial to exit",
                 on_fail=lambda: format_logs(backend, [0]))
        wait_for(lambda: not checkpoints.exists(), what="the checkpoints of a completed trial")
        statuses, _ = drain(backend, [0])
        assert statuses[0][1] == Status.completed


def test_a_paused_trial_keeps_its_checkpoint_with_delete_checkpoints(tmp_path: Path) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    with LocalBackend(
        script, experiment_dir=tmp_path / "exp", grace_period=5, delete_checkpoints=True
    ) as backend:
        backend.start_trial({})
        _first_result(backend, 0)
        backend.pause_trial(0)  # the script exits 0 on SIGTERM
        wait_for(lambda: _keeper_gone(backend, 0), what="trial 0's processes to end")
        statuses, _ = drain(backend, [0])
        assert statuses[0][1] == Status.paused
        assert (backend.trial_dir(0) / "checkpoints").exists()
        backend.stop_trial(0)
        assert not (backend.trial_dir(0) / "checkpoints").exists()


def test_driver_exiting_right_after_stop_all_leaves_no_checkpoint(tmp_path: Path) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    driver = textwrap.dedent("""
        import os, sys, time
        from localbackend import LocalBackend
        b = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=10,
                         delete_checkpoints=True)
        for delay in (0.0, 0.5):
            b.start_trial({"term_delay": delay})
        deadline = time.monotonic() + 60
        seen = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            b.wait(timeout=1)
            seen.update(t for t, _ in b.fetch_status_results([0, 1])[1])
        b.stop_all()
        os._exit(0)
    """)
    done = subprocess.run(
        [sys.executable, "-c", driver, str(script), str(tmp_path / "exp")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for trial in ("0", "1"):
        assert (tmp_path / "exp" / trial / "exit.json").exists()
        assert not (tmp_path / "exp" / trial / "checkpoints").exists(), done.stderr


# -- a dropped backend leaves no zombie and no warning --------------------------


def test_a_dropped_backend_shuts_its_supervisor_down_and_reaps_it(tmp_path: Path) -> None:
    script = _script(tmp_path, "done.py", COMPLETES)
    descriptors = set(os.listdir("/proc/self/fd"))
    backend = LocalBackend(script, experiment_dir=tmp_path / "exp")
    backend.start_trial({})
    drain(backend, [0])
    backend.stop_all()  # what Syne Tune's Tuner does, without close()
    process = backend._supervisor._process
    assert process is not None
    supervisor = process.pid
    del process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del backend
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    with pytest.raises(ChildProcessError):
        os.waitpid(supervisor, os.WNOHANG)  # already reaped: no zombie
    assert not experiment_is_held(tmp_path / "exp")
    # The lock, the journal, the inotify watcher and the pipes are all closed.
    assert set(os.listdir("/proc/self/fd")) <= descriptors


def test_a_backend_left_open_at_exit_leaves_no_process_and_no_warning(tmp_path: Path) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    driver = textwrap.dedent("""
        import sys
        from localbackend import LocalBackend
        b = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=5)
        b.start_trial({})
        b.wait(timeout=30)
        pid = b.fetch_status_results([0])[1][0][1]["pid"]
        print(b._supervisor._process.pid, pid, flush=True)
        # ends with the backend open and the trial running
    """)
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", driver,
         str(script), str(tmp_path / "exp")],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ResourceWarning" not in done.stderr and "still running" not in done.stderr, done.stderr
    assert "unclosed" not in done.stderr, done.stderr
    supervisor, trial = (int(word) for word in done.stdout.split())
    wait_for(lambda: not psutil.pid_exists(supervisor) and not psutil.pid_exists(trial),
             timeout=10, what="the supervisor and the trial to be gone")


# -- a restore in the same process takes the experiment over --------------------


def test_restore_in_the_same_process_takes_the_experiment_over(tmp_path: Path) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    first = LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=5)
    first.start_trial({})
    first.start_trial({})
    collect(first, [0, 1], lambda _s, r: len(r) == 2)
    first.stop_trial(1)
    with LocalBackend.restore(tmp_path / "exp") as second:
        statuses, _ = second.fetch_status_results([0, 1])
        # The running trial was paused by the hand-over; its checkpoint stays.
        assert [statuses[t][1] for t in (0, 1)] == [Status.paused, Status.stopped]
        for call in (
            lambda: first.fetch_status_results([0]),
            lambda: first.start_trial({}),
            lambda: first.pause_trial(0),
            first.busy_trial_ids,
            first.stop_all,
            lambda: first.wait(timeout=0),
        ):
            with pytest.raises(ExperimentMovedError, match="restored"):
                call()
        first.close()  # it has let go already: nothing to do
        second.resume_trial(0)
        collect(second, [0], lambda _s, r: bool(r))
        assert experiment_is_held(tmp_path / "exp")
    assert not experiment_is_held(tmp_path / "exp")


# -- the lock belongs to the backend, not to a thread --------------------------


def test_close_from_another_thread_releases_the_lock(tmp_path: Path) -> None:
    script = _script(tmp_path, "done.py", COMPLETES)
    backend = LocalBackend(script, experiment_dir=tmp_path / "exp")
    backend.start_trial({})
    drain(backend, [0])
    lock = backend._folder.lock
    # Everything the lock holds stays referenced, so that nothing is released
    # by garbage collection: only an explicit release frees the folder.
    held_parts = dict(vars(lock))
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(60)
    assert not experiment_is_held(tmp_path / "exp")
    with LocalBackend.restore(tmp_path / "exp") as restored:
        assert restored.fetch_status_results([0])[0][0][1] == Status.completed
    del held_parts


def test_a_filesystem_without_flock_gets_our_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path, "done.py", COMPLETES)

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    backend = LocalBackend(script, experiment_dir=tmp_path / "exp")
    with pytest.raises(ExperimentError, match="file locks") as caught:
        backend.start_trial({})
    assert str(tmp_path / "exp") in str(caught.value)
    assert not isinstance(caught.value, NotImplementedError)
    assert backend.new_trial_id() == 0


# -- waiting with many descriptors ------------------------------------------------


def test_wait_works_with_more_than_1024_descriptors(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit ({hard}) is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while len(held) < 1030 or (held and held[-1] < 1030):
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        script = _script(tmp_path, "done.py", COMPLETES)
        with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
            backend.start_trial({})
            assert backend._supervisor.events_fd > 1024
            assert backend.wait(timeout=30) == [0]
            statuses, results = drain(backend, [0])
            assert statuses[0][1] == Status.completed and len(results) == 1
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- a backend whose supervisor died ---------------------------------------------


def test_pause_and_stop_with_a_dead_supervisor_start_nothing(tmp_path: Path) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=5) as backend:
        backend.start_trial({})
        backend.start_trial({})
        collect(backend, [0, 1], lambda _s, r: len(r) == 2)
        process = backend._supervisor._process
        assert process is not None
        process.kill()
        process.wait()
        children_before = {p.pid for p in psutil.Process().children()}
        backend.pause_trial(0)
        backend.stop_trial(1)
        assert backend._supervisor._process is process or backend._supervisor._process is None
        new = {p.pid for p in psutil.Process().children()} - children_before
        assert new == set(), "a supervisor was started only to deliver a pause or stop"
        statuses, _ = drain(backend, [0, 1])
        assert {statuses[0][1], statuses[1][1]} <= {Status.paused, Status.stopped, Status.failed}


# -- a failed call changes nothing ----------------------------------------------


class _BrokenPipe:
    """The supervisor's stdin, failing as a pipe whose reader is gone fails."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, data: bytes) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe (injected)")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _fail_spawn(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's pipe breaks just when the run is handed to it: the last step."""
    client = backend._supervisor
    client.ensure_started()
    monkeypatch.setattr(client, "_stdin", _BrokenPipe(client._stdin))


def test_a_start_that_fails_after_the_record_exists_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path, "done.py", COMPLETES)
    with LocalBackend(
        script, experiment_dir=tmp_path / "exp", num_gpus=2, num_gpus_per_trial=1
    ) as backend:
        with monkeypatch.context() as patch:
            _fail_spawn(backend, patch)
            with pytest.raises(TrialLaunchError) as caught:
                backend.start_trial({})
        assert isinstance(caught.value.__cause__, SupervisorError)
        assert caught.value.trial_id == 0
        assert backend.new_trial_id() == 0
        assert backend.busy_trial_ids() == []
        assert not (tmp_path / "exp" / "0").exists()
        trial = backend.start_trial({})  # gets the id, and GPU 0: nothing was leaked
        assert trial.trial_id == 0
        drain(backend, [0])
        # The run's keeper publishes command.json before the trial starts.
        command = json.loads((backend.trial_dir(0) / "command.json").read_text())
        assert command["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    with LocalBackend.restore(tmp_path / "exp") as restored:
        assert restored.new_trial_id() == 1


def test_a_resume_that_fails_leaves_the_trial_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    with LocalBackend(
        script, experiment_dir=tmp_path / "exp", grace_period=5, num_gpus=2
    ) as backend:
        backend.start_trial({})
        _first_result(backend, 0)
        backend.pause_trial(0)
        drain(backend, [0])
        with monkeypatch.context() as patch:
            _fail_spawn(backend, patch)
            with pytest.raises(TrialLaunchError):
                backend.resume_trial(0, {"x": 1})
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused
        assert statuses[0][0].config == {}
        assert backend.busy_trial_ids() == []
        assert backend._allocator().in_use() == {"0": 0, "1": 0}
        backend.resume_trial(0)
        collect(backend, [0], lambda _s, r: bool(r))
        backend.stop_trial(0)
        drain(backend, [0])
    with LocalBackend.restore(tmp_path / "exp") as restored:
        statuses, _ = restored.fetch_status_results([0])
        assert statuses[0][1] == Status.stopped


def test_a_start_whose_supervisor_cannot_start_raises_trial_launch_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import localbackend.launchers.local._client as processes

    script = _script(tmp_path, "done.py", COMPLETES)
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        with monkeypatch.context() as patch:
            def no_process(*args: Any, **kwargs: Any) -> Any:
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable (injected)")

            patch.setattr(processes.subprocess, "Popen", no_process)
            with pytest.raises(TrialLaunchError) as caught:
                backend.start_trial({})
        assert isinstance(caught.value.__cause__, LocalBackendError)
        assert backend.new_trial_id() == 0
        backend.start_trial({})
        statuses, _ = drain(backend, [0])
        assert statuses[0][1] == Status.completed


def test_turning_delete_checkpoints_off_keeps_a_running_trials_checkpoint(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    with LocalBackend(
        script, experiment_dir=tmp_path / "exp", grace_period=5, delete_checkpoints=True
    ) as backend:
        backend.start_trial({})
        _first_result(backend, 0)
        backend.delete_checkpoints = False  # its keeper was told otherwise at launch
        run = json.loads((backend.trial_dir(0) / "run.json").read_text())
        os.kill(int(run["pid"]), signal.SIGTERM)  # the trial completes (exit 0) on its own
        wait_for(lambda: _keeper_gone(backend, 0), what="trial 0's processes to end")
        statuses, _ = drain(backend, [0])
        assert statuses[0][1] == Status.completed
        assert (backend.trial_dir(0) / "checkpoints").exists()


def test_an_unpickled_backend_hands_the_experiment_over_to_a_later_restore(
    tmp_path: Path,
) -> None:
    import pickle

    script = _script(tmp_path, "slow.py", SLOW_TO_STOP)
    first = LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=5)
    first.start_trial({})
    _first_result(first, 0)
    unpickled = pickle.loads(pickle.dumps(first))  # takes the experiment over from first
    with pytest.raises(ExperimentMovedError):
        first.busy_trial_ids()
    unpickled.resume_trial(0)
    _first_result(unpickled, 0)
    with LocalBackend.restore(tmp_path / "exp") as restored:  # and over from the unpickled
        with pytest.raises(ExperimentMovedError):
            unpickled.fetch_status_results([0])
        statuses, _ = restored.fetch_status_results([0])
        assert statuses[0][1] == Status.paused

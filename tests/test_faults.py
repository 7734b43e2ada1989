"""Faults the backend survives: files removed under it, floods, huge lines, no file descriptors."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from localbackend import (
    CheckpointCopyError,
    EntryPointError,
    LocalBackend,
    Status,
    TrialLaunchError,
)
from localbackend.core import _storage
from tests.crash_helpers import alive, kill_pids, wait_gone
from tests.helpers import drain, format_logs, wait_for


def write_script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


GATED = """
    import os, sys, time
    from pathlib import Path
    from localbackend import report
    folder = Path(os.environ["LOCALBACKEND_TRIAL_DIR"])

    def gate(name):
        (folder / f"at-{name}").write_text("")
        while not (folder / f"go-{name}").exists():
            time.sleep(0.005)
"""


def open_gate(backend: LocalBackend, trial_id: int, name: str) -> None:
    wait_for(lambda: (backend.trial_dir(trial_id) / f"at-{name}").exists(), timeout=30,
             what=f"trial {trial_id} to reach {name}", on_fail=lambda: format_logs(backend))
    (backend.trial_dir(trial_id) / f"go-{name}").write_text("")


def test_results_file_deleted_or_emptied_while_the_trial_runs(tmp_path: Path) -> None:
    script = write_script(tmp_path, "trial.py", GATED + """
    report(i=0)
    gate("a")
    report(i=1)
    gate("b")
    report(i=2)
    """)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=0.5) as backend:
        backend.start_trial({})
        results = backend.trial_dir(0) / "results.jsonl"
        wait_for(lambda: results.stat().st_size > 0, what="the first result")
        backend.wait(timeout=10)
        first = backend.fetch_status_results([0])[1]
        results.unlink()
        open_gate(backend, 0, "a")
        wait_for(lambda: results.exists(), what="the results file to come back")
        results.write_bytes(b"")  # emptied, as by "> results.jsonl"
        open_gate(backend, 0, "b")
        statuses, rest = drain(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        assert [r["i"] for _, r in first + rest] == [0, 2]


def test_log_files_deleted_and_trial_folder_removed(tmp_path: Path) -> None:
    script = write_script(tmp_path, "trial.py", GATED + """
    print("before", flush=True)
    gate("a")
    print("after", flush=True)
    gate("b")
    report(done=1)
    """)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=0.5) as backend:
        backend.start_trial({})
        backend.start_trial({})
        open_gate(backend, 0, "a")
        open_gate(backend, 1, "a")
        (backend.trial_dir(0) / "stdout.log").unlink()
        assert backend.stdout(0) == []
        assert backend.read_log(0, "stdout", 0) == ("", 0)
        wait_for(lambda: (backend.trial_dir(1) / "at-b").exists(), what="trial 1 at gate b")
        shutil.rmtree(backend.trial_dir(1))
        backend.trial_dir(1).mkdir()  # the gate file needs a folder to land in
        (backend.trial_dir(1) / "go-b").write_text("")
        open_gate(backend, 0, "b")
        statuses, results = drain(backend, [0, 1])
        assert [statuses[t][1] for t in (0, 1)] == [Status.completed, Status.completed]
        assert sorted((t, r["done"]) for t, r in results) == [(0, 1), (1, 1)]
        assert backend.stdout(1) == []  # its log went with the folder


def test_trial_that_closes_stdout_still_completes(tmp_path: Path) -> None:
    script = write_script(tmp_path, "trial.py", """
    import os
    from localbackend import report
    os.close(1)
    os.close(2)
    report(ok=1)
    """)
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({})
        statuses, results = drain(backend, [0])
        assert statuses[0][1] == Status.completed
        assert [r["ok"] for _, r in results] == [1]


@pytest.mark.slow
def test_one_gigabyte_of_stdout_keeps_driver_memory_flat(tmp_path: Path) -> None:
    script = write_script(tmp_path, "flood.py", """
    import os
    line = b"x" * ((1 << 20) - 1) + b"\\n"
    block = line * 16
    for _ in range(64):  # 64 blocks of 16 MiB: 1 GiB
        os.write(1, block)
    os.write(1, b'[tune-metric]: {"after_flood": 1}\\n')
    os.write(1, b"y" * (8 << 20))  # an unfinished 8 MiB line without a marker
    """)
    me = psutil.Process()
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({})
        baseline = me.memory_info().rss
        peak = baseline
        results = []
        while backend.busy_trial_ids() or not results:
            backend.wait(timeout=1.0)
            results += backend.fetch_status_results([0])[1]
            peak = max(peak, me.memory_info().rss)
            if not backend.busy_trial_ids() and not results:
                break
        statuses, more = drain(backend, [0])
        results += more
        assert statuses[0][1] == Status.completed, format_logs(backend)
        assert [r["after_flood"] for _, r in results] == [1]
        assert (backend.trial_dir(0) / "stdout.log").stat().st_size > 1 << 30
    assert peak - baseline < 64 << 20, f"driver RSS grew by {(peak - baseline) >> 20} MiB"


def test_ten_megabyte_result_line_arrives_whole(tmp_path: Path) -> None:
    script = write_script(tmp_path, "big.py", """
    from localbackend import report
    report(blob="z" * (10 << 20), n=1)
    report(n=2)
    """)
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({})
        statuses, results = drain(backend, [0])
        assert statuses[0][1] == Status.completed
        assert [r["n"] for _, r in results] == [1, 2]
        assert len(results[0][1]["blob"]) == 10 << 20


def test_entry_point_deleted_between_trials(tmp_path: Path) -> None:
    script = write_script(tmp_path, "trial.py", GATED + """
    gate("a")
    """)
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=0.5) as backend:
        backend.start_trial({})
        wait_for(lambda: (backend.trial_dir(0) / "at-a").exists(), what="trial 0 to start")
        backend.pause_trial(0)
        script.unlink()
        with pytest.raises(EntryPointError, match=r"trial\.py"):
            backend.start_trial({})
        with pytest.raises(EntryPointError, match=r"trial\.py"):
            backend.resume_trial(0)
        assert backend.new_trial_id() == 1
        assert backend.fetch_status_results([0])[0][0][1] == Status.paused


def test_emfile_while_starting_a_trial(tmp_path: Path) -> None:
    script = write_script(tmp_path, "trial.py", "print('ok')\n")
    with LocalBackend(script, experiment_dir=tmp_path / "exp") as backend:
        backend.start_trial({})
        drain(backend, [0])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        try:
            while True:  # take every descriptor left, as a leaky process would
                try:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
                except OSError:
                    break
            with pytest.raises(TrialLaunchError, match="ulimit") as caught:
                backend.start_trial({})
            assert getattr(caught.value.__cause__, "errno", None) == errno.EMFILE
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert backend.new_trial_id() == 1
        assert not (backend.experiment_dir / "1").exists()
        backend.start_trial({})
        statuses, _ = drain(backend, [1])
        assert statuses[1][1] == Status.completed


def _checkpointed_pair(tmp_path: Path) -> LocalBackend:
    script = write_script(tmp_path, "ckpt.py", """
    from localbackend import checkpoint
    checkpoint.save_json({"owner": __import__("os").environ["LOCALBACKEND_TRIAL_ID"]})
    """)
    backend = LocalBackend(script, experiment_dir=tmp_path / "exp")
    backend.start_trial({})
    backend.start_trial({})
    drain(backend, [0, 1])
    return backend


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_copy_checkpoint_on_full_disk_leaves_the_target_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _checkpointed_pair(tmp_path)
    try:
        target = backend.trial_dir(1) / "checkpoints"
        before = _tree(target)
        real_copytree = shutil.copytree

        depth = []

        def full_disk(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
            depth.append(src)
            real_copytree(src, dst, *args, **kwargs)  # the files land, then the disk fills
            depth.pop()
            if not depth:
                raise OSError(errno.ENOSPC, "No space left on device")
            return dst

        monkeypatch.setattr(shutil, "copytree", full_disk)
        with pytest.raises(CheckpointCopyError, match="No space left") as caught:
            backend.copy_checkpoint(0, 1)
        assert "left as it was" in str(caught.value)
        assert _tree(target) == before
        assert not [p for p in backend.trial_dir(1).iterdir() if p.name.startswith(".checkp")]
    finally:
        backend.close()


def test_copy_checkpoint_with_failing_swap_or_replace_leaves_the_target_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _checkpointed_pair(tmp_path)
    try:
        target = backend.trial_dir(1) / "checkpoints"
        before = _tree(target)

        def failing(*args):  # type: ignore[no-untyped-def]
            raise OSError(errno.EIO, "Input/output error")

        # Over an existing checkpoint, the copy is swapped in by renameat2.
        monkeypatch.setattr(_storage, "_exchange", failing)
        with pytest.raises(CheckpointCopyError, match="Input/output error"):
            backend.copy_checkpoint(0, 1)
        assert _tree(target) == before
        # Where there is none yet (a trial about to start), by os.replace.
        monkeypatch.setattr(_storage.os, "replace", failing)
        with pytest.raises(CheckpointCopyError, match="Input/output error"):
            backend.copy_checkpoint(0, 2)
        monkeypatch.undo()
        assert not (backend.experiment_dir / "2" / "checkpoints").exists()
        assert backend.new_trial_id() == 2
        backend.copy_checkpoint(0, 1)
        assert _tree(target) == _tree(backend.trial_dir(0) / "checkpoints")
        leftovers = [p.name for p in backend.trial_dir(1).iterdir() if p.name.startswith(".")]
        assert leftovers == []
    finally:
        backend.close()


SIGINT_DRIVER = """
import sys, time
from pathlib import Path
from localbackend import LocalBackend
script, folder, marker = sys.argv[1:]
backend = LocalBackend(script, experiment_dir=folder, grace_period=30.0)
backend.start_trial({})
backend.start_trial({})
while not all((backend.trial_dir(t) / "ready").exists() for t in (0, 1)):
    time.sleep(0.01)
Path(marker).write_text("")
backend.stop_all()
"""

STUBBORN = """
import os, signal, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
(Path(os.environ["LOCALBACKEND_TRIAL_DIR"]) / "pid").write_text(str(os.getpid()))
(Path(os.environ["LOCALBACKEND_TRIAL_DIR"]) / "ready").write_text("")
time.sleep(600)
"""


def test_sigint_to_the_driver_during_stop_all(tmp_path: Path) -> None:
    script = write_script(tmp_path, "stubborn.py", STUBBORN)
    folder, marker = tmp_path / "exp", tmp_path / "stopping"
    driver = subprocess.Popen(
        [sys.executable, "-c", SIGINT_DRIVER, str(script), str(folder), str(marker)],
        stderr=subprocess.PIPE,
    )
    pids: list[int] = []
    try:
        wait_for(lambda: marker.exists() or driver.poll() is not None, timeout=60,
                 what="the driver to call stop_all")
        pids = [int((folder / str(t) / "pid").read_text()) for t in (0, 1)]
        # stop_all is now waiting out the 30 s grace period of SIGTERM-ignoring trials.
        wait_for(lambda: json.loads((folder / "1" / "status.jsonl").read_text().splitlines()[-1])
                 ["status"] == Status.stopped, what="both trials to be marked Stopped")
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=30) != 0
        wait_gone(pids, timeout=5)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        assert driver.stderr is not None
        driver.stderr.close()
        kill_pids(pids)
    with LocalBackend.restore(folder) as backend:
        statuses, _ = backend.fetch_status_results([0, 1])
        assert [s for _, s in statuses.values()] == [Status.stopped, Status.stopped]
        assert not alive(pids)

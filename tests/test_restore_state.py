"""State that must survive a restore: changed options, detached runs, end times.

Each driver here is a real process that sets the scene and then SIGKILLs
itself; the test restores (or unpickles) the experiment in this process.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend, Status
from localbackend._paths import TrialPaths
from localbackend._types import TrialResult
from localbackend.core._journal import load_state
from localbackend.core._storage import has_checkpoint
from tests.crash_helpers import alive, kill_pids, wait_gone
from tests.helpers import collect, drain, format_logs, script, wait_for, wait_not_busy

# A run that ignores SIGTERM (only its first run of the trial does), so it is
# still ending, and still reporting "after_pause", for the whole grace period.
# Each run reports which processes of earlier runs were alive when it started.
LINGER = """
import os, signal, time
import psutil
from localbackend import report
folder = os.environ["LOCALBACKEND_TRIAL_DIR"]
def living(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
earlier = [int(n.split("-")[1]) for n in os.listdir(folder) if n.startswith("pid-")]
open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
asked = []
if not earlier:
    signal.signal(signal.SIGTERM, lambda signum, frame: asked.append(signum))
report(phase="run", pid=os.getpid(), earlier_alive=[p for p in earlier if living(p)])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    if asked:
        report(phase="after_pause", pid=os.getpid())
    time.sleep(0.05)
"""

# Reports once when started, and once more on SIGTERM, then exits.
LATE = """
import os, signal, sys, time
from localbackend import report
folder = os.environ["LOCALBACKEND_TRIAL_DIR"]
open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
def on_sigterm(signum, frame):
    report(phase="after_pause", pid=os.getpid())
    sys.exit(0)
signal.signal(signal.SIGTERM, on_sigterm)
report(phase="run", pid=os.getpid())
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""


def _script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _pids(folder: Path) -> list[int]:
    return sorted(int(p.rsplit("-", 1)[1]) for p in glob.glob(str(folder / "pid-*")))


def _crash(driver: str, *args: str | Path, logs: Path, cwd: Path | None = None) -> None:
    """Run ``driver`` (Python source) as a driver process that ends by SIGKILL.

    Its stderr goes to a file, not a pipe: a detached supervisor inherits it,
    and a pipe would stay open until the trials end.
    """
    log = logs / "driver-stderr.log"
    with open(log, "wb") as stderr:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(driver), *map(str, args)],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            timeout=120, check=False,
        )
    assert done.returncode == -signal.SIGKILL, (
        f"the driver exited with {done.returncode} instead of being killed:\n"
        + log.read_text(errors="replace")
    )


def _supervisor(experiment: Path) -> list[int]:
    """The PID of the dead driver's supervisor, which outlives it in detach mode."""
    supervisor = load_state(experiment).get("supervisor")
    return [int(supervisor["pid"])] if supervisor else []


class Overlap:
    """Samples, with psutil, whether processes of two runs of one trial ever run at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[list[int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            living = alive(_pids(self.folder))
            if len(living) > 1:
                self.seen.append(living)
            self._stop.wait(0.002)

    def __enter__(self) -> Overlap:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def _ends_every_process(experiment: Path, trial_ids: list[int]) -> Iterator[None]:
    """Detached trials outlive their driver: the test must see them end, or end them."""
    supervisor = _supervisor(experiment)
    try:
        yield
        folders = [experiment / str(t) for t in trial_ids]
        wait_gone([p for f in folders for p in _pids(f)], timeout=10)
        wait_gone(supervisor, timeout=10)
    finally:
        kill_pids([p for t in trial_ids for p in _pids(experiment / str(t))])
        kill_pids(supervisor)


# -- 1. options changed after construction ------------------------------------

OPTIONS_DRIVER = """
import os, pickle, signal, sys
from pathlib import Path
from localbackend import LocalBackend
first, second, experiment, how, out = sys.argv[1:6]
backend = LocalBackend(first, experiment_dir=experiment, grace_period=1)
if how != "unstarted":
    backend.start_trial({})
    while backend.busy_trial_ids():
        backend.wait(1)
    backend.fetch_status_results([0])
# What the Syne Tune adapter and Syne Tune's Tuner do after construction.
backend.delete_checkpoints = True
backend.set_entrypoint(second)
if how != "journal":
    Path(out).write_bytes(pickle.dumps(backend))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("how", ["journal", "pickle", "unstarted"])
def test_options_changed_after_construction_survive_restore_and_unpickling(
    tmp_path: Path, how: str
) -> None:
    first = _script(tmp_path, "first.py", """
        from localbackend import checkpoint, report
        checkpoint.save_json({"which": "first"})
        report(which="first")
    """)
    second = _script(tmp_path, "second.py", """
        import os
        from localbackend import checkpoint, report
        checkpoint.save_json({"which": "second"})
        report(which="second", cwd=os.getcwd())
    """)
    experiment, out = tmp_path / "exp", tmp_path / "backend.pickle"
    driver_cwd = tmp_path / "driver-cwd"
    driver_cwd.mkdir()
    _crash(OPTIONS_DRIVER, first, second, experiment, how, out, logs=tmp_path, cwd=driver_cwd)

    backend = (
        LocalBackend.restore(experiment) if how == "journal" else pickle.loads(out.read_bytes())
    )
    with backend:
        assert backend.delete_checkpoints is True
        assert Path(backend.entrypoint_path()).resolve() == second.resolve()
        trial_id = backend.start_trial({}).trial_id
        statuses, results = drain(backend, [trial_id])
        assert statuses[trial_id][1] == Status.completed, format_logs(backend)
        # The new entry point ran, in the working folder of the driver that
        # created the backend, and its checkpoint went once it completed.
        assert [(r["which"], r["cwd"]) for _, r in results] == [("second", str(driver_cwd))]
        assert not has_checkpoint(TrialPaths(backend.trial_dir(trial_id))), (
            "delete_checkpoints=True was lost: a completed trial kept its checkpoint"
        )


# -- 2. detach mode ----------------------------------------------------------

PAUSE_DRIVER = """
import os, signal, sys
from localbackend import LocalBackend
backend = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=float(sys.argv[3]),
                       detach=True)
backend.start_trial({})
while not backend.wait(30):  # the first result is read, and never fetched
    pass
backend.pause_trial(0)
if sys.argv[4] == "resume":
    backend.resume_trial(0)  # queued by the supervisor behind the run still ending
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("then", ["pause", "resume"])
def test_detached_run_still_ending_after_its_pause_is_reattached_and_waited_for(
    tmp_path: Path, then: str
) -> None:
    grace = 4.0
    script_path, experiment = _script(tmp_path, "linger.py", LINGER), tmp_path / "exp"
    _crash(PAUSE_DRIVER, script_path, experiment, grace, then, logs=tmp_path)
    folder = experiment / "0"
    first = _pids(folder)
    with _ends_every_process(experiment, [0]):
        assert alive(first), "the paused run ended before the test looked: raise the grace"
        with LocalBackend.restore(experiment) as backend:
            statuses, results = backend.fetch_status_results([0])
            assert statuses[0][1] == Status.paused
            # Its processes are still ending: the trial is not free yet.
            assert backend.busy_trial_ids() == [(0, Status.stopping)], alive(first)
            # What it wrote before the pause is owed, once; nothing after.
            assert [r["phase"] for _, r in results] == ["run"], format_logs(backend)
            with Overlap(folder) as overlap:
                backend.resume_trial(0)
                _, later = collect(
                    backend, [0],
                    lambda _s, got: any(r["pid"] not in first for _, r in got),
                )
            assert not overlap.seen, f"runs of trial 0 ran at once: {overlap.seen[:3]}"
            assert [r["phase"] for _, r in later] == ["run"], later
            assert later[0][1]["earlier_alive"] == []
            backend.stop_trial(0)
            _, rest = drain(backend, [0])
            assert rest == []


LATE_DRIVER = """
import os, signal, sys, time
from pathlib import Path
from localbackend import LocalBackend
backend = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=5, detach=True)
backend.start_trial({})
while not backend.wait(30):  # the first result is read, and never fetched
    pass
backend.pause_trial(0)
while backend.busy_trial_ids():  # the run reports again on SIGTERM, then exits
    backend.wait(1)
backend.resume_trial(0)
results = Path(sys.argv[2]) / "0" / "results.jsonl"
deadline = time.monotonic() + 30
while results.read_text().count("\\n") < 3 and time.monotonic() < deadline:
    time.sleep(0.01)  # the resumed run has reported
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_detached_restore_never_delivers_what_a_paused_run_wrote_before_a_resume(
    tmp_path: Path,
) -> None:
    script_path, experiment = _script(tmp_path, "late.py", LATE), tmp_path / "exp"
    _crash(LATE_DRIVER, script_path, experiment, logs=tmp_path)
    with _ends_every_process(experiment, [0]), LocalBackend.restore(experiment) as backend:
        statuses, results = collect(
            backend, [0], lambda _s, got: [r["phase"] for _, r in got].count("run") >= 2
        )
        assert statuses[0][1] == Status.in_progress
        backend.stop_trial(0)  # the re-attached run reports again, after the stop
        _, rest = drain(backend, [0])
        phases = [r["phase"] for _, r in results + rest]
        assert phases == ["run", "run"], format_logs(backend)
        assert len({r["pid"] for _, r in results}) == 2


GPU_DRIVER = """
import os, signal, sys, time
from pathlib import Path
from localbackend import LocalBackend
backend = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=0.5, detach=True,
                       num_gpus=3)
for _ in range(2):
    backend.start_trial({"hold": 1})
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not all(
    (Path(sys.argv[2]) / str(t) / "argv-0.json").exists() for t in range(2)
):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _visible(backend: LocalBackend, trial_id: int, run: int = 0) -> str:
    path = backend.trial_dir(trial_id) / f"argv-{run}.json"
    wait_for(path.exists, what=str(path), on_fail=lambda: format_logs(backend, [trial_id]))
    return str(json.loads(path.read_text())["env"]["CUDA_VISIBLE_DEVICES"])


def _argv_pids(experiment: Path) -> list[int]:
    found = glob.glob(str(experiment / "*" / "argv-*.json"))
    return [int(json.loads(Path(p).read_text())["pid"]) for p in found]


def test_gpus_of_reattached_runs_stay_taken_until_they_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    experiment = tmp_path / "exp"
    _crash(GPU_DRIVER, script("print_argv.py"), experiment, logs=tmp_path)
    supervisor = _supervisor(experiment)
    try:
        with LocalBackend.restore(experiment) as backend:
            assert [_visible(backend, t) for t in (0, 1)] == ["0", "1"]
            assert [s for _, s in backend.fetch_status_results([0, 1])[0].values()] == [
                Status.in_progress, Status.in_progress]
            # GPUs 0 and 1 are held by the re-attached runs: 2 is the free one.
            assert _visible(backend, backend.start_trial({"hold": 1}).trial_id) == "2"
            backend.stop_trial(1)
            wait_not_busy(backend, [1])
            # Trial 1's GPU came back when its re-attached run ended.
            assert _visible(backend, backend.start_trial({"hold": 1}).trial_id) == "1"
            backend.stop_all()
        wait_gone(_argv_pids(experiment) + supervisor, timeout=10)
    finally:
        kill_pids(_argv_pids(experiment) + supervisor)


KEEPER_KILLED_DRIVER = """
import json, os, signal, sys, time
from pathlib import Path
from localbackend import LocalBackend
backend = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], grace_period=1)
backend.start_trial({})
folder = Path(sys.argv[2]) / "0"
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not (folder / "results.jsonl").read_text():
    time.sleep(0.01)
started = json.loads((folder / "run.json").read_text())
# The keeper dies before it can record an exit; its supervisor ends the tree.
os.kill(started["keeper"], signal.SIGKILL)
while time.monotonic() < deadline and os.path.exists(f"/proc/{started['pid']}"):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)
"""

RESTORE_THEN_DIE = """
import os, signal, sys
from localbackend import LocalBackend
LocalBackend.restore(sys.argv[1])  # takes the result in, and dies before delivering it
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_result_owed_after_one_restore_is_still_owed_after_a_second(tmp_path: Path) -> None:
    once = _script(tmp_path, "once.py", """
        import os, time
        from localbackend import report
        open(os.path.join(os.environ["LOCALBACKEND_TRIAL_DIR"], f"pid-{os.getpid()}"), "w").close()
        report(step=1)
        time.sleep(60)
    """)
    experiment = tmp_path / "exp"
    _crash(KEEPER_KILLED_DRIVER, once, experiment, logs=tmp_path)
    try:
        _crash(RESTORE_THEN_DIE, experiment, logs=tmp_path)
        with LocalBackend.restore(experiment) as backend:
            statuses, results = backend.fetch_status_results([0])
            assert statuses[0][1] == Status.paused
            assert [r["step"] for _, r in results] == [1], format_logs(backend)
            assert backend.fetch_status_results([0])[1] == []
    finally:
        kill_pids(_pids(experiment / "0"))


# Reports the cores it may run on, then runs until stopped.
PINNED = """
import os, time
from localbackend import report
folder = os.environ["LOCALBACKEND_TRIAL_DIR"]
open(os.path.join(folder, f"pid-{os.getpid()}"), "w").close()
report(cores=sorted(os.sched_getaffinity(0)))
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

PINNED_DRIVER = """
import os, signal, sys
from localbackend import LocalBackend
backend = LocalBackend(sys.argv[1], experiment_dir=sys.argv[2], detach=True, cpus_per_trial=1)
backend.start_trial({})
while not backend.wait(30):  # its first result is read, and never fetched
    pass
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable cores")
def test_a_reattached_pinned_run_keeps_its_cores_from_the_trials_started_after(
    tmp_path: Path,
) -> None:
    script_path, experiment = _script(tmp_path, "pinned.py", PINNED), tmp_path / "exp"
    _crash(PINNED_DRIVER, script_path, experiment, logs=tmp_path)
    with _ends_every_process(experiment, [0, 1]), LocalBackend.restore(experiment) as backend:
        _, results = backend.fetch_status_results([0])
        assert len(results) == 1, format_logs(backend)
        first = results[0][1]["cores"]
        backend.start_trial({})
        _, later = collect(backend, [1], lambda _s, got: bool(got))
        second = later[0][1]["cores"]
        assert len(first) == len(second) == 1
        assert first != second, (
            f"trial 1 was pinned to core {second}, which the re-attached trial 0 still runs on"
        )
        backend.stop_trial(0)
        backend.stop_trial(1)
        drain(backend, [0, 1])


# -- 3. seconds and training end time ------------------------------------------


def test_seconds_count_whole_days() -> None:
    created = datetime.datetime(2024, 1, 1, 12, 0, 0)
    result = TrialResult(
        trial_id=0, config={}, creation_time=created,
        training_end_time=created + datetime.timedelta(days=2, seconds=5),
    )
    assert result.seconds == 2 * 86400 + 5


def test_training_end_time_is_set_once_a_run_ended_and_survives_restore(
    tmp_path: Path,
) -> None:
    quick = _script(tmp_path, "quick.py", "from localbackend import report\nreport(x=1)\n")
    experiment = tmp_path / "exp"
    with LocalBackend(quick, experiment_dir=experiment) as backend:
        started = backend.start_trial({})
        assert started.training_end_time is None  # it has only just been launched
        statuses, _ = drain(backend, [0])
        trial, status = statuses[0]
        assert status == Status.completed
        end: Any = getattr(trial, "training_end_time", None)
        assert end is not None, "fetch_status_results gave no end time for an ended run"
        assert started.creation_time <= end <= datetime.datetime.now()
    before_restore = datetime.datetime.now()
    with LocalBackend.restore(experiment) as restored:
        trial = restored.fetch_status_results([0])[0][0][0]
        restored_end = getattr(trial, "training_end_time", None)
        # The time the run ended, as recorded then, not the time of the restore.
        assert restored_end is not None
        assert started.creation_time <= restored_end < before_restore
        assert abs((restored_end - end).total_seconds()) < 2.0


def test_syne_tune_adapter_sees_the_training_end_time(tmp_path: Path) -> None:
    pytest.importorskip("syne_tune")
    from localbackend.integrations.syne_tune import SyneTuneBackend

    quick = _script(tmp_path, "quick.py", "from localbackend import report\nreport(x=1)\n")
    with SyneTuneBackend(quick, experiment_dir=tmp_path / "exp") as st_backend:
        st_backend.start_trial({})
        wait_for(
            lambda: st_backend.fetch_status_results([0])[0][0][1] == Status.completed,
            what="the trial to complete",
        )
        wait_not_busy(st_backend, [0])
        trial_result = st_backend._trial_dict[0]
        assert trial_result.training_end_time is not None
        assert trial_result.seconds == int(
            (trial_result.training_end_time - trial_result.creation_time).total_seconds()
        )

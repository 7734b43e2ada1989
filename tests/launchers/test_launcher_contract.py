"""The contract every ``Launcher`` must keep, tested on real process trees.

Each test drives a launcher directly, as the backend does: it builds a
``RunSpec`` for a trial folder, hands it to ``start``, pumps ``events()``
(waking on ``fileno()``) and looks at the files in the trial folder. The
tests are parametrized over the ``launcher_factory`` fixture; everything that
depends on the kind of launcher (how to make one, how to lose its runs,
whether a PID still runs, what GPUs to expect) is in its ``LauncherKit``, so
that a new launcher passes the same test bodies by adding a kit.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, TypeVar

import pytest

from localbackend import LocalBackend, LocalBackendError
from localbackend._paths import ExperimentPaths, TrialPaths
from localbackend.core._command import ENV_DEFAULTS, build_launch_spec
from localbackend.launchers import (
    Launcher,
    LauncherCapabilities,
    LocalLauncher,
    RunEvent,
    RunExited,
    RunHandle,
    RunLost,
    RunNotStarted,
    RunSpec,
    RunStarted,
)
from tests.crash_helpers import alive
from tests.helpers import drain, wait_for

SHARED_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
OWN_SCRIPTS = Path(__file__).resolve().parent / "scripts"
CONTRACT_TRIAL = OWN_SCRIPTS / "contract_trial.py"
SPAWN_TREE = SHARED_SCRIPTS / "spawn_tree.py"
IGNORE_SIGTERM = SHARED_SCRIPTS / "ignore_sigterm.py"
REPORT_THEN_EXIT = SHARED_SCRIPTS / "report_then_exit.py"
FAIL = SHARED_SCRIPTS / "fail.py"

# The processes spawn_tree.py records in pids.json that live until they are ended.
TREE_MEMBERS = ("leader", "setsid_child", "group_child", "grandchild")
# How long anything the tests wait for may take; a deadline, not a guess.
DEADLINE = 20.0

E = TypeVar("E", bound=RunEvent)


# -- what the contract needs to know about each kind of launcher ---------------


@dataclass(frozen=True)
class LauncherKit:
    """Everything the tests need beyond the ``Launcher`` interface.

    ``make`` returns a new launcher, not yet opened. ``lose_runs`` makes what
    supervises the running runs of an open launcher disappear, as a crash
    would. A lost run ends with ``RunLost``, or ``RunExited`` whose
    ``terminated_by`` is one of ``lost_terminated_by``. ``alive`` says which of
    the PIDs a trial recorded still run (zombies count as gone) and ``kill``
    ends them, to clean up after a test that found a tree left behind.
    ``gpu_devices(gpu_env)`` must return ``expected_gpus``.
    """

    make: Callable[[], Launcher]
    lose_runs: Callable[[Launcher], None]
    lost_terminated_by: frozenset[str]
    alive: Callable[[Iterable[int]], list[int]]
    kill: Callable[[Iterable[int]], None]
    gpu_env: Mapping[str, str]
    expected_gpus: list[str]


def _alive_here(pids: Iterable[int]) -> list[int]:
    return alive(list(pids))


def _kill_here(pids: Iterable[int]) -> None:
    for pid in _alive_here(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _kill_local_supervisor(launcher: Launcher) -> None:
    assert isinstance(launcher, LocalLauncher)
    process = launcher.client._process
    assert process is not None, "the supervisor is not running"
    process.kill()


def _local_kit() -> LauncherKit:
    return LauncherKit(
        make=LocalLauncher,
        lose_runs=_kill_local_supervisor,
        lost_terminated_by=frozenset({"supervisor_lost"}),
        alive=_alive_here,
        kill=_kill_here,
        gpu_env={"CUDA_VISIBLE_DEVICES": "0,1"},
        expected_gpus=["0", "1"],
    )


def _dask_kit() -> LauncherKit:
    """DaskLauncher on a LocalCluster of real worker processes, one cluster per test.

    Each launcher has a client of its own, as separate drivers would. Losing
    the runs SIGKILLs the worker processes (their nannies start new ones);
    ``kill`` also closes the cluster, once the test is over.
    """
    pytest.importorskip("distributed")
    import dask
    from distributed import Client, LocalCluster

    from localbackend.launchers.dask import DaskLauncher

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=4, processes=True, host="127.0.0.1",
            dashboard_address=None,
        )

    def lose_runs(launcher: Launcher) -> None:
        with Client(cluster, set_as_default=False) as client:
            pids = client.run(os.getpid)
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)

    def kill_and_close(pids: Iterable[int]) -> None:
        try:
            _kill_here(pids)
        finally:
            cluster.close()
            # The nannies' spawn started multiprocessing's resource tracker,
            # which would otherwise outlive the test.
            from multiprocessing import resource_tracker

            stop = getattr(resource_tracker._resource_tracker, "_stop", None)
            if stop is not None:
                stop()

    return LauncherKit(
        make=lambda: DaskLauncher(cluster.scheduler_address, lease_timeout=3.0),
        lose_runs=lose_runs,
        lost_terminated_by=frozenset({"driver_lost"}),
        alive=_alive_here,
        kill=kill_and_close,
        gpu_env={"CUDA_VISIBLE_DEVICES": "0,1"},
        expected_gpus=[],
    )


KITS: dict[str, Callable[[], LauncherKit]] = {"local": _local_kit, "dask": _dask_kit}


# -- driving a launcher ----------------------------------------------------------


def prepare_trial_folder(paths: TrialPaths) -> None:
    """Create the trial folder and its empty files, as the backend does before a run."""
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (paths.results, paths.stdout, paths.stderr):
        path.touch(mode=0o600)


class EventLog:
    """Every event one launcher has given, and a way to pump it until a condition holds."""

    def __init__(self, launcher: Launcher, factory: LauncherFactory) -> None:
        self.launcher = launcher
        self.factory = factory
        self.seen: list[RunEvent] = []

    def pump(self) -> list[RunEvent]:
        new = self.launcher.events()
        for event in new:
            if isinstance(event, RunStarted):
                self.factory.remember(event.handle.pid)
        self.seen.extend(new)
        return new

    def until(
        self, condition: Callable[[], object], *, what: str, timeout: float = DEADLINE
    ) -> None:
        """Pump ``events()`` until ``condition()`` holds, waiting on ``fileno()`` between."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if condition():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}\n"
                    f"events so far: {self.seen}\n{self.factory.logs()}"
                )
            # Capped: a launcher may also follow runs by polling (attached runs).
            wait = min(remaining, 0.1)
            fd = self.launcher.fileno()
            if fd is None or fd < 0:
                time.sleep(wait)
            else:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(wait * 1000.0)

    def of(self, kind: type[E], trial_id: int, run: int = 0) -> list[E]:
        return [
            e for e in self.seen
            if isinstance(e, kind) and e.trial_id == trial_id and e.run == run
        ]

    def end_of(self, trial_id: int, run: int = 0) -> Optional[RunEvent]:
        """The event that says the run is over (exited, never started, lost), if any."""
        ends = [
            e for e in self.seen
            if isinstance(e, (RunExited, RunNotStarted, RunLost))
            and e.trial_id == trial_id and e.run == run
        ]
        assert len(ends) <= 1, f"run {trial_id}/{run} ended more than once: {ends}"
        return ends[0] if ends else None

    def started(self, trial_id: int, run: int = 0) -> RunStarted:
        self.until(
            lambda: self.of(RunStarted, trial_id, run) or self.end_of(trial_id, run),
            what=f"run {trial_id}/{run} to start",
        )
        started = self.of(RunStarted, trial_id, run)
        assert len(started) == 1, (
            f"run {trial_id}/{run} did not start once: {self.seen}\n{self.factory.logs()}"
        )
        return started[0]

    def ended(self, trial_id: int, run: int = 0, timeout: float = DEADLINE) -> RunEvent:
        self.until(
            lambda: self.end_of(trial_id, run), what=f"run {trial_id}/{run} to end",
            timeout=timeout,
        )
        end = self.end_of(trial_id, run)
        assert end is not None
        return end

    def exited(self, trial_id: int, run: int = 0, timeout: float = DEADLINE) -> RunExited:
        end = self.ended(trial_id, run, timeout)
        assert isinstance(end, RunExited), (
            f"run {trial_id}/{run} ended with {end}, not RunExited\n{self.factory.logs()}"
        )
        return end


@dataclass
class LauncherFactory:
    """Makes launchers of one kind and trial folders for them; ends them all at teardown."""

    kit: LauncherKit
    experiment: ExperimentPaths
    cwd: Path
    made: list[Launcher] = field(default_factory=list)
    sessions: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)

    def new(self, *, detach: bool = False) -> Launcher:
        """A launcher opened as a backend opens it; its sessions go to ``sessions_of``."""
        launcher = self.kit.make()
        self.made.append(launcher)
        sessions: list[dict[str, Any]] = []
        self.sessions[id(launcher)] = sessions
        launcher.open(detach=detach, on_session=sessions.append)
        return launcher

    def sessions_of(self, launcher: Launcher) -> list[dict[str, Any]]:
        return self.sessions[id(launcher)]

    def events(self, launcher: Launcher) -> EventLog:
        return EventLog(launcher, self)

    def trial(self, trial_id: int) -> TrialPaths:
        return self.experiment.trial(trial_id)

    def spec(
        self,
        trial_id: int,
        script: Path,
        config: Mapping[str, Any] | None = None,
        *,
        run: int = 0,
        grace: float = 5.0,
        program: str | None = None,
        env: Mapping[str, str] | None = None,
        env_defaults: Mapping[str, str] | None = None,
    ) -> RunSpec:
        """The ``RunSpec`` the backend would build for ``script`` with ``config``."""
        paths = self.trial(trial_id)
        prepare_trial_folder(paths)
        overrides = dict(env or {})
        launch = build_launch_spec(
            trial_id=trial_id, paths=paths, binary=(sys.executable,), entry_point=script,
            config=dict(config or {}), pass_args_as_json=False, inherited_env={},
            env_overrides=overrides, gpus=None, iteration_start=0,
            run_start_time=time.time(), cwd=self.cwd,
        )
        argv = launch.argv if program is None else (program, *launch.argv[1:])
        return RunSpec(
            trial_id=trial_id, run=run, argv=argv,
            env={k: v for k, v in launch.env.items() if k not in ENV_DEFAULTS or k in overrides},
            cwd=launch.cwd, paths=paths, grace_period=grace,
            env_defaults={**ENV_DEFAULTS, **(env_defaults or {})},
        )

    @staticmethod
    def start(launcher: Launcher, spec: RunSpec) -> None:
        launcher.ensure_ready()
        launcher.start(spec)

    def wait_for_file(self, trial_id: int, name: str) -> Path:
        path = self.trial(trial_id).root / name
        wait_for(path.exists, timeout=DEADLINE, what=str(path), on_fail=self.logs)
        return path

    def touch(self, trial_id: int, name: str) -> None:
        (self.trial(trial_id).root / name).touch()

    def remember(self, *pids: int) -> None:
        """PIDs of trial processes, ended at teardown if a test leaves them running."""
        self.pids.update(pids)

    def tree_pids(self, trial_id: int) -> list[int]:
        """The PIDs spawn_tree.py recorded for its tree (wait for ``pids.json`` first)."""
        recorded = json.loads(self.wait_for_file(trial_id, "pids.json").read_text())
        pids = [int(recorded[name]) for name in TREE_MEMBERS]
        self.remember(*pids)
        return pids

    def logs(self) -> str:
        parts = []
        root = self.experiment.root
        folders = sorted(p for p in root.iterdir() if p.name.isdigit()) if root.exists() else []
        for folder in folders:
            paths = TrialPaths(folder)
            for stream in ("stdout", "stderr"):
                try:
                    text = paths.log(stream).read_text(errors="replace")[-3000:]
                except OSError as err:
                    text = f"<{err}>"
                parts.append(f"--- trial {folder.name} {stream} ---\n{text}")
        return "\n".join(parts)

    def close(self) -> None:
        errors = []
        for launcher in reversed(self.made):
            try:
                launcher.shutdown()
            except Exception as err:  # end the others anyway
                errors.append(err)
        # A tree a launcher left behind (a failed or xfailed test) must not
        # outlive the test; the test itself has already said so.
        self.kit.kill(self.pids)
        if errors:
            raise errors[0]


@pytest.fixture(params=sorted(KITS))
def launcher_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LauncherFactory]:
    factory = LauncherFactory(
        kit=KITS[request.param](), experiment=ExperimentPaths(tmp_path / "experiment"),
        cwd=tmp_path,
    )
    try:
        yield factory
    finally:
        factory.close()


# -- start, results, exit ----------------------------------------------------------


def test_a_run_starts_writes_its_results_and_exits_0(launcher_factory: LauncherFactory) -> None:
    f = launcher_factory
    launcher = f.new()
    spec = f.spec(0, REPORT_THEN_EXIT, {"n": 3, "raw": 1, "hold": 1})
    f.start(launcher, spec)
    log = f.events(launcher)

    started = log.started(0)
    assert (started.handle.trial_id, started.handle.run) == (0, 0)
    f.wait_for_file(0, "reported")  # it now waits at its gate
    assert launcher.is_alive(started.handle)
    results = spec.paths.results.read_text().splitlines()
    assert [json.loads(line) for line in results] == [{"i": 0}, {"i": 1}, {"i": 2}]

    f.touch(0, "release")
    exited = log.exited(0)
    assert (exited.returncode, exited.signal, exited.terminated_by) == (0, None, None)
    assert exited.offsets["results"] == spec.paths.results.stat().st_size
    assert exited.offsets["stdout"] == spec.paths.stdout.stat().st_size
    assert "reported 3 results" in spec.paths.stdout.read_text()
    wait_for(
        lambda: not launcher.is_alive(started.handle), timeout=DEADLINE,
        what="is_alive(handle) to be False after RunExited",
    )
    # Ending a run that has ended is ignored.
    launcher.terminate(0, 0)
    log.pump()
    assert len(log.of(RunExited, 0)) == 1 and not log.of(RunLost, 0)


def test_a_run_gets_its_argv_environment_and_working_folder(
    launcher_factory: LauncherFactory,
) -> None:
    f = launcher_factory
    launcher = f.new()
    shown = ["CONTRACT_SET", "CONTRACT_DEFAULT", "CONTRACT_BOTH", "LOCALBACKEND_TRIAL_ID",
             "LOCALBACKEND_RESULTS_FILE", "PYTHONUNBUFFERED"]
    spec = f.spec(
        0, CONTRACT_TRIAL,
        {"mode": "record", "show": ",".join(shown), "words": "two words; 'q' \"ü\" $HOME"},
        env={"CONTRACT_SET": "set", "CONTRACT_BOTH": "explicit"},
        env_defaults={"CONTRACT_DEFAULT": "default", "CONTRACT_BOTH": "default"},
    )
    f.start(launcher, spec)
    log = f.events(launcher)
    assert log.exited(0).returncode == 0, f.logs()

    seen = json.loads((spec.paths.root / "seen.json").read_text())
    assert seen["argv"] == list(spec.argv[2:])
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(spec.cwd)
    # PYTHONUNBUFFERED is a default: the host's own value, if it has one, wins.
    assert seen["env"].pop("PYTHONUNBUFFERED") is not None
    assert seen["env"] == {
        "CONTRACT_SET": "set", "CONTRACT_DEFAULT": "default", "CONTRACT_BOTH": "explicit",
        "LOCALBACKEND_TRIAL_ID": "0", "LOCALBACKEND_RESULTS_FILE": str(spec.paths.results),
    }


def test_a_run_sees_the_gpus_it_was_given(launcher_factory: LauncherFactory) -> None:
    f = launcher_factory
    launcher = f.new()
    if not launcher.capabilities.host_gpus:
        pytest.skip("the backend hands this launcher no GPUs: its hosts pick their own")
    spec = f.spec(0, CONTRACT_TRIAL, {"mode": "record", "show": "CUDA_VISIBLE_DEVICES"})
    f.start(launcher, replace(spec, gpus=("1", "3")))  # the RunSpec alone says which
    assert f.events(launcher).exited(0).returncode == 0, f.logs()
    seen = json.loads((spec.paths.root / "seen.json").read_text())
    assert seen["env"] == {"CUDA_VISIBLE_DEVICES": "1,3"}


def test_a_launcher_is_opened_before_it_starts_runs(launcher_factory: LauncherFactory) -> None:
    f = launcher_factory
    launcher = f.kit.make()
    f.made.append(launcher)
    with pytest.raises(LocalBackendError, match="open"):
        launcher.start(f.spec(0, CONTRACT_TRIAL, {"mode": "exit", "code": 0}))


@pytest.mark.parametrize(
    ("config", "returncode", "signal_name"),
    [({"mode": "exit", "code": 3}, 3, None), ({"mode": "signal"}, None, "SIGKILL")],
    ids=["exit-3", "self-sigkill"],
)
def test_the_exit_code_or_signal_is_reported(
    launcher_factory: LauncherFactory,
    config: dict[str, Any],
    returncode: Optional[int],
    signal_name: Optional[str],
) -> None:
    f = launcher_factory
    launcher = f.new()
    f.start(launcher, f.spec(0, FAIL, config))
    exited = f.events(launcher).exited(0)
    assert (exited.returncode, exited.signal, exited.terminated_by) == (
        returncode, signal_name, None
    )


# -- pause and stop ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("descendants_ignore_term", "grace"), [("0", 60.0), ("1", 0.5)],
    ids=["tree-ends-on-sigterm", "descendants-ignore-sigterm"],
)
def test_terminate_ends_the_whole_tree(
    launcher_factory: LauncherFactory, descendants_ignore_term: str, grace: float
) -> None:
    """setsid child and double-forked grandchild included.

    With a grace period far beyond the deadline, the tree can only end in
    time if SIGTERM reached every process of it.
    """
    f = launcher_factory
    launcher = f.new()
    f.start(launcher, f.spec(
        0, SPAWN_TREE, {"after": "stay", "descendants_ignore_term": descendants_ignore_term},
        grace=grace,
    ))
    log = f.events(launcher)
    started = log.started(0)
    pids = f.tree_pids(0)
    assert started.handle.pid == pids[0]

    launcher.terminate(0, 0)
    exited = log.exited(0)
    assert exited.terminated_by == "request"
    assert (exited.returncode, exited.signal) == (None, "SIGTERM")
    assert f.kit.alive(pids) == [], "RunExited came while processes of the tree still ran"
    assert (f.trial(0).root / "group-child-got-term").exists()


def test_a_trial_that_ignores_sigterm_is_killed_after_the_grace_period(
    launcher_factory: LauncherFactory,
) -> None:
    f = launcher_factory
    launcher = f.new()
    f.start(launcher, f.spec(0, IGNORE_SIGTERM, grace=0.5))
    log = f.events(launcher)
    log.started(0)
    f.wait_for_file(0, "ready-0")  # its SIG_IGN is in place

    launcher.terminate(0, 0)
    exited = log.exited(0)
    assert (exited.returncode, exited.signal, exited.terminated_by) == (None, "SIGKILL", "request")


def test_terminate_returns_while_the_trial_still_handles_sigterm(
    launcher_factory: LauncherFactory,
) -> None:
    """The trial's SIGTERM handler cannot finish before the test opens its gate."""
    f = launcher_factory
    launcher = f.new()
    f.start(launcher, f.spec(0, CONTRACT_TRIAL, {"mode": "term_gate"}, grace=60.0))
    log = f.events(launcher)
    log.started(0)
    f.wait_for_file(0, "ready")

    returned = threading.Event()

    def terminate() -> None:
        launcher.terminate(0, 0)
        returned.set()

    thread = threading.Thread(target=terminate, name="terminate")
    thread.start()
    try:
        assert returned.wait(DEADLINE), "terminate() waited for the trial's SIGTERM handler"
        f.wait_for_file(0, "term-received")
        assert not (f.trial(0).root / "handler-done").exists()
    finally:
        f.touch(0, "release")
        thread.join()
    exited = log.exited(0)
    assert (exited.returncode, exited.terminated_by) == (0, "request"), f.logs()
    assert (f.trial(0).root / "handler-done").exists()


def test_a_run_of_a_trial_starts_only_after_its_earlier_tree_is_gone(
    launcher_factory: LauncherFactory,
) -> None:
    """A resume while the paused run is in its grace period waits for that run's tree.

    Run 0's main process and its setsid child both outlive SIGTERM, so the
    tree lives until SIGKILL at the end of the grace period; run 1 records
    which of run 0's PIDs are alive when it starts.
    """
    f = launcher_factory
    launcher = f.new()
    grace = 1.0
    f.start(launcher, f.spec(0, CONTRACT_TRIAL, {"mode": "lingering", "run": 0}, grace=grace))
    log = f.events(launcher)
    log.started(0, 0)
    run0 = json.loads(f.wait_for_file(0, "tree-0.json").read_text())
    f.remember(*run0["pids"])

    launcher.terminate(0, 0)
    f.wait_for_file(0, "term-0")  # in its grace period now
    f.start(launcher, f.spec(0, CONTRACT_TRIAL, {"mode": "lingering", "run": 1}, run=1,
                             grace=grace))
    log.started(0, 1)
    run1 = json.loads(f.wait_for_file(0, "tree-1.json").read_text())
    f.remember(*run1["pids"])

    assert run1["earlier_alive"] == [], "run 1 started while run 0's tree still ran"
    exited = log.exited(0, 0)
    assert (exited.signal, exited.terminated_by) == ("SIGKILL", "request")
    launcher.terminate(0, 1)
    log.exited(0, 1)
    assert f.kit.alive(run0["pids"] + run1["pids"]) == []


# -- runs that cannot start, runs that are lost --------------------------------------


@pytest.mark.parametrize(
    "program",
    ["/nonexistent/localbackend-contract-no-such-program", "localbackend-contract-no-such-program"],
    ids=["path", "bare-name"],
)
def test_a_program_that_does_not_exist_does_not_start(
    launcher_factory: LauncherFactory, program: str
) -> None:
    f = launcher_factory
    launcher = f.new()
    launcher.ensure_ready()
    name = "localbackend-contract-no-such-program"
    log = f.events(launcher)
    try:
        launcher.start(f.spec(0, CONTRACT_TRIAL, {"mode": "record"}, program=program))
    except (OSError, LocalBackendError) as err:
        assert name in str(err)
    else:
        ended = log.ended(0, 0)
        assert isinstance(ended, RunNotStarted), f"{ended}\n{f.logs()}"
        assert not ended.cancelled
        assert name in ended.reason
        assert not log.of(RunStarted, 0, 0)
    # The trial can still run: a later run with a program that exists starts.
    f.start(launcher, f.spec(0, CONTRACT_TRIAL, {"mode": "record"}, run=1))
    assert log.exited(0, 1).returncode == 0


def test_runs_whose_supervision_is_lost_end(launcher_factory: LauncherFactory) -> None:
    f = launcher_factory
    launcher = f.new()
    f.start(launcher, f.spec(0, SPAWN_TREE, {"after": "stay", "descendants_ignore_term": "1"}))
    f.start(launcher, f.spec(1, IGNORE_SIGTERM))
    log = f.events(launcher)
    handles = [log.started(0).handle, log.started(1).handle]
    pids = [*f.tree_pids(0), handles[1].pid]
    f.wait_for_file(1, "ready-0")

    f.kit.lose_runs(launcher)
    log.until(
        lambda: all(log.end_of(trial_id) for trial_id in (0, 1)),
        what="every run to be reported lost",
    )
    for trial_id in (0, 1):
        end = log.end_of(trial_id)
        assert isinstance(end, RunLost) or (
            isinstance(end, RunExited) and end.terminated_by in f.kit.lost_terminated_by
        ), end
    wait_for(lambda: not f.kit.alive(pids), timeout=5.0,
             what="the trees of the lost runs to end", on_fail=f.logs)
    wait_for(lambda: not any(launcher.is_alive(h) for h in handles), timeout=5.0,
             what="is_alive to be False for lost runs")


# -- another driver's runs -------------------------------------------------------------


def _start_detached(
    f: LauncherFactory, runs: dict[int, tuple[Path, dict[str, Any]]], grace: float = 5.0
) -> tuple[Launcher, dict[int, RunHandle]]:
    """A detached launcher that starts ``runs`` (trial id -> script, config)."""
    first = f.new(detach=True)
    for trial_id, (script, config) in runs.items():
        f.start(first, f.spec(trial_id, script, config, grace=grace))
    log = f.events(first)
    return first, {trial_id: log.started(trial_id).handle for trial_id in runs}


def test_a_second_launcher_attaches_to_the_runs_of_the_first(
    launcher_factory: LauncherFactory,
) -> None:
    f = launcher_factory
    first, handles = _start_detached(f, {
        0: (REPORT_THEN_EXIT, {"n": 2, "raw": 1, "hold": 1}),
        1: (SPAWN_TREE, {"after": "stay"}),
    })
    f.wait_for_file(0, "reported")
    pids = f.tree_pids(1)
    first.let_go()

    second = f.new(detach=True)
    for trial_id, handle in handles.items():
        assert second.is_alive(handle)
        second.attach(handle, f.trial(trial_id))
    log = f.events(second)

    f.touch(0, "release")
    exited = log.exited(0)
    assert (exited.returncode, exited.terminated_by) == (0, None)
    assert exited.offsets["results"] == f.trial(0).results.stat().st_size

    second.terminate(1, 0)
    exited = log.exited(1)
    assert exited.terminated_by == "request"
    assert f.kit.alive(pids) == []
    wait_for(lambda: not any(second.is_alive(h) for h in handles.values()), timeout=DEADLINE,
             what="is_alive to be False after the attached runs exited")


def test_wait_for_run_end_returns_once_an_ending_run_has_ended(
    launcher_factory: LauncherFactory,
) -> None:
    f = launcher_factory
    first, handles = _start_detached(f, {0: (IGNORE_SIGTERM, {})}, grace=0.5)
    f.wait_for_file(0, "ready-0")
    first.terminate(0, 0)
    first.let_go()

    second = f.new(detach=True)
    second.wait_for_run_end(handles[0], timeout=DEADLINE)
    assert not second.is_alive(handles[0])
    assert f.kit.alive([handles[0].pid]) == []


def test_wait_for_run_end_ends_a_run_by_force_after_the_timeout(
    launcher_factory: LauncherFactory,
) -> None:
    f = launcher_factory
    first, handles = _start_detached(f, {0: (SPAWN_TREE, {"after": "stay"})})
    pids = f.tree_pids(0)
    first.let_go()

    second = f.new(detach=True)
    second.wait_for_run_end(handles[0], timeout=0.2)
    wait_for(lambda: not f.kit.alive(pids), timeout=3.0,
             what="the tree of the run ended by force")
    assert not second.is_alive(handles[0])


def test_wait_for_session_end_ends_a_session_by_force_after_the_timeout(
    launcher_factory: LauncherFactory,
) -> None:
    f = launcher_factory
    first, handles = _start_detached(f, {
        0: (SPAWN_TREE, {"after": "stay", "descendants_ignore_term": "1"}),
        1: (IGNORE_SIGTERM, {}),
    })
    pids = [*f.tree_pids(0), handles[1].pid]
    f.wait_for_file(1, "ready-0")
    sessions = f.sessions_of(first)
    assert sessions, "on_session was not called for the session that ran the trials"
    assert json.loads(json.dumps(sessions)) == sessions, "sessions must be JSON-able"
    first.let_go()

    second = f.new(detach=True)
    for session in sessions:
        second.wait_for_session_end(session, timeout=0.2)
    wait_for(lambda: not f.kit.alive(pids), timeout=5.0,
             what="the trees of the session ended by force", on_fail=f.logs)
    wait_for(lambda: not any(second.is_alive(h) for h in handles.values()), timeout=5.0,
             what="is_alive to be False for the runs of the ended session")


# -- shutdown, capabilities, GPUs ------------------------------------------------------


def test_shutdown_ends_every_run(launcher_factory: LauncherFactory) -> None:
    f = launcher_factory
    launcher = f.new()
    f.start(launcher, f.spec(0, SPAWN_TREE, {"after": "stay", "descendants_ignore_term": "1"},
                             grace=0.5))
    f.start(launcher, f.spec(1, IGNORE_SIGTERM, grace=0.5))
    f.start(launcher, f.spec(2, REPORT_THEN_EXIT, {"n": 1, "hold": 1, "raw": 1}))
    log = f.events(launcher)
    handles = [log.started(trial_id).handle for trial_id in (0, 1, 2)]
    pids = [*f.tree_pids(0), handles[1].pid, handles[2].pid]
    f.wait_for_file(1, "ready-0")
    f.wait_for_file(2, "reported")

    launcher.shutdown()
    assert f.kit.alive(pids) == [], "shutdown() returned while trial processes still ran"
    assert not any(launcher.is_alive(h) for h in handles)


def test_capabilities_and_gpu_devices(launcher_factory: LauncherFactory) -> None:
    f = launcher_factory
    launcher = f.new()
    assert isinstance(launcher.capabilities, LauncherCapabilities)
    assert launcher.gpu_devices(f.kit.gpu_env) == f.kit.expected_gpus
    fd = launcher.fileno()
    assert fd is None or isinstance(fd, int)
    # Opening is lazy, and an unknown run is ignored.
    launcher.terminate(7, 0)
    assert launcher.events() == []
    assert f.sessions_of(launcher) == [], "a session started before the first run"


# -- the backend on an explicit launcher -------------------------------------------------


def test_local_backend_runs_and_restores_on_an_explicit_launcher(
    launcher_factory: LauncherFactory, tmp_path: Path
) -> None:
    make = launcher_factory.kit.make
    experiment = tmp_path / "backend"
    with LocalBackend(REPORT_THEN_EXIT, experiment_dir=experiment, launcher=make()) as backend:
        backend.start_trial({"n": 3, "raw": 1})
        statuses, results = drain(backend, [0], timeout=DEADLINE)
        assert statuses[0][1] == "Completed"
        assert [result["i"] for _, result in results] == [0, 1, 2]

    with LocalBackend.restore(experiment, launcher=make()) as restored:
        statuses, results = restored.fetch_status_results([0])
        assert statuses[0][1] == "Completed"
        assert results == [], "a restore delivered results again"
        restored.start_trial({"n": 2, "raw": 1})
        statuses, results = drain(restored, [1], timeout=DEADLINE)
        assert statuses[1][1] == "Completed"
        assert [(trial_id, result["i"]) for trial_id, result in results] == [(1, 0), (1, 1)]

"""Warm starts (``preload``): a trial forked from the preloaded supervisor looks cold.

Each property is seen from inside the trial (``tests/scripts/warm_probe.py``
writes what it sees to ``facts.json``), for a warm and a cold run of the same
script, and compared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from localbackend import BackendConfigurationError, LocalBackend, Status
from localbackend.launchers.local import ColdStartWarning
from tests.crash_helpers import alive, kill_pids
from tests.helpers import collect, drain, format_logs, script, until_status, wait_for

PROBE = script("warm_probe.py")
REPO = Path(__file__).resolve().parent.parent
STEPS = Path(__file__).resolve().parent / "drivers" / "steps.py"
# Read only when a trial starts, so they differ between any two runs.
_PER_RUN = ("LOCALBACKEND_RUN_START_TIME",)


def _run_probe(
    root: Path, endings: list[str], preload: list[str] | None, **options: Any
) -> tuple[LocalBackend, list[dict[str, Any]], list[warnings.WarningMessage]]:
    """Run the probe once per ending, all at once; the backend is closed on return."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = LocalBackend(
            PROBE, experiment_dir=root, preload=preload, grace_period=5.0, **options
        )
        with backend:
            for ending in endings:
                backend.start_trial({"ending": ending})
            ids = list(range(len(endings)))
            statuses, _ = drain(backend, ids)
            runs = []
            for trial_id in ids:
                trial, status = statuses[trial_id]
                facts_file = backend.trial_dir(trial_id) / "facts.json"
                if not facts_file.exists():
                    raise AssertionError("no facts.json\n" + format_logs(backend, [trial_id]))
                text = facts_file.read_text().replace(str(root), "<EXP>")
                runs.append({
                    "facts": json.loads(text), "status": status, "exit_code": trial.exit_code,
                    "stdout": "".join(backend.stdout(trial_id)),
                    "stderr": "".join(backend.stderr(trial_id)),
                })
    return backend, runs, [w for w in caught if issubclass(w.category, ColdStartWarning)]


def preload_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> None:
    """A module ``name`` with ``text``, importable by the backends a test creates next."""
    folder = tmp_path / "modules"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(folder))


def _comparable(facts: dict[str, Any]) -> dict[str, Any]:
    facts = dict(facts)
    facts.pop("random")
    facts.pop("numpy_random", None)
    facts.pop("torch_seed", None)
    facts["environ"] = {k: v for k, v in facts["environ"].items() if k not in _PER_RUN}
    return facts


def _modes(backend: LocalBackend) -> dict[tuple[int, int], Any]:
    return dict(backend._supervisor.start_modes)


def test_a_warm_trial_sees_what_a_cold_one_sees(tmp_path: Path) -> None:
    cold_backend, cold, _ = _run_probe(tmp_path / "cold", ["ok"], None)
    warm_backend, warm, caught = _run_probe(tmp_path / "warm", ["ok"], ["json", "decimal"])
    assert _modes(warm_backend) == {(0, 0): None}, [str(w.message) for w in caught]
    assert not caught
    assert _modes(cold_backend) == {}
    seen_cold, seen_warm = _comparable(cold[0]["facts"]), _comparable(warm[0]["facts"])
    for key in seen_cold:
        assert seen_warm[key] == seen_cold[key], (
            f"{key}: warm {seen_warm[key]!r}, cold {seen_cold[key]!r}"
        )
    facts = warm[0]["facts"]
    assert facts["session_leader"] and facts["group_leader"]
    assert facts["fds"] == [0, 1, 2, 3]  # 3 is the listing's own descriptor
    assert facts["mask"] == []
    assert facts["handlers"]["SIGTERM"] == str(signal.SIG_DFL)
    assert facts["handlers"]["SIGPIPE"] == str(signal.SIG_IGN)
    assert facts["environ_reaches_children"]
    assert facts["path"][0] == str(PROBE.parent)
    assert facts["name"] == "__main__" and facts["main_is_this"]
    assert warm[0]["stdout"] == cold[0]["stdout"] and warm[0]["stderr"] == cold[0]["stderr"]


def test_random_states_are_reseeded_and_blas_gets_its_threads_back(tmp_path: Path) -> None:
    _, cold, _ = _run_probe(tmp_path / "cold", ["numpy"], None)
    backend, warm, caught = _run_probe(
        tmp_path / "warm", ["numpy", "numpy"], ["numpy", "numpy.random"]
    )
    assert not caught, [str(w.message) for w in caught]
    assert set(_modes(backend).values()) == {None}
    first, second = warm[0]["facts"], warm[1]["facts"]
    assert first["random"] != second["random"]
    assert first["numpy_random"] != second["numpy_random"]
    # The zygote held OpenBLAS to one thread; each trial has a cold start's count.
    cold_count = cold[0]["facts"]["blas_threads"]
    assert cold_count is not None
    assert first["blas_threads"] == second["blas_threads"] == cold_count


def test_a_python_dash_m_entry_point_starts_warm_as_it_would_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FunctionBackend runs its trials as python -m localbackend._function_trial.
    monkeypatch.chdir(REPO)
    binary = [sys.executable, "-m", "tests.scripts.warm_probe"]
    endings = ["ok", "raise"]
    _, cold, _ = _run_probe(tmp_path / "cold", endings, None, binary=binary)
    backend, warm, caught = _run_probe(tmp_path / "warm", endings, ["json"], binary=binary)
    assert not caught, [str(w.message) for w in caught]
    assert set(_modes(backend).values()) == {None}
    for c, w in zip(cold, warm):
        assert _comparable(w["facts"]) == _comparable(c["facts"])
        assert (w["exit_code"], w["stderr"]) == (c["exit_code"], c["stderr"])
    assert warm[0]["facts"]["path"][0] == str(REPO)
    assert warm[0]["facts"]["argv"][0] == str(PROBE)
    assert "<frozen runpy>" in warm[1]["stderr"]


def test_torch_trials_start_warm_with_their_threads_and_fresh_seeds(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    _, cold, _ = _run_probe(tmp_path / "cold", ["torch"], None)
    backend, warm, caught = _run_probe(tmp_path / "warm", ["torch", "torch"], ["torch"])
    assert not caught, [str(w.message) for w in caught]
    assert set(_modes(backend).values()) == {None}
    first, second = warm[0]["facts"], warm[1]["facts"]
    assert first["torch_seed"] != second["torch_seed"]
    assert first["torch_threads"] == second["torch_threads"] == cold[0]["facts"]["torch_threads"]
    assert not first["torch_cuda_initialized"]
    assert _comparable(first) == _comparable(cold[0]["facts"])


def test_exit_codes_tracebacks_atexit_and_threads_end_as_cold(tmp_path: Path) -> None:
    endings = ["exit3", "message", "raise", "atexit"]
    _, cold, _ = _run_probe(tmp_path / "cold", endings, None)
    backend, warm, caught = _run_probe(tmp_path / "warm", endings, ["json"])
    assert not caught
    assert set(_modes(backend).values()) == {None}
    for ending, c, w in zip(endings, cold, warm):
        assert (w["status"], w["exit_code"]) == (c["status"], c["exit_code"]), ending
        assert w["stdout"] == c["stdout"], ending
        assert w["stderr"] == c["stderr"], ending
    assert [w["exit_code"] for w in warm] == [3, 1, 1, 0]
    assert "ValueError: deliberate" in warm[2]["stderr"]
    assert warm[3]["stdout"].endswith("thread finished\natexit ran\n")


def test_a_warm_trial_ends_on_sigterm_and_resumes_warm_exactly_once(tmp_path: Path) -> None:
    with LocalBackend(STEPS, experiment_dir=tmp_path / "exp", preload=["json"]) as backend:
        backend.start_trial({"steps": 30, "step_seconds": 0.03})
        _, before = collect(backend, [0], lambda s, r: len(r) >= 5)
        backend.pause_trial(0)
        _, during = collect(backend, [0], until_status(Status.paused))
        wait_for(lambda: not backend.busy_trial_ids(), what="the paused run to end")
        paused, late = backend.fetch_status_results([0])
        assert paused[0][0].exit_signal == "SIGTERM"  # default handling, as cold
        backend.resume_trial(0)
        statuses, after = drain(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend, [0])
        steps = [r["step"] for _, r in [*before, *during, *late, *after]]
        assert steps == sorted(set(steps)), steps  # each once, in order
        assert steps[-1] == 30
        assert _modes(backend) == {(0, 0): None, (0, 1): None}
        trial = statuses[0][0]
        assert trial.exit_code == 0


def test_a_stop_right_after_a_warm_start_reaches_only_that_trial(tmp_path: Path) -> None:
    # The keeper signals the trial's process groups as soon as it has the PID;
    # a child not yet in its own session would share the supervisor's group.
    with LocalBackend(STEPS, experiment_dir=tmp_path / "exp", preload=["json"]) as backend:
        backend.start_trial({"steps": 100000, "step_seconds": 0.05})
        collect(backend, [0], lambda s, r: len(r) >= 1)
        for trial_id in range(1, 6):
            backend.start_trial({"steps": 100000, "step_seconds": 0.05})
            backend.stop_trial(trial_id)
        ids = list(range(6))
        wait_for(
            lambda: {t for t, _ in backend.busy_trial_ids()} == {0}, timeout=30,
            what="the stopped trials to end", on_fail=lambda: format_logs(backend, ids),
        )
        statuses, _ = collect(backend, [0], lambda s, r: len(r) >= 3)
        assert statuses[0][1] == Status.in_progress, format_logs(backend, [0])
        assert set(_modes(backend).values()) == {None}


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"binary": [sys.executable, "-u"]}, "passes options to Python"),
        ({"preload": ["no_such_module_for_warm_tests"]}, "importing the preload modules failed"),
        ({"env": {"PYTHONHASHSEED": "7"}}, "PYTHONHASHSEED"),
    ],
)
def test_a_run_that_cannot_start_warm_starts_cold_and_says_so_once(
    tmp_path: Path, options: dict[str, Any], reason: str
) -> None:
    options = {"preload": ["json"], **options}
    preload = options.pop("preload")
    backend, runs, caught = _run_probe(tmp_path / "exp", ["ok", "ok"], preload, **options)
    assert [r["exit_code"] for r in runs] == [0, 0], runs
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert reason in str(caught[0].message)
    modes = _modes(backend)
    assert len(modes) == 2 and all(reason in str(m) for m in modes.values())


def test_a_zygote_with_threads_refuses_to_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preload_module(tmp_path, monkeypatch, "starts_a_thread", (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    ))
    _, runs, caught = _run_probe(tmp_path / "exp", ["ok"], ["starts_a_thread"])
    assert runs[0]["exit_code"] == 0
    assert len(caught) == 1 and "2 threads" in str(caught[0].message)


def test_what_a_preload_module_sets_in_its_process_does_not_reach_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A umask, and a variable in the C environment that os.environ does not list.
    preload_module(tmp_path, monkeypatch, "sets_a_umask",
                   "import os\nos.umask(0o077)\nos.putenv('SET_BY_A_PRELOAD', '1')\n")
    _, cold, _ = _run_probe(tmp_path / "cold", ["ok", "ok"], None)
    backend, warm, caught = _run_probe(tmp_path / "warm", ["ok", "ok"], ["sets_a_umask"])
    assert not caught, [str(w.message) for w in caught]
    assert set(_modes(backend).values()) == {None}
    for run in warm:
        for key in ("umask", "main_names", "annotations", "environ_reaches_children"):
            assert run["facts"][key] == cold[0]["facts"][key], key
    assert cold[0]["facts"]["umask"] != 0o077


@pytest.mark.parametrize(
    ("death", "said"),
    [("os._exit(7)", "exit status 7"), ("os.kill(os.getpid(), signal.SIGSEGV)", "SIGSEGV")],
)
def test_a_preload_module_that_kills_the_supervisor_leaves_every_run_to_start_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, death: str, said: str
) -> None:
    preload_module(tmp_path, monkeypatch, "kills_its_process", f"import os, signal\n{death}\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = LocalBackend(PROBE, experiment_dir=tmp_path / "exp",
                               preload=["kills_its_process"])
        with backend:
            # Both are handed to the supervisor that dies importing the module.
            ids = [backend.start_trial({"ending": "ok"}).trial_id for _ in range(2)]
            statuses, _ = drain(backend, ids)
            ids.append(backend.start_trial({"ending": "ok"}).trial_id)
            statuses, _ = drain(backend, ids)
            assert {statuses[t][1] for t in ids} == {Status.completed}, format_logs(backend, ids)
            modes = _modes(backend)
    cold = [w for w in caught if issubclass(w.category, ColdStartWarning)]
    assert len(cold) == 1, [str(w.message) for w in caught]
    message = str(cold[0].message)
    assert "kills_its_process" in message and said in message
    assert set(modes) == {(0, 0), (1, 0), (2, 0)}
    assert all(reason is not None and said in reason for reason in modes.values())


def test_close_does_not_wait_for_a_preload_import_that_never_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    preload_module(tmp_path, monkeypatch, "never_imports",
                   "import threading\nthreading.Event().wait()\n")
    backend = LocalBackend(PROBE, experiment_dir=tmp_path / "exp", preload=["never_imports"])
    trial_id = backend.start_trial({"ending": "ok"}).trial_id
    supervisor = backend._supervisor._process
    assert supervisor is not None
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(timeout=60)
    assert not closer.is_alive(), "close() waits for an import that never ends"
    assert supervisor.poll() is not None
    assert backend.fetch_status_results([trial_id])[0][trial_id][1] == Status.stopped


@pytest.mark.parametrize(
    ("preload", "problem"),
    [
        ("numpy", "must be a list of module names"),
        (["numpy", "not a name"], "is not a module name"),
        (["numpy", 3], "is not a module name"),
        (["cupy"], "initialises CUDA"),
        (["torch.cuda"], "initialises CUDA"),
    ],
)
def test_bad_preload_lists_are_refused(tmp_path: Path, preload: Any, problem: str) -> None:
    with pytest.raises(BackendConfigurationError, match=problem):
        LocalBackend(PROBE, experiment_dir=tmp_path / "exp", preload=preload)


def test_preload_is_saved_and_restored(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    with LocalBackend(PROBE, experiment_dir=root, preload=["json", "json", "decimal"]) as backend:
        backend.start_trial({"ending": "ok"})
        drain(backend, [0])
    restored = LocalBackend.restore(root)
    try:
        assert restored._o.preload == ("json", "decimal")
    finally:
        restored.close()


_DRIVER = textwrap.dedent("""
    import json, sys, time
    from localbackend import LocalBackend
    root, ready = sys.argv[1], sys.argv[2]
    backend = LocalBackend(sys.argv[3], experiment_dir=root, preload=["json"])
    for _ in range(2):
        backend.start_trial({"steps": 100000, "step_seconds": 0.05})
    got = set()
    while len(got) < 2 or len(backend._supervisor.start_modes) < 2:
        backend.wait(1.0)
        got.update(t for t, _ in backend.fetch_status_results([0, 1])[1])
    pids = [json.load(open(backend.trial_dir(t) / "run.json"))["pid"] for t in (0, 1)]
    modes = list(backend._supervisor.start_modes.values())
    open(ready, "w").write(json.dumps({"pids": pids, "modes": modes}))
    time.sleep(600)
""")


def test_a_killed_driver_leaves_no_warm_trial_behind(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(tmp_path / "exp"), str(ready), str(STEPS)],
        stderr=subprocess.PIPE,
    )
    pids: list[int] = []
    try:
        wait_for(
            lambda: ready.exists() or driver.poll() is not None, timeout=60,
            what="the driver's warm trials",
        )
        assert ready.exists(), driver.communicate()[1].decode(errors="replace")
        seen = json.loads(ready.read_text())
        pids = seen["pids"]
        assert seen["modes"] == [None, None]
        assert len(alive(pids)) == 2
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        wait_for(lambda: not alive(pids), timeout=2.0, what=f"trials {pids} to end with the driver")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        assert driver.stderr is not None
        driver.stderr.close()
        kill_pids(pids)


def test_the_zygote_refuses_to_fork_with_cuda_initialised_or_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Injected faults: no GPU is needed to see that either state means cold.
    from types import SimpleNamespace

    from localbackend.launchers.local import _zygote

    monkeypatch.setattr(_zygote, "thread_count", lambda: 1)  # this test process may have more
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert "CUDA was initialised" in str(_zygote.Zygote.process_reason(["torch"]))
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(_zygote, "_mapped_libraries", lambda: ["/usr/lib/libcuda.so.1"])
    assert "libcuda.so.1" in str(_zygote.Zygote._libraries_reason())


def test_function_backend_trials_start_warm(tmp_path: Path) -> None:
    from localbackend import FunctionBackend
    from tests.test_function_backend import train

    with FunctionBackend(train, experiment_dir=tmp_path / "exp", preload=["json"]) as backend:
        backend.start_trial({"lr": 0.1, "epochs": 3})
        statuses, results = drain(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend, [0])
        assert len(results) >= 3
        assert _modes(backend) == {(0, 0): None}


def test_a_module_of_the_scripts_own_that_shadows_a_preloaded_one_starts_cold(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "argparse.py").write_text("OWN = True\n")
    entry = folder / "uses_its_own_argparse.py"
    entry.write_text(textwrap.dedent("""\
        import argparse
        from localbackend import report
        report(own=getattr(argparse, "OWN", False))
    """))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LocalBackend(entry, experiment_dir=tmp_path / "exp", preload=["json"]) as backend:
            backend.start_trial({})
            statuses, results = drain(backend, [0])
            assert statuses[0][1] == Status.completed, format_logs(backend, [0])
            # What a cold start imports: the script's own argparse.py.
            assert [r[1]["own"] for r in results] == [True], format_logs(backend, [0])
            (reason,) = _modes(backend).values()
    assert "argparse.py would be imported as 'argparse'" in str(reason)
    warned = [w for w in caught if issubclass(w.category, ColdStartWarning)]
    assert len(warned) == 1 and "argparse.py" in str(warned[0].message)


def test_a_script_edited_between_warm_runs_runs_as_edited(tmp_path: Path) -> None:
    # The supervisor compiles the script once for its warm runs; each run
    # still runs the file as it reads then, even an edit of the same size and
    # modification time.
    entry = tmp_path / "edited.py"
    entry.write_text('print("[tune-metric]: {\\"version\\": 1}")\n')
    stamp = entry.stat().st_mtime_ns
    with LocalBackend(entry, experiment_dir=tmp_path / "exp", preload=["json"]) as backend:
        backend.start_trial({})
        first, _ = drain(backend, [0])
        entry.write_text('print("[tune-metric]: {\\"version\\": 2}")\n')
        os.utime(entry, ns=(stamp, stamp))
        backend.start_trial({})
        second, _ = drain(backend, [1])
        logs = format_logs(backend, [0, 1])
        assert [first[0][1], second[1][1]] == [Status.completed, Status.completed], logs
        assert "".join(backend.stdout(0)).strip().endswith('{"version": 1}'), logs
        assert "".join(backend.stdout(1)).strip().endswith('{"version": 2}'), logs
        assert _modes(backend) == {(0, 0): None, (1, 0): None}


def test_a_script_that_warns_as_it_compiles_warns_on_the_trials_stderr_as_cold(
    tmp_path: Path,
) -> None:
    # An invalid escape sequence: a SyntaxWarning from Python 3.12 on (a
    # DeprecationWarning, hidden by default, before).
    entry = tmp_path / "escape.py"
    entry.write_text('pattern = "\\d"\nprint("[tune-metric]: {\\"ok\\": 1}")\n')
    stderr = {}
    for mode, preload in (("cold", None), ("warm", ["json"])):
        with LocalBackend(entry, experiment_dir=tmp_path / mode, preload=preload) as backend:
            for trial_id in (0, 1):  # the second warm run finds the script compiled before
                backend.start_trial({})
                statuses, _ = drain(backend, [trial_id])
                assert statuses[trial_id][1] == Status.completed, format_logs(backend)
            stderr[mode] = ["".join(backend.stderr(t)) for t in (0, 1)]
            if preload:
                assert set(_modes(backend).values()) == {None}
    assert stderr["warm"] == stderr["cold"]
    if sys.version_info >= (3, 12):
        assert "SyntaxWarning" in stderr["warm"][1]


def test_a_warm_run_lists_what_its_script_imported_after_the_fork(tmp_path: Path) -> None:
    # For check --preload: the variable names a folder, the warm run writes
    # there the modules its script imported itself (not its own modules, not
    # the preloaded ones), whatever odd entries it left in sys.modules, and
    # the script never sees the variable.
    (tmp_path / "helper_mod.py").write_text("VALUE = 1\n")
    entry = tmp_path / "imports.py"
    entry.write_text(textwrap.dedent("""
        import decimal, json, os, sys, psutil, helper_mod

        class Odd:
            def __getattr__(self, name):
                raise RuntimeError("no attribute may be read from me")

        sys.modules["odd_entry"] = Odd()
        sys.modules[("not", "a", "name")] = Odd()
        seen = os.environ.get("LOCALBACKEND_WARM_IMPORTS")
        print("[tune-metric]: " + json.dumps({"seen": seen}))
    """))
    folder = tmp_path / "imports"
    folder.mkdir()
    with LocalBackend(
        entry, experiment_dir=tmp_path / "exp", preload=["decimal"],
        env={"LOCALBACKEND_WARM_IMPORTS": str(folder)},
    ) as backend:
        backend.start_trial({})
        statuses, results = drain(backend, [0])
        logs = format_logs(backend, [0])
        assert _modes(backend) == {(0, 0): None}, logs
    assert statuses[0][1] == Status.completed and statuses[0][0].exit_code == 0, logs
    assert [r["seen"] for _, r in results] == [None], logs
    imported = json.loads((folder / "0-0.json").read_text())
    assert "psutil" in imported, imported
    assert not {"decimal", "helper_mod", "odd_entry", "__main__"} & set(imported), imported


def test_a_check_run_that_starts_cold_does_not_see_the_imports_folder(tmp_path: Path) -> None:
    entry = tmp_path / "seen.py"
    entry.write_text(
        'import json, os\nseen = os.environ.get("LOCALBACKEND_WARM_IMPORTS")\n'
        'print("[tune-metric]: " + json.dumps({"seen": seen}))\n'
    )
    folder = tmp_path / "imports"
    folder.mkdir()
    # A PYTHON* variable the supervisor started without: the run starts cold.
    env = {"LOCALBACKEND_WARM_IMPORTS": str(folder), "PYTHONWARNINGS": "default"}
    with warnings.catch_warnings(record=True), LocalBackend(
        entry, experiment_dir=tmp_path / "exp", preload=["json"], env=env
    ) as backend:
        warnings.simplefilter("always")
        backend.start_trial({})
        statuses, results = drain(backend, [0])
        logs = format_logs(backend, [0])
        assert _modes(backend)[(0, 0)] is not None, logs
    assert statuses[0][1] == Status.completed, logs
    assert [r["seen"] for _, r in results] == [None], logs
    assert list(folder.iterdir()) == []

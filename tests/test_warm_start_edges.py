"""Warm starts at the edges of "looks like a cold start": the same script, warm and cold.

Each test writes a small script, runs it once cold and once with
``preload``, and compares what the two runs did: their status, exit code and
output, and the facts the script wrote to ``facts.txt`` in its trial folder.
"""

from __future__ import annotations

import ast
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend
from localbackend.launchers.local import ColdStartWarning
from tests.helpers import drain, format_logs

# Writes the script's facts where the test reads them.
# As a Python literal: a test may give the script its own json.py.
FACTS = textwrap.dedent("""\
    import os as _os
    def facts(found):
        folder = _os.environ["LOCALBACKEND_TRIAL_DIR"]
        with open(_os.path.join(folder, "facts.txt"), "w") as out:
            out.write(repr(found))
""")


def _write(folder: Path, name: str, text: str, *, facts: bool = False) -> Path:
    """A file in ``folder``; with ``facts``, a script that can call ``facts(...)``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text((FACTS if facts else "") + textwrap.dedent(text))
    return path


def _run(root: Path, entry: Path, preload: list[str] | None, **options: Any) -> dict[str, Any]:
    """One trial of ``entry`` to its end: what it did, how it started, and the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LocalBackend(entry, experiment_dir=root, preload=preload, grace_period=5.0,
                          **options) as backend:
            backend.start_trial({})
            statuses, _ = drain(backend, [0])
            trial, status = statuses[0]
            facts_file = backend.trial_dir(0) / "facts.txt"
            run = {
                "status": status, "exit_code": trial.exit_code, "signal": trial.exit_signal,
                "stdout": "".join(backend.stdout(0)), "stderr": "".join(backend.stderr(0)),
                "facts": ast.literal_eval(facts_file.read_text()) if facts_file.exists() else None,
                "modes": dict(backend._supervisor.start_modes),
                "logs": format_logs(backend, [0]),
            }
    run["cold_warnings"] = [
        str(w.message) for w in caught if issubclass(w.category, ColdStartWarning)]
    return run


def _cold_and_warm(
    tmp_path: Path, entry: Path, preload: list[str], **options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    cold = _run(tmp_path / "cold", entry, None, **options)
    warm = _run(tmp_path / "warm", entry, preload, **options)
    return cold, warm


def _started_warm(run: dict[str, Any]) -> None:
    assert run["modes"] == {(0, 0): None}, (run["modes"], run["cold_warnings"], run["logs"])


@pytest.mark.parametrize("ending", ["sys.stdout.close()", "sys.stdout = None",
                                    "sys.stderr.close()", "sys.stderr = None"])
def test_a_script_that_closes_or_drops_a_standard_stream_ends_as_it_would_cold(
    tmp_path: Path, ending: str
) -> None:
    entry = _write(tmp_path / "src", "closes.py", f"""\
        import sys
        print("hello", flush=True)
        {ending}
    """)
    cold, warm = _cold_and_warm(tmp_path, entry, ["json"])
    _started_warm(warm)
    assert (cold["status"], cold["exit_code"]) == ("Completed", 0), cold["logs"]
    assert (warm["status"], warm["exit_code"], warm["stdout"], warm["stderr"]) == (
        cold["status"], cold["exit_code"], cold["stdout"], cold["stderr"]), warm["logs"]


@pytest.mark.parametrize("value", ["2**70", "-2**70", "2**40 + 3"])
def test_an_exit_value_beyond_a_c_long_exits_as_it_would_cold(tmp_path: Path, value: str) -> None:
    entry = _write(tmp_path / "src", "ender.py", f"import sys\nsys.exit({value})\n")
    cold, warm = _cold_and_warm(tmp_path, entry, ["json"])
    _started_warm(warm)
    assert (warm["status"], warm["exit_code"]) == (cold["status"], cold["exit_code"]), (
        cold["logs"], warm["logs"])


def test_a_relative_pythonpath_entry_is_found_from_the_trials_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in `PYTHONPATH=. python tune.py` from a project folder: a cold
    # `python scripts/train.py` has the project folder on sys.path.
    project = tmp_path / "project"
    _write(project, "mylib.py", "VALUE = 'from the project'\n")
    entry = _write(project / "scripts", "train.py", """\
        import sys
        try:
            import mylib
            value = mylib.VALUE
        except ImportError as error:
            value = f"ImportError: {error}"
        facts({"value": value, "path": sys.path})
    """, facts=True)
    monkeypatch.chdir(project)
    monkeypatch.setenv("PYTHONPATH", ".")
    cold, warm = _cold_and_warm(tmp_path, entry, ["json"])
    _started_warm(warm)
    assert cold["facts"]["value"] == "from the project", cold["logs"]
    assert warm["facts"] == cold["facts"]


@pytest.mark.parametrize("name", ["random", "json", "shutil"])
def test_a_file_next_to_the_script_named_as_a_module_the_supervisor_imported_starts_cold(
    tmp_path: Path, name: str
) -> None:
    # A cold start imports the script's own random.py; a warm one would find
    # the supervisor's module in sys.modules, so the run starts cold, and says why.
    folder = tmp_path / "src"
    _write(folder, f"{name}.py", "OWN = True\n")
    entry = _write(folder, "shadowed.py", f"""\
        import {name}
        facts({{"own": getattr({name}, "OWN", False)}})
    """, facts=True)
    cold, warm = _cold_and_warm(tmp_path, entry, ["decimal"])
    assert cold["facts"] == {"own": True}, cold["logs"]
    assert warm["facts"] == {"own": True}, warm["logs"]
    assert warm["modes"][(0, 0)] is not None
    assert len(warm["cold_warnings"]) == 1
    assert f"{name}.py" in warm["cold_warnings"][0]


def test_a_sibling_module_with_a_name_of_its_own_still_starts_warm(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    _write(folder, "my_helpers_module.py", "OWN = True\n")
    _write(folder / "pkg_without_init", "part.py", "")
    entry = _write(folder, "plain.py", """\
        import my_helpers_module
        facts({"own": my_helpers_module.OWN})
    """, facts=True)
    warm = _run(tmp_path / "warm", entry, ["decimal"])
    _started_warm(warm)
    assert warm["facts"] == {"own": True}


def test_the_trials_tz_sets_its_local_time_as_it_would_cold(tmp_path: Path) -> None:
    entry = _write(tmp_path / "src", "zone.py", """\
        import time
        facts({"tzname": list(time.tzname), "timezone": time.timezone,
               "offset": time.strftime("%z", time.localtime(0))})
    """, facts=True)
    cold, warm = _cold_and_warm(tmp_path, entry, ["json"], env={"TZ": "XYZ-9"})
    _started_warm(warm)
    assert cold["facts"]["offset"] == "+0900", cold["logs"]
    assert warm["facts"] == cold["facts"]


def test_a_stdout_that_cannot_be_flushed_at_exit_ends_as_it_would_cold(tmp_path: Path) -> None:
    entry = _write(tmp_path / "src", "full.py", """\
        import sys
        sys.stdout = open("/dev/full", "w")
        print("lost")
    """)
    cold, warm = _cold_and_warm(tmp_path, entry, ["json"])
    _started_warm(warm)
    assert cold["exit_code"] == 120 and "No space left on device" in cold["stderr"], cold["logs"]
    assert (warm["status"], warm["exit_code"], warm["stderr"]) == (
        cold["status"], cold["exit_code"], cold["stderr"]), warm["logs"]


def test_faulthandler_enabled_by_a_preload_module_is_off_in_the_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal handler of a preload module, like any other: a cold start of a
    # script that does not import that module has none.
    src = tmp_path / "src"
    _write(src, "crash_reports.py", "import faulthandler\nfaulthandler.enable()\n")
    entry = _write(src, "probe.py", """\
        import faulthandler
        with open("/proc/self/status") as status:
            caught = next(line for line in status if line.startswith("SigCgt:"))
        facts({"enabled": faulthandler.is_enabled(), "SIGSEGV": bool(int(caught.split()[1], 16)
               & (1 << 10))})
    """, facts=True)
    monkeypatch.setenv("PYTHONPATH", str(src))  # the supervisor imports from the driver's path
    cold, warm = _cold_and_warm(tmp_path, entry, ["crash_reports"])
    _started_warm(warm)
    assert cold["facts"] == {"enabled": False, "SIGSEGV": False}, cold["logs"]
    assert warm["facts"] == cold["facts"], warm["logs"]


def test_pythonfaulthandler_dumps_a_crash_warm_as_it_does_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = _write(tmp_path / "src", "crash.py", "import ctypes\nctypes.string_at(0)\n")
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # in the driver's environment, which both get
    cold, warm = _cold_and_warm(tmp_path, entry, ["ctypes"])
    _started_warm(warm)
    for run in (cold, warm):
        assert run["signal"] == "SIGSEGV", run["logs"]
        assert "Fatal Python error: Segmentation fault" in run["stderr"], run["logs"]

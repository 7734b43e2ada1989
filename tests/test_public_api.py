"""The package's public names: what ``__all__`` lists, what the README lists, what import costs."""

from __future__ import annotations

import builtins
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import localbackend

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()

# Exception classes that never reach a caller, so they are not part of the API.
INTERNAL_ERRORS = {
    # Raised inside the command line and turned into a message and an exit
    # status by ``localbackend.cli.main``, which returns instead of raising.
    "localbackend.cli._common.CliError",
}

# Libraries that ``import localbackend`` must not load.
HEAVY_MODULES = (
    "syne_tune", "optuna", "smac", "ConfigSpace", "ax", "torch", "pandas", "numpy",
    "psutil", "rich", "matplotlib", "filelock",
)


def _run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()[-1]


def _exception_classes() -> tuple[dict[str, str], list[str]]:
    """``{module.Class: Class}`` of every public exception class defined in the package.

    Public: its name has no leading underscore, and it is a
    ``LocalBackendError``, or its module is public (no ``_`` in its dotted
    path), or its module's ``__all__`` lists it. An exception of a private
    module that stays inside the package (``_storage``, ``_supervisor``) is
    not public.

    Walked in a fresh process, because the integration modules import tuner
    libraries that configure logging; modules whose optional dependency is
    missing are returned as skipped.
    """
    found = _run_python(
        """
        import importlib, inspect, json, pkgutil, sys
        import localbackend

        classes, skipped = {}, []
        for info in pkgutil.walk_packages(localbackend.__path__, "localbackend."):
            if info.name.endswith("__main__"):
                continue
            try:
                module = importlib.import_module(info.name)
            except ImportError as err:
                if err.name and not err.name.startswith("localbackend"):
                    skipped.append(f"{info.name} (needs {err.name})")
                    continue
                raise
            private_module = any(part.startswith("_") for part in info.name.split("."))
            listed = getattr(module, "__all__", ())
            for name, value in vars(module).items():
                if (inspect.isclass(value) and issubclass(value, BaseException)
                        and value.__module__ == info.name and not name.startswith("_")
                        and (issubclass(value, localbackend.LocalBackendError)
                             or not private_module or name in listed)):
                    classes[f"{info.name}.{value.__qualname__}"] = name
        print(json.dumps([classes, skipped]))
        """
    )
    classes, skipped = json.loads(found)
    return classes, skipped


def _readme_errors() -> list[str]:
    [paragraph] = [
        p for p in README.split("\n\n")
        if p.startswith("Every error the backend raises on purpose is a `LocalBackendError`")
    ]
    # Built-in exceptions (``ValueError``) are named as base classes, not exported.
    return [
        name for name in re.findall(r"`(\w+Error)`", paragraph) if not hasattr(builtins, name)
    ]


def _errors_in_all() -> set[str]:
    return {
        name for name in localbackend.__all__
        if isinstance(getattr(localbackend, name), type)
        and issubclass(getattr(localbackend, name), BaseException)
    }


def test_every_name_in_all_resolves() -> None:
    for name in localbackend.__all__:
        assert getattr(localbackend, name) is not None, name
    assert sorted(dir(localbackend)) == sorted(localbackend.__all__)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        localbackend.NoSuchName  # noqa: B018


def test_lazy_table_and_all_agree() -> None:
    lazy = set(localbackend._WHERE) | {"checkpoint", "__version__"}
    assert lazy == set(localbackend.__all__)
    assert len(localbackend.__all__) == len(set(localbackend.__all__))


def test_every_public_exception_class_is_exported() -> None:
    classes, skipped = _exception_classes()
    public = {
        path: name for path, name in classes.items()
        if path not in INTERNAL_ERRORS
    }
    missing = sorted(path for path, name in public.items() if name not in localbackend.__all__)
    assert not missing, (
        f"public exceptions missing from localbackend.__all__: {missing}. Export them "
        "(_WHERE, __all__, the README's list of errors), or, for one that never reaches a "
        "caller, add it to INTERNAL_ERRORS in this file with the reason"
    )
    for path, name in public.items():
        exported = getattr(localbackend, name)
        assert f"{exported.__module__}.{exported.__qualname__}" == path
    # Every internal exception named above still exists where it is said to be,
    # unless its module was skipped.
    for path in INTERNAL_ERRORS:
        module = path.rsplit(".", 1)[0]
        assert path in classes or any(s.startswith(module + " ") for s in skipped), (
            f"{path} is listed in INTERNAL_ERRORS but no longer exists; remove it from the list"
        )


def test_every_exported_error_is_a_local_backend_error() -> None:
    for name in _errors_in_all():
        assert issubclass(getattr(localbackend, name), localbackend.LocalBackendError), name


def test_report_error_keeps_its_message_when_its_value_cannot_be_pickled() -> None:
    import pickle

    class Local:
        def __repr__(self) -> str:
            return "<Local>"

    error = localbackend.ReportError("model", Local(), "cannot be written")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is localbackend.ReportError
    assert (copy.key, copy.value, copy.reason) == ("model", "<Local>", "cannot be written")
    assert str(copy) == str(error) == "report(model=<Local>): cannot be written"


def test_exported_errors_are_the_ones_the_readme_lists() -> None:
    listed = _readme_errors()
    assert len(listed) == len(set(listed)), f"the README lists an error twice: {listed}"
    assert set(listed) == _errors_in_all()


def test_every_exported_error_pickles_with_its_attributes() -> None:
    import pickle

    samples: list[BaseException] = [
        localbackend.LocalBackendError("plain"),
        localbackend.TrialNotFoundError(7, 3),
        localbackend.InvalidTransitionError(1, "Completed", "resume", "Start a new trial."),
        localbackend.ConfigError("lr", float("nan"), "not finite", "Use a number."),
        localbackend.EntryPointError("x.py", "does not exist", "Check the path."),
        localbackend.BackendConfigurationError("grace_period", -1, "is negative", "Use 0."),
        localbackend.CheckpointCopyError(0, 1, "disk full", "Free space."),
        localbackend.TrialLaunchError(2, ["python3", "x.py"], "EMFILE", "Raise ulimit -n."),
        localbackend.SupervisorError("the supervisor died"),
        localbackend.ExperimentError("/tmp/e", "is not an experiment", "Check the path."),
        localbackend.ExperimentLockedError("/tmp/e", 123, "host", "2024-01-01"),
        localbackend.ExperimentMovedError("/tmp/e"),
        localbackend.IntegrationError("OptunaRunner", "n_trials=-1 is negative", "Pass 2."),
        localbackend.ReportError("loss", float("nan"), "is not a finite number"),
        localbackend.CheckpointError("no checkpoint folder", "/tmp/ckpt"),
    ]
    assert {type(error).__name__ for error in samples} == _errors_in_all()
    for error in samples:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        attributes = {k: v for k, v in vars(error).items() if k != "value"}
        assert {k: v for k, v in vars(copy).items() if k != "value"} == attributes


def test_the_integration_error_is_the_one_the_adapters_raise() -> None:
    from localbackend.integrations import _common

    assert _common.IntegrationError is localbackend.IntegrationError
    assert issubclass(localbackend.IntegrationError, localbackend.LocalBackendError)


def test_import_loads_no_heavy_library_and_changes_nothing() -> None:
    outcome = _run_python(
        f"""
        import json, logging, os, sys
        before = dict(os.environ)
        import localbackend
        after_import = dict(os.environ)
        loaded_by_import = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)
        # The light names, which a trial script or a tuner's error handling uses.
        for name in ("report", "ReportError", "IntegrationError", "LocalBackendError",
                     "Status", "checkpoint"):
            getattr(localbackend, name)
        loaded_by_light_names = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)
        loggers = [logging.getLogger()] + [
            logger for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
        handlers = [(logger.name, repr(h)) for logger in loggers for h in logger.handlers]
        print(json.dumps({{
            "environ_changed": sorted(
                k for k in set(before) | set(after_import) if before.get(k) != after_import.get(k)
            ),
            "environ_changed_later": sorted(
                k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)
            ),
            "loaded_by_import": loaded_by_import,
            "loaded_by_light_names": loaded_by_light_names,
            "handlers": handlers,
            "integrations": sorted(m for m in sys.modules if m.startswith("localbackend.integ")),
        }}))
        """
    )
    assert json.loads(outcome) == {
        "environ_changed": [],
        "environ_changed_later": [],
        "loaded_by_import": [],
        "loaded_by_light_names": [],
        "handlers": [],
        "integrations": [],
    }


def test_bare_import_loads_only_the_package_itself() -> None:
    outcome = _run_python(
        """
        import json, sys
        import localbackend
        print(json.dumps(sorted(m for m in sys.modules if m.startswith("localbackend"))))
        """
    )
    assert json.loads(outcome) == ["localbackend"]


def test_a_driver_running_a_trial_loads_only_what_a_trial_needs(tmp_path: Path) -> None:
    """What a start, a wait and a fetch never use stays unimported (the driver's RSS)."""
    script = tmp_path / "trial.py"
    script.write_text('print(\'[tune-metric]: {"x": 1}\')\n')
    outcome = _run_python(
        f"""
        import json, sys
        from localbackend import LocalBackend
        with LocalBackend({str(script)!r}, experiment_dir={str(tmp_path / "exp")!r}) as backend:
            backend.start_trial({{}})
            results, status = [], "InProgress"
            while status == "InProgress":
                backend.wait(timeout=5)
                statuses, new = backend.fetch_status_results([0])
                results += new
                status = statuses[0][1]
        unused = ["logging", "shutil", "socket", "localbackend.core._restore",
                  "localbackend.core._copying"]
        print(json.dumps({{"status": status, "results": len(results),
                          "loaded": [m for m in unused if m in sys.modules]}}))
        """
    )
    assert json.loads(outcome) == {"status": "Completed", "results": 1, "loaded": []}


def test_the_supervisor_loads_no_module_its_keepers_would_pay_for() -> None:
    """Every keeper is a fork of the supervisor: ``threading``'s after-fork work
    would cost each one about 100 page faults before its first line, and
    ``dataclasses`` (with ``inspect``) 0.9 MiB more to fork."""
    outcome = _run_python(
        """
        import json, sys
        from localbackend.launchers.local import _supervisor
        heavy = ("threading", "subprocess", "dataclasses", "inspect")
        print(json.dumps([m for m in heavy if m in sys.modules]))
        """
    )
    assert json.loads(outcome) == []


def test_the_supported_python_versions_agree_everywhere() -> None:
    """pyproject's classifiers name the versions ``.ci/run`` tests; the rest must follow them."""
    import configparser
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    named = sorted(
        tuple(int(part) for part in c.rsplit(" ", 1)[1].split("."))
        for c in pyproject["project"]["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: \d+\.\d+", c)
    )
    assert named, "pyproject.toml names no Python version"
    (major, low), (_, high) = named[0], named[-1]
    assert named == [(major, minor) for minor in range(low, high + 1)]
    assert pyproject["project"]["requires-python"] == f">={major}.{low},<{major}.{high + 1}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{major}{low}"
    assert pyproject["tool"]["mypy"]["python_version"] == f"{major}.{low}"
    assert sys.version_info[:2] in named, "this Python is not one the project names"

    tox = configparser.ConfigParser()
    tox.read(REPO / "tox.ini")
    envs = [env.strip() for env in tox["tox"]["envlist"].split(",")]
    assert [env for env in envs if env.startswith("py")] == [f"py{a}{b}" for a, b in named]

    spelled = [f"{a}.{b}" for a, b in named]
    listed = ", ".join(spelled[:-1]) + f" or {spelled[-1]}" if len(spelled) > 1 else spelled[0]
    assert f"On a fresh machine with Python {listed}, " in README


def test_a_launch_error_whose_problem_is_a_sentence_has_one_full_stop() -> None:
    error = localbackend.TrialLaunchError(
        0, ["python3"], "the supervisor could not start. Check the process limit.", "Retry.")
    assert str(error) == (
        "cannot start trial 0 ('python3'): the supervisor could not start. Check the process "
        "limit. Retry.")

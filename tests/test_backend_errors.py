"""Bad calls raise an exception of ours that names the bad value, and change nothing."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localbackend import (
    BackendConfigurationError,
    CheckpointCopyError,
    ConfigError,
    EntryPointError,
    ExperimentError,
    InvalidTransitionError,
    LocalBackend,
    LocalBackendError,
    Status,
    TrialNotFoundError,
)
from tests.helpers import (
    collect,
    remove_tree_under_writers,
    script,
    status_history,
    wait_for_trial_file,
    wait_not_busy,
)

GRACE = 0.5


def listing(root: Path) -> list[str]:
    """Every path under ``root``, to show that nothing was created or removed."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def check_error(error: BaseException, kind: type[BaseException], named: str) -> None:
    assert type(error) is kind or isinstance(error, kind), repr(error)
    assert isinstance(error, LocalBackendError), repr(error)
    assert named in str(error), f"{named!r} not in {str(error)!r}"
    # Errors carry their data and survive pickling (tuners save their state).
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy).keys() == vars(error).keys()
    assert all(
        repr(value) == repr(vars(error)[key])
        for key, value in vars(copy).items()
        if isinstance(value, (str, int, float, type(None)))
    )


# -- the constructor ----------------------------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


CONSTRUCTOR_CASES: list[tuple[str, dict[str, Any], type[LocalBackendError], str]] = [
    ("missing entry point", {"entry_point": "no-such-script.py"}, EntryPointError,
     "no-such-script.py"),
    ("entry point is a folder", {"entry_point": "{tmp}"}, EntryPointError, "not a file"),
    ("negative grace period", {"grace_period": -1}, BackendConfigurationError, "-1"),
    ("NaN grace period", {"grace_period": float("nan")}, BackendConfigurationError, "nan"),
    ("string grace period", {"grace_period": "10"}, BackendConfigurationError, "'10'"),
    ("experiment_dir is a file", {"experiment_dir": "{file}"}, BackendConfigurationError,
     "a-file"),
    ("missing binary", {"binary": "no-such-python-xyz -u"}, BackendConfigurationError,
     "no-such-python-xyz"),
    ("binary with an unbalanced quote", {"binary": "python3 'oops"}, BackendConfigurationError,
     "'oops"),
    ("binary of the wrong type", {"binary": 3}, BackendConfigurationError, "binary=3"),
    ("no binary and a script that is not executable", {"binary": []}, EntryPointError,
     "not executable"),
    ("negative num_gpus", {"num_gpus": -1}, BackendConfigurationError, "num_gpus=-1"),
    ("zero gpus per trial", {"num_gpus_per_trial": 0}, BackendConfigurationError,
     "num_gpus_per_trial=0"),
    ("env value not a string", {"env": {"OMP_NUM_THREADS": 1}}, BackendConfigurationError,
     "OMP_NUM_THREADS"),
    ("env name with '='", {"env": {"A=B": "x"}}, BackendConfigurationError, "A=B"),
    ("zero threads per trial", {"threads_per_trial": 0}, BackendConfigurationError,
     "threads_per_trial=0"),
    ("threads per trial not a number", {"threads_per_trial": "2"}, BackendConfigurationError,
     "threads_per_trial='2'"),
    ("gpus_to_use out of range", {"num_gpus": 2, "gpus_to_use": [0, 5]},
     BackendConfigurationError, "5"),
]


@pytest.mark.parametrize(
    ("options", "kind", "named"),
    [case[1:] for case in CONSTRUCTOR_CASES],
    ids=[case[0] for case in CONSTRUCTOR_CASES],
)
def test_bad_constructor_arguments(
    options: dict[str, Any],
    kind: type[LocalBackendError],
    named: str,
    tmp_path: Path,
    a_file: Path,
) -> None:
    resolved = {
        key: (value.format(tmp=tmp_path, file=a_file) if isinstance(value, str) else value)
        for key, value in options.items()
    }
    entry_point = resolved.pop("entry_point", script("report_then_exit.py"))
    before = listing(tmp_path)
    with pytest.raises(LocalBackendError) as caught:
        LocalBackend(entry_point, **resolved)
    check_error(caught.value, kind, named)
    assert listing(tmp_path) == before


# -- calls on a live backend ----------------------------------------------------


@pytest.fixture
def live(experiment_dir: Path) -> Iterator[LocalBackend]:
    """A backend with trial 0 Completed, its two results not fetched yet."""
    with LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"n": 2})
        wait_not_busy(backend, [0])
        yield backend


def state_of(backend: LocalBackend) -> tuple[Any, ...]:
    """What a bad call must not change (reading it consumes nothing)."""
    trial = backend._table.records[0]  # read-only peek: fetching would consume results
    return (
        backend.new_trial_id(),
        listing(backend.experiment_dir),
        [h["status"] for h in status_history(backend, 0)],
        backend.busy_trial_ids(),
        backend.entrypoint_path(),
        backend.experiment_dir,
        trial.status,
        dict(trial.config),
    )


Call = Callable[[LocalBackend], Any]

CALL_CASES: list[tuple[str, Call, type[LocalBackendError], str]] = [
    ("pause unknown", lambda b: b.pause_trial(99), TrialNotFoundError, "99"),
    ("stop unknown", lambda b: b.stop_trial(99), TrialNotFoundError, "99"),
    ("resume unknown", lambda b: b.resume_trial(99), TrialNotFoundError, "99"),
    ("fetch unknown", lambda b: b.fetch_status_results([0, 99]), TrialNotFoundError, "99"),
    ("stdout unknown", lambda b: b.stdout(1), TrialNotFoundError, "trial 1"),
    ("stderr unknown", lambda b: b.stderr(1), TrialNotFoundError, "trial 1"),
    ("read_log unknown", lambda b: b.read_log(5), TrialNotFoundError, "5"),
    ("trial_dir negative", lambda b: b.trial_dir(-1), TrialNotFoundError, "-1"),
    ("copy from unknown", lambda b: b.copy_checkpoint(99, 1), TrialNotFoundError, "99"),
    ("copy to unknown", lambda b: b.copy_checkpoint(0, 42), TrialNotFoundError, "42"),
    ("delete unknown", lambda b: b.delete_checkpoint(99), TrialNotFoundError, "99"),
    ("id as str", lambda b: b.pause_trial("0"), TrialNotFoundError, "'0'"),
    ("id as float", lambda b: b.stop_trial(0.0), TrialNotFoundError, "0.0"),
    ("id as bool", lambda b: b.resume_trial(True), TrialNotFoundError, "True"),
    ("id as None", lambda b: b.fetch_status_results([None]), TrialNotFoundError, "None"),
    ("NaN value", lambda b: b.start_trial({"lr": float("nan")}), ConfigError, "nan"),
    ("infinite value", lambda b: b.start_trial({"lr": float("inf")}), ConfigError, "inf"),
    ("object value", lambda b: b.start_trial({"model": object()}), ConfigError, "object"),
    ("set value", lambda b: b.start_trial({"layers": {1, 2}}), ConfigError, "set"),
    ("key with space", lambda b: b.start_trial({"learning rate": 1}), ConfigError,
     "'learning rate'"),
    ("key with leading dash", lambda b: b.start_trial({"-lr": 1}), ConfigError, "'-lr'"),
    ("key not a str", lambda b: b.start_trial({3: 1}), ConfigError, "'3'"),
    ("reserved key", lambda b: b.start_trial({"st_checkpoint_dir": "/x"}), ConfigError,
     "st_checkpoint_dir"),
    ("config not a dict", lambda b: b.start_trial(["lr", 1]), ConfigError, "list"),
    ("start from unknown", lambda b: b.start_trial({"n": 1}, checkpoint_trial_id=99),
     TrialNotFoundError, "99"),
    ("start from no checkpoint", lambda b: b.start_trial({"n": 1}, checkpoint_trial_id=0),
     CheckpointCopyError, "trial 0"),
    ("resume completed", lambda b: b.resume_trial(0), InvalidTransitionError, Status.completed),
    ("copy onto itself", lambda b: b.copy_checkpoint(0, 0), CheckpointCopyError, "trial 0"),
    ("copy without checkpoint", lambda b: b.copy_checkpoint(0, 1), CheckpointCopyError,
     "trial 0"),
    ("bad log stream", lambda b: b.read_log(0, "stdin"), BackendConfigurationError, "stdin"),
    ("negative log offset", lambda b: b.read_log(0, "stdout", -3), BackendConfigurationError,
     "-3"),
    ("negative wait timeout", lambda b: b.wait(-1), BackendConfigurationError, "-1"),
    ("missing new entry point", lambda b: b.set_entrypoint("gone.py"), EntryPointError,
     "gone.py"),
    ("set_path after start", lambda b: b.set_path("/tmp/elsewhere-xyz"), LocalBackendError,
     "/tmp/elsewhere-xyz"),
]


@pytest.mark.parametrize(
    ("call", "kind", "named"),
    [case[1:] for case in CALL_CASES],
    ids=[case[0] for case in CALL_CASES],
)
def test_bad_calls_raise_and_change_nothing(
    live: LocalBackend, call: Call, kind: type[LocalBackendError], named: str
) -> None:
    before = state_of(live)
    with pytest.raises(LocalBackendError) as caught:
        call(live)
    check_error(caught.value, kind, named)
    assert state_of(live) == before
    # Nothing was consumed either: the trial's results are all still there.
    statuses, results = live.fetch_status_results([0])
    assert statuses[0][1] == Status.completed
    assert [r["i"] for _, r in results] == [0, 1]
    assert not Path("/tmp/elsewhere-xyz").exists()


def test_bad_config_before_the_first_trial_creates_no_folder(experiment_dir: Path) -> None:
    with LocalBackend(script("report_then_exit.py"), experiment_dir=experiment_dir) as backend:
        for config in ({"x": float("nan")}, {"bad key": 1}, {"x": object()}):
            with pytest.raises(ConfigError):
                backend.start_trial(config)
        assert backend.new_trial_id() == 0
        assert not experiment_dir.exists()
        with pytest.raises(TrialNotFoundError, match="none yet"):
            backend.pause_trial(0)


def test_bad_new_config_on_resume_keeps_the_trial_paused(experiment_dir: Path) -> None:
    with LocalBackend(
        script("print_argv.py"), experiment_dir=experiment_dir, grace_period=GRACE
    ) as backend:
        backend.start_trial({"hold": 1, "x": "a"})
        wait_for_trial_file(backend, 0, "argv-0.json")
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        history = status_history(backend, 0)
        with pytest.raises(ConfigError, match="'bad key'"):
            backend.resume_trial(0, new_config={"bad key": 1})
        with pytest.raises(ConfigError, match="nan"):
            backend.resume_trial(0, new_config={"x": float("nan")})
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused
        assert statuses[0][0].config == {"hold": 1, "x": "a"}
        assert status_history(backend, 0) == history
        assert backend.busy_trial_ids() == []
        # The trial can still be resumed properly.
        assert backend.resume_trial(0).status == Status.in_progress
        wait_for_trial_file(backend, 0, "argv-1.json")
        backend.stop_trial(0)


def test_entry_point_removed_after_construction(experiment_dir: Path, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    shutil.copytree(script("report_then_exit.py").parent, scripts)
    entry_point = scripts / "report_then_exit.py"
    with LocalBackend(entry_point, experiment_dir=experiment_dir, grace_period=GRACE) as backend:
        backend.start_trial({"n": 1, "hold": 1})
        collect(backend, [0], lambda _s, r: len(r) == 1)
        backend.pause_trial(0)
        wait_not_busy(backend, [0])
        entry_point.unlink()
        before = state_of(backend)
        with pytest.raises(EntryPointError) as caught:
            backend.start_trial({"n": 1})
        check_error(caught.value, EntryPointError, str(entry_point))
        with pytest.raises(EntryPointError):
            backend.resume_trial(0)
        assert state_of(backend) == before
        statuses, _ = backend.fetch_status_results([0])
        assert statuses[0][1] == Status.paused


def test_an_experiment_folder_deleted_under_the_backend_is_named_as_such(
    experiment_dir: Path,
) -> None:
    backend = LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    )
    try:
        backend.start_trial({"n": 1})
        collect(backend, [0], lambda statuses, _r: statuses[0][1] == Status.completed)
        backend.start_trial({"n": 1, "hold": 1})  # runs until it is stopped
        collect(backend, [1], lambda _s, results: len(results) == 1)
        remove_tree_under_writers(experiment_dir)
        with pytest.raises(ExperimentError) as caught:
            backend.start_trial({"n": 1})
        check_error(caught.value, ExperimentError, str(experiment_dir))
        assert "deleted or moved" in str(caught.value)
        # The start did not make the folder again, to fill it with what no snapshot holds.
        assert not experiment_dir.exists()
    finally:
        # Closing still stops the running trial and lets go of everything (the
        # fixture checks that no process is left), then says what was lost.
        with pytest.raises(ExperimentError, match="deleted or moved"):
            backend.close()


def test_a_with_block_that_raises_keeps_its_error_when_closing_fails_too(
    experiment_dir: Path,
) -> None:
    # The block's error says what went wrong first; closing, which still
    # ends the trial, adds its own failure to it as a note instead of
    # taking its place.
    backend = LocalBackend(
        script("report_then_exit.py"), experiment_dir=experiment_dir, grace_period=GRACE
    )
    with pytest.raises(ValueError, match="the block's own error") as caught, backend:
        backend.start_trial({"n": 1, "hold": 1})
        collect(backend, [0], lambda _s, results: len(results) == 1)
        remove_tree_under_writers(experiment_dir)
        raise ValueError("the block's own error")
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "deleted or moved" in notes and str(experiment_dir) in notes, notes
    assert "ExperimentError" in notes, notes


def test_every_public_error_is_a_local_backend_error() -> None:
    import localbackend

    for name in localbackend.__all__:
        value = getattr(localbackend, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, LocalBackendError), name

"""The paths of a trial: what pathlib would give, without interning the trial's name.

pathlib interns every component of a path it parses: on Python 3.11 when the
path is made, on 3.12 and 3.13 when it is first turned into a string. A
driver makes the paths of thousands of trials, each with a folder name of
its own, so each name would enter the interpreter's table of interned
strings: where it stays for good on 3.12 (interned strings are immortal
there), and where it leaves a tombstone that makes the table grow on 3.11
and 3.13 (``bench/analysis.md``, section 7).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

from localbackend._paths import ExperimentPaths, TrialPaths

FILES = ("config", "command", "stdout", "stderr", "results", "checkpoints",
         "status_history", "exit_status", "run_record", "checkpoint_request", "function")


def interned(number: int) -> bool:
    """Whether the string of ``number`` is in the table of interned strings.

    Names are made from numbers, as the backend makes trial folder names: a
    string written in the source would be interned when it is compiled.
    Call it once per number: a name that is not there yet enters it, for
    good on Python 3.12.
    """
    probe = str(number)  # a new object, never interned before
    return sys.intern(probe) is not probe


def use(paths: TrialPaths) -> list[object]:
    """Everything the driver does with a trial's paths: strings, hashing, equality.

    What it made is returned, to be kept while the name is probed: on Python
    3.11 and 3.13 an interned string leaves the table with its last user.
    """
    made: list[object] = [paths.root, paths.checkpoint_staging(), paths.checkpoint_retired(),
                          paths.log("stdout"), paths.syne_tune_log("stderr")]
    made += [getattr(paths, name) for name in FILES]
    made += [os.fspath(path) for path in made if isinstance(path, Path)]
    made += [str(paths.root), repr(paths), hash(paths)]
    assert paths == TrialPaths.of_trial(paths.experiment_root, paths.trial_id)
    return made


def test_a_probe_sees_what_pathlib_interns(tmp_path: Path) -> None:
    # The control: plain pathlib interns the name on every supported Python,
    # so the test below would see it if our paths did the same.
    kept = tmp_path / str(81234577)
    os.fspath(kept)
    assert interned(81234577)


def test_a_trial_s_paths_do_not_intern_its_folder_name(tmp_path: Path) -> None:
    paths = ExperimentPaths(tmp_path).trial(71234569)
    kept = use(paths)
    paths.forget()
    kept += use(paths)
    paths.keep()
    kept += use(paths)
    assert not interned(71234569)


def test_a_trial_s_paths_are_the_ones_pathlib_makes(tmp_path: Path) -> None:
    paths = ExperimentPaths(tmp_path).trial(12)
    folder = tmp_path / "12"
    assert paths.root == folder and os.fspath(paths.root) == os.fspath(folder)
    assert paths.root.name == "12" and paths.root.parent == tmp_path
    expected = {
        "config": "config.json", "command": "command.json", "stdout": "stdout.log",
        "stderr": "stderr.log", "results": "results.jsonl", "checkpoints": "checkpoints",
        "status_history": "status.jsonl", "exit_status": "exit.json", "run_record": "run.json",
        "checkpoint_request": "checkpoint-request.json", "function": "function.pkl",
    }
    for name, file in expected.items():
        path = getattr(paths, name)
        assert type(path) is type(folder / file), name
        assert path == folder / file and os.fspath(path) == os.fspath(folder / file), name
        assert path.name == file and path.parent == folder, name
        assert path.parts == (folder / file).parts, name
    assert paths.checkpoint_staging().parent == folder
    assert paths.checkpoint_staging().name.startswith(".checkpoints-incoming-")
    assert paths.syne_tune_log("stdout") == folder / "std.out"
    # The paths work as paths: joined, opened, and sent to another process.
    paths.root.mkdir()
    paths.config.write_text("{}")
    assert (paths.root / "config.json").read_text() == "{}"
    assert [p.name for p in paths.root.iterdir()] == ["config.json"]
    assert pickle.loads(pickle.dumps(paths)) == paths
    assert pickle.loads(pickle.dumps(paths.config)) == folder / "config.json"

"""The command line, environment and folder of a trial, built with no process at all."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

from localbackend import BackendConfigurationError, ConfigError, LocalBackendError
from localbackend._paths import TrialPaths
from localbackend.core._command import (
    LaunchSpec,
    build_launch_spec,
    check_entry_point,
    normalize_config,
    parse_binary,
)

AWKWARD_VALUES = [
    "a 0",
    "a'; echo x",
    'say "hi"',
    "x;y && rm -rf ~",
    "line one\nline two",
    "héllo wörld ✓ 日本",
    "-5",
    "--lr",
    "",
    "$HOME `id` $(id)",
    "tab\there",
    "*",
]


def spec_for(
    tmp_path: Path,
    config: dict[str, Any],
    *,
    pass_args_as_json: bool = False,
    inherited_env: dict[str, str] | None = None,
    env_overrides: dict[str, str] | None = None,
    gpus: list[int] | None = None,
    binary: tuple[str, ...] = ("/usr/bin/python3",),
    iteration_start: int = 0,
) -> LaunchSpec:
    return build_launch_spec(
        trial_id=7,
        paths=TrialPaths(tmp_path / "exp" / "7"),
        binary=binary,
        entry_point=tmp_path / "train.py",
        config=config,
        pass_args_as_json=pass_args_as_json,
        inherited_env=inherited_env if inherited_env is not None else {"PATH": "/bin"},
        env_overrides=env_overrides or {},
        gpus=gpus,
        iteration_start=iteration_start,
        run_start_time=1234.5,
        cwd=tmp_path / "work",
    )


def test_each_key_and_value_is_its_own_argv_word(tmp_path: Path) -> None:
    config = {f"k{index}": value for index, value in enumerate(AWKWARD_VALUES)}
    spec = spec_for(tmp_path, config)
    expected = ["/usr/bin/python3", str(tmp_path / "train.py")]
    for key, value in config.items():
        expected += [f"--{key}", value]
    expected += ["--st_checkpoint_dir", str(tmp_path / "exp" / "7" / "checkpoints")]
    assert list(spec.argv) == expected


def test_non_string_values_are_formatted_like_str_and_containers_as_json(
    tmp_path: Path,
) -> None:
    config = {
        "i": 3, "f": 0.1, "neg": -5, "t": True, "n": None, "big": 10**20,
        "lst": [1, "a b", 2.5], "d": {"x": [1, 2], "é": "ü"},
    }
    spec = spec_for(tmp_path, config)
    words = list(spec.argv[2:-2])
    assert words == [
        "--i", "3", "--f", "0.1", "--neg", "-5", "--t", "True", "--n", "None",
        "--big", "100000000000000000000", "--lst", '[1,"a b",2.5]',
        "--d", '{"x":[1,2],"é":"ü"}',
    ]


def test_pass_args_as_json_replaces_config_entries(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {"lr": 0.1, "name": "a 0"}, pass_args_as_json=True)
    trial = tmp_path / "exp" / "7"
    assert list(spec.argv) == [
        "/usr/bin/python3", str(tmp_path / "train.py"),
        "--st_config_json_filename", str(trial / "config.json"),
        "--st_checkpoint_dir", str(trial / "checkpoints"),
    ]


def test_binary_words_come_first(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {"a": 1}, binary=("torchrun", "--standalone", "--nproc_per_node=2"))
    assert spec.argv[:4] == (
        "torchrun", "--standalone", "--nproc_per_node=2", str(tmp_path / "train.py")
    )


def test_environment_carries_the_trial_protocol(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {}, iteration_start=12)
    trial = tmp_path / "exp" / "7"
    env = spec.env
    assert env["LOCALBACKEND_TRIAL_ID"] == "7"
    assert env["LOCALBACKEND_TRIAL_DIR"] == str(trial)
    assert env["LOCALBACKEND_CHECKPOINT_DIR"] == str(trial / "checkpoints")
    assert env["LOCALBACKEND_RESULTS_FILE"] == str(trial / "results.jsonl")
    assert env["LOCALBACKEND_CONFIG_FILE"] == str(trial / "config.json")
    assert env["LOCALBACKEND_ITERATION_START"] == "12"
    assert float(env["LOCALBACKEND_RUN_START_TIME"]) == 1234.5
    # The checkpoint folder in the environment and on the command line agree.
    assert spec.argv[-1] == env["LOCALBACKEND_CHECKPOINT_DIR"]
    assert spec.cwd == tmp_path / "work"


def test_overrides_merge_over_inherited_environment_without_mutating_it(
    tmp_path: Path,
) -> None:
    inherited = {"PATH": "/bin", "KEEP": "kept", "REPLACE": "old"}
    overrides = {"REPLACE": "new", "ADDED": "a b;c"}
    before = (dict(inherited), dict(overrides))
    spec = spec_for(tmp_path, {}, inherited_env=inherited, env_overrides=overrides)
    assert spec.env["KEEP"] == "kept"
    assert spec.env["REPLACE"] == "new"
    assert spec.env["ADDED"] == "a b;c"
    assert (inherited, overrides) == before


def test_backend_variables_win_over_user_overrides(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {}, env_overrides={"LOCALBACKEND_TRIAL_ID": "99"})
    assert spec.env["LOCALBACKEND_TRIAL_ID"] == "7"


def test_cuda_visible_devices_only_when_gpus_are_assigned(tmp_path: Path) -> None:
    assert "CUDA_VISIBLE_DEVICES" not in spec_for(tmp_path, {}, gpus=None).env
    assert "CUDA_VISIBLE_DEVICES" not in spec_for(tmp_path, {}, gpus=[]).env
    assert spec_for(tmp_path, {}, gpus=[2, 3]).env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_python_output_is_unbuffered_unless_set(tmp_path: Path) -> None:
    assert spec_for(tmp_path, {}).env["PYTHONUNBUFFERED"] == "1"
    kept = spec_for(tmp_path, {}, inherited_env={"PYTHONUNBUFFERED": ""})
    assert kept.env["PYTHONUNBUFFERED"] == ""


def test_launch_spec_is_frozen(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, {"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.argv = ()  # type: ignore[misc]


def test_building_a_spec_writes_nothing(tmp_path: Path) -> None:
    spec_for(tmp_path, {"a": 1}, pass_args_as_json=True)
    assert list(tmp_path.iterdir()) == []


# -- normalize_config ---------------------------------------------------------


def test_normalize_config_returns_a_json_clean_copy() -> None:
    nested = {"inner": [1, 2]}
    config = {"a": (1, 2), "b": nested, "c": "x", "d": None, "e": 1.5, "f": False}
    clean = normalize_config(config)
    assert clean == {
        "a": [1, 2], "b": {"inner": [1, 2]}, "c": "x", "d": None, "e": 1.5, "f": False,
    }
    clean["b"]["inner"].append(3)
    assert nested == {"inner": [1, 2]}


def test_normalize_config_turns_numpy_scalars_into_python_values() -> None:
    numpy = pytest.importorskip("numpy")
    clean = normalize_config({"a": numpy.float32(0.5), "b": numpy.int64(3), "c": numpy.bool_(True)})
    assert clean == {"a": 0.5, "b": 3, "c": True}
    assert [type(v) for v in clean.values()] == [float, int, bool]


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"lr": float("nan")}, "nan"),
        ({"lr": float("inf")}, "inf"),
        ({"lr": -float("inf")}, "-inf"),
        ({"deep": {"x": [1.0, float("nan")]}}, "deep"),
        ({"obj": object()}, "object"),
        ({"s": {1, 2}}, "set"),
        ({"b": b"bytes"}, "bytes"),
        ({"p": Path("/x")}, "PosixPath"),
    ],
    ids=["nan", "inf", "-inf", "nested-nan", "object", "set", "bytes", "path"],
)
def test_values_that_are_not_json_raise_config_error(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_config(config)
    key = next(iter(config))
    assert caught.value.key == key
    assert repr(key) in str(caught.value)
    assert named in str(caught.value)


@pytest.mark.parametrize(
    "key",
    ["with space", "-lead", "--lr", "", "a=b", "semi;colon", "quote'", "1abc", "ünï", "new\nline"],
)
def test_keys_that_cannot_be_option_names_raise_config_error(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_config({key: 1})
    assert repr(key) in str(caught.value)
    assert isinstance(caught.value, LocalBackendError)


def test_non_string_key_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="'1'"):
        normalize_config({1: "x"})


@pytest.mark.parametrize("key", ["st_checkpoint_dir", "st_config_json_filename"])
def test_reserved_keys_raise_config_error(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        normalize_config({key: "/tmp/x"})


@pytest.mark.parametrize("config", [None, [("a", 1)], "a=1", 3])
def test_a_config_that_is_not_a_mapping_raises(config: object) -> None:
    with pytest.raises(ConfigError, match=type(config).__name__):
        normalize_config(config)


def test_valid_option_names_are_accepted() -> None:
    config = {"lr": 1, "_x": 2, "a.b": 3, "n-layers": 4, "A9": 5}
    assert normalize_config(config) == config


# -- parse_binary -------------------------------------------------------------


def test_default_binary_is_the_running_interpreter() -> None:
    assert parse_binary(None) == (sys.executable,)


def test_string_binary_is_split_like_a_shell(tmp_path: Path) -> None:
    assert parse_binary(f"{shlex.quote(sys.executable)} -u -X  dev") == (
        sys.executable, "-u", "-X", "dev",
    )
    assert parse_binary("sh -c 'echo a b'") == ("sh", "-c", "echo a b")


def test_string_binary_may_quote_a_path_with_spaces(tmp_path: Path) -> None:
    folder = tmp_path / "my bin"
    folder.mkdir()
    program = folder / "py thon"
    program.symlink_to(sys.executable)
    assert parse_binary(f"'{program}' -u") == (str(program), "-u")


def test_list_binary_is_kept_word_for_word() -> None:
    words = [sys.executable, "-X", "a b", "it's"]
    assert parse_binary(words) == tuple(words)


@pytest.mark.parametrize("binary", ["", "   ", [], ()])
def test_empty_binary_means_the_entry_point_runs_itself(binary: object) -> None:
    assert parse_binary(binary) == ()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("binary", "named"), [("python3 'unbalanced", "'unbalanced"), (3, "binary=3")]
)
def test_binary_that_cannot_be_split_into_words_is_an_error(binary: object, named: str) -> None:
    with pytest.raises(BackendConfigurationError) as caught:
        parse_binary(binary)  # type: ignore[arg-type]
    assert named in str(caught.value)


def test_missing_program_is_an_error_naming_it() -> None:
    with pytest.raises(BackendConfigurationError, match="no-such-program-xyz"):
        parse_binary("no-such-program-xyz --flag")


def test_program_path_that_is_not_executable_is_an_error(tmp_path: Path) -> None:
    program = tmp_path / "not-executable"
    program.write_text("#!/bin/sh\n")
    os.chmod(program, 0o644)
    with pytest.raises(BackendConfigurationError, match="not-executable"):
        parse_binary([str(program)])


# -- check_entry_point --------------------------------------------------------


def test_entry_point_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert check_entry_point("train.py") == tmp_path / "train.py"


def test_missing_or_folder_entry_point_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LocalBackendError, match=r"missing\.py"):
        check_entry_point(tmp_path / "missing.py")
    with pytest.raises(LocalBackendError, match="not a file"):
        check_entry_point(tmp_path)

"""Tests for the trial-side reporter, localbackend._report."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from localbackend import _report
from localbackend._protocol import (
    ENV_ITERATION_START,
    ENV_RESULTS_FILE,
    ENV_RUN_START_TIME,
    ST_WORKER_ITER,
    ST_WORKER_TIME,
    ST_WORKER_TIMESTAMP,
)
from localbackend._report import Reporter, ReportError

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 30.0


def read_lines(path: Path) -> list[dict[str, Any]]:
    content = path.read_bytes()
    assert content.endswith(b"\n"), content[-200:]
    return [orjson.loads(line) for line in content.splitlines()]


def child_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALBACKEND_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter; subprocess.run kills it on timeout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture
def fresh_reporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make report() build its reporter again from the (patched) environment."""
    for name in (ENV_RESULTS_FILE, ENV_ITERATION_START, ENV_RUN_START_TIME):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_report, "_reporter", None)
    yield
    if _report._reporter is not None:
        _report._reporter.close()


@pytest.mark.usefixtures("fresh_reporter")
def test_report_appends_json_lines_with_worker_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results.jsonl"
    run_start = time.time() - 100.0
    monkeypatch.setenv(ENV_RESULTS_FILE, str(results))
    monkeypatch.setenv(ENV_RUN_START_TIME, repr(run_start))
    before = time.time()
    _report.report(epoch=1, loss=0.5, name="a", ok=True, missing=None, curve=[1, 2.5])
    _report.report(epoch=2, loss=0.25, nested={"a": [1, {"b": 2}]})
    after = time.time()

    first, second = read_lines(results)
    assert first["epoch"] == 1 and first["loss"] == 0.5 and first["name"] == "a"
    assert first["ok"] is True and first["missing"] is None and first["curve"] == [1, 2.5]
    assert second["nested"] == {"a": [1, {"b": 2}]}
    assert [first[ST_WORKER_ITER], second[ST_WORKER_ITER]] == [0, 1]
    for line in (first, second):
        assert before <= line[ST_WORKER_TIMESTAMP] <= after
        assert line[ST_WORKER_TIME] == pytest.approx(line[ST_WORKER_TIMESTAMP] - run_start)


@pytest.mark.usefixtures("fresh_reporter")
def test_iteration_counter_starts_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(ENV_RESULTS_FILE, str(results))
    monkeypatch.setenv(ENV_ITERATION_START, "7")
    for epoch in range(3):
        _report.report(epoch=epoch)
    assert [line[ST_WORKER_ITER] for line in read_lines(results)] == [7, 8, 9]


def test_worker_time_without_run_start_counts_from_reporter_creation(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    created = time.time()
    reporter = Reporter(results)
    try:
        reporter.report(x=1)
    finally:
        reporter.close()
    (line,) = read_lines(results)
    assert 0.0 <= line[ST_WORKER_TIME] <= time.time() - created


def test_user_supplied_worker_fields_win(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    reporter = Reporter(results, iteration_start=3)
    try:
        reporter.report(**{ST_WORKER_ITER: 42, ST_WORKER_TIME: 1.5, ST_WORKER_TIMESTAMP: 2.0})
        reporter.report(loss=1.0)
    finally:
        reporter.close()
    first, second = read_lines(results)
    assert (first[ST_WORKER_ITER], first[ST_WORKER_TIME], first[ST_WORKER_TIMESTAMP]) == (
        42,
        1.5,
        2.0,
    )
    # The counter still advanced for the first line.
    assert second[ST_WORKER_ITER] == 4


def test_numpy_values_are_written_as_plain_json(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    reporter = Reporter(results)
    try:
        reporter.report(
            f32=np.float32(0.5),
            f64=np.float64(0.25),
            i64=np.int64(3),
            flag=np.bool_(True),
            array=np.arange(3, dtype=np.int32),
            matrix=np.eye(2),
            strided=np.arange(6.0)[::2],  # not C-contiguous: orjson alone refuses it
            half=np.float16(1.5),
        )
    finally:
        reporter.close()
    (line,) = read_lines(results)
    assert line["f32"] == 0.5 and line["f64"] == 0.25 and line["i64"] == 3
    assert line["flag"] is True
    assert line["array"] == [0, 1, 2] and line["matrix"] == [[1.0, 0.0], [0.0, 1.0]]
    assert line["strided"] == [0.0, 2.0, 4.0] and line["half"] == 1.5


def test_stdout_fallback_prints_tune_metric_lines(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = Reporter(None, iteration_start=2)
    reporter.report(epoch=1, loss=0.5)
    out = capsys.readouterr().out
    prefix = "[tune-metric]: "
    assert out.startswith(prefix) and out.endswith("\n") and out.count("\n") == 1
    line = orjson.loads(out[len(prefix) :])
    assert line["epoch"] == 1 and line["loss"] == 0.5 and line[ST_WORKER_ITER] == 2


def test_report_without_results_file_prints_in_a_child_process() -> None:
    result = run_python(
        """
        from localbackend._report import report
        report(epoch=1, loss=0.5)
        report(epoch=2, loss=0.25)
        """,
        env=child_env(),
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    parsed = [orjson.loads(line.removeprefix("[tune-metric]: ")) for line in lines]
    assert [p["epoch"] for p in parsed] == [1, 2]
    assert [p[ST_WORKER_ITER] for p in parsed] == [0, 1]


def test_import_does_no_work(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    run_python(
        """
        import os
        import localbackend._report as r
        assert r._reporter is None
        # The environment is read at the first report(), not at import.
        os.environ["LOCALBACKEND_RESULTS_FILE"] = os.environ["LATER"]
        assert not os.path.exists(os.environ["LATER"])
        r.report(x=1)
        """,
        env=child_env(LATER=str(results)),
    )
    assert [line["x"] for line in read_lines(results)] == [1]


@pytest.mark.parametrize(
    ("metrics", "key", "where"),
    [
        ({"loss": float("nan")}, "loss", "loss"),
        ({"loss": float("inf")}, "loss", "loss"),
        ({"ok": 1, "loss": -float("inf")}, "loss", "loss"),
        ({"curve": [0.1, float("nan")]}, "curve", "curve[1]"),
        ({"stats": {"mean": float("nan")}}, "stats", "stats['mean']"),
        ({"loss": np.float32("nan")}, "loss", "loss"),
        ({"grid": np.array([[0.0, 1.0], [np.inf, 2.0]])}, "grid", "grid[1, 0]"),
    ],
)
def test_non_finite_values_raise_report_error(
    tmp_path: Path, metrics: dict[str, Any], key: str, where: str
) -> None:
    results = tmp_path / "results.jsonl"
    reporter = Reporter(results)
    try:
        with pytest.raises(ReportError) as caught:
            reporter.report(**metrics)
        reporter.report(after=1)
    finally:
        reporter.close()
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.key == key
    assert f"{where} is not a finite number" in str(error)
    assert "None" in str(error)  # tells the user what to report instead
    # Nothing was written and the counter did not move.
    (line,) = read_lines(results)
    assert line["after"] == 1 and line[ST_WORKER_ITER] == 0


def test_unserializable_value_raises_report_error_naming_key_and_type(tmp_path: Path) -> None:
    class Model:
        pass

    reporter = Reporter(tmp_path / "results.jsonl")
    try:
        with pytest.raises(ReportError) as caught:
            reporter.report(loss=0.5, model=Model())
    finally:
        reporter.close()
    error = caught.value
    assert error.key == "model" and isinstance(error.value, Model)
    assert "report(model=" in str(error) and "type Model" in str(error)
    assert not (tmp_path / "results.jsonl").exists()


def test_report_error_pickles() -> None:
    error = ReportError("loss", float("inf"), "is not finite")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ReportError
    assert (copy.key, copy.value, copy.reason, str(copy)) == (
        error.key,
        error.value,
        error.reason,
        str(error),
    )

    # A local class cannot be pickled; the copy carries its repr instead.
    class Local:
        def __repr__(self) -> str:
            return "<Local>"

    copy = pickle.loads(pickle.dumps(ReportError("model", Local(), "cannot be written")))
    assert copy.key == "model" and copy.value == "<Local>"


def test_bad_iteration_start_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=ENV_ITERATION_START):
        Reporter.from_environment({ENV_ITERATION_START: "three"})


def test_concurrent_processes_write_whole_lines(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    go = tmp_path / "go"
    writers, reports = 4, 300
    # Lines longer than PIPE_BUF (4096) so that atomicity is not a pipe accident.
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from localbackend._report import report
        writer = int(sys.argv[1])
        deadline = time.monotonic() + {CHILD_TIMEOUT}
        while not os.path.exists({str(go)!r}):  # start together for maximum overlap
            assert time.monotonic() < deadline, "parent never said go"
            time.sleep(0.001)
        for i in range({reports}):
            report(writer=writer, i=i, padding="x" * 6000)
        """
    )
    env = child_env(**{ENV_RESULTS_FILE: str(results)})
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(w)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(writers)
    ]
    try:
        go.touch()
        for child in children:
            out, err = child.communicate(timeout=CHILD_TIMEOUT)
            assert child.returncode == 0, f"stdout:\n{out!r}\nstderr:\n{err.decode()}"
    finally:
        for child in children:
            child.kill()
            child.wait()
    lines = read_lines(results)
    assert len(lines) == writers * reports
    for writer in range(writers):
        mine = [line for line in lines if line["writer"] == writer]
        assert [line["i"] for line in mine] == list(range(reports))
        assert [line[ST_WORKER_ITER] for line in mine] == list(range(reports))
        assert all(len(line["padding"]) == 6000 for line in mine)


def test_forked_child_keeps_reporting_to_the_same_file(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    run_python(
        """
        import os
        from localbackend._report import report
        report(who="parent", step=0)
        pid = os.fork()
        if pid == 0:
            try:
                report(who="child", step=1)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        report(who="parent", step=1)
        """,
        env=child_env(**{ENV_RESULTS_FILE: str(results)}),
    )
    lines = read_lines(results)
    assert [(line["who"], line["step"]) for line in lines] == [
        ("parent", 0),
        ("child", 1),
        ("parent", 1),
    ]
    # Both continue the counter they had at the fork.
    assert [line[ST_WORKER_ITER] for line in lines] == [0, 1, 1]

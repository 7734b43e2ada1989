"""Trial-side reporting: one JSON line per ``report()`` call.

Under localbackend, results are appended to the file named by
``LOCALBACKEND_RESULTS_FILE``. Without it (a script run by hand, or under
Syne Tune) they are printed on stdout as ``[tune-metric]: {json}``, the line
Syne Tune's own ``Reporter`` prints, so one script works everywhere.
"""

from __future__ import annotations

import faulthandler
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson

from localbackend._errors import LocalBackendError, _rebuild
from localbackend._protocol import (
    ENV_ITERATION_START,
    ENV_RESULTS_FILE,
    ENV_RUN_START_TIME,
    ST_WORKER_ITER,
    ST_WORKER_TIME,
    ST_WORKER_TIMESTAMP,
    TUNE_METRIC_PREFIX,
)

__all__ = ["ReportError", "Reporter", "report"]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_PLAIN_SCALARS = (bool, int, float, str, type(None))
_Number = TypeVar("_Number", int, float)


class ReportError(LocalBackendError, ValueError):
    """A value passed to ``report()`` cannot be written as a result."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"report({key}={value!r}): {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The offending value may itself be unpicklable (that is often why it
        # cannot be serialized), so a pickled copy carries its repr instead.
        state = self.__dict__.copy()
        if not isinstance(self.value, _PLAIN_SCALARS):
            state["value"] = repr(self.value)
        return (_rebuild, (type(self), state))


class Reporter:
    """Writes results for one trial process; ``report()`` uses a shared one.

    ``results_file=None`` prints ``[tune-metric]:`` lines on stdout instead.
    The iteration counter starts at ``iteration_start`` so that it carries on
    across a pause and resume.
    """

    def __init__(
        self,
        results_file: str | os.PathLike[str] | None,
        iteration_start: int = 0,
        run_start_time: float | None = None,
    ) -> None:
        self.results_file = None if results_file is None else os.fspath(results_file)
        self.iteration = iteration_start
        self.run_start_time = time.time() if run_start_time is None else run_start_time
        self._fd: int | None = None
        # Threads of one trial may report concurrently; the counter must not
        # hand out the same iteration twice.
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Reporter:
        """Build a reporter from the variables localbackend sets for a trial."""
        env = os.environ if environ is None else environ
        return cls(
            results_file=env.get(ENV_RESULTS_FILE) or None,
            iteration_start=_number_from_env(
                env, ENV_ITERATION_START, int, "an integer", "count iterations from 0"
            ) or 0,
            run_start_time=_number_from_env(
                env, ENV_RUN_START_TIME, float, "a unix time in seconds",
                "measure time from the first report",
            ),
        )

    def report(self, **metrics: Any) -> None:
        """Write one result; see the module-level ``report()``."""
        _check_finite(metrics)
        with self._lock:
            now = time.time()
            record = dict(metrics)
            # A value the user reports under an st_ name wins over ours.
            record.setdefault(ST_WORKER_TIMESTAMP, now)
            record.setdefault(ST_WORKER_TIME, now - self.run_start_time)
            record.setdefault(ST_WORKER_ITER, self.iteration)
            line = _dumps(record, metrics)
            if self.results_file is None:
                print(f"{TUNE_METRIC_PREFIX.decode()} {line.decode()}", flush=True)
            else:
                self._append(line + b"\n")
            self.iteration += 1

    def close(self) -> None:
        """Close the results file; a later ``report()`` reopens it."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _append(self, line: bytes) -> None:
        path = self.results_file
        if path is None:
            return
        if self._fd is not None and not _same_file(path, self._fd):
            # The file was deleted or replaced behind our back: a line written
            # to the old one would never be read, so write to the new one.
            self.close()
        if self._fd is None:
            self._fd = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        # One write on an O_APPEND fd puts the whole line at the end of the
        # file, so lines from several processes never interleave.
        written = os.write(self._fd, line)
        # A short write only happens when the disk is full or similar; finish
        # the line anyway so the reader is not left with a torn last line.
        while written < len(line):
            written += os.write(self._fd, line[written:])


def _same_file(path: str, fd: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


_reporter: Reporter | None = None
_reporter_lock = threading.Lock()


def report(**metrics: Any) -> None:
    """Report one result of the running trial, e.g. ``report(epoch=3, loss=0.25)``.

    The line also gets ``st_worker_timestamp`` (unix time),
    ``st_worker_time`` (seconds since this run of the trial started) and
    ``st_worker_iter`` (0-based, continuing across resumes), unless the
    caller passes those keys itself.

    Values may be ints, floats, strings, bools, None, lists and dicts of
    those, and numpy scalars and arrays. NaN and infinity raise
    ``ReportError``, because JSON cannot hold them and a silent ``null`` would
    look like a missing metric to the scheduler; so does any value that cannot
    be written as JSON.

    Under localbackend the result is appended to ``$LOCALBACKEND_RESULTS_FILE``.
    When that variable is not set (the script is run by hand, or by Syne
    Tune), the result is printed on stdout as ``[tune-metric]: {json}``, which
    is what Syne Tune's ``Reporter`` prints, so the same script works in all
    three places. The environment is read at the first call, not at import.
    """
    global _reporter
    if _reporter is None:
        with _reporter_lock:
            if _reporter is None:
                _reporter = Reporter.from_environment()
                enable_stack_dumps()
    _reporter.report(**metrics)


_stack_dumps_enabled = False


def enable_stack_dumps() -> None:
    """Let the keeper ask a hung trial for its stacks: ``faulthandler`` on SIGUSR1.

    Only in a trial that localbackend runs, and only if nothing else has
    claimed SIGUSR1. On ``heartbeat_timeout`` the keeper sends SIGUSR1 to
    the processes of a hung tree that catch it, and the stacks of every
    thread land in the trial's stderr before it is stopped.
    """
    global _stack_dumps_enabled
    if _stack_dumps_enabled or not os.environ.get(ENV_RESULTS_FILE):
        return
    _stack_dumps_enabled = True
    try:
        # None: a handler installed outside Python, which is not ours to replace.
        if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
            return
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    except (ValueError, OSError, RuntimeError):
        pass  # no stderr to write to, or not allowed here: the trial simply is not asked


def _dumps(record: dict[str, Any], metrics: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, default=_to_builtin, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError as err:
        # orjson does not say which key failed; find it by trying each one.
        for key, value in metrics.items():
            try:
                orjson.dumps(value, default=_to_builtin, option=_JSON_OPTIONS)
            except orjson.JSONEncodeError:
                raise ReportError(
                    key,
                    value,
                    f"a value of type {type(value).__name__} cannot be written as JSON "
                    f"({err}). Report ints, floats, str, bool, None, lists or dicts of "
                    "those, or numpy scalars/arrays; convert other values first, "
                    "e.g. float(x) or str(x).",
                ) from err
        raise


def _to_builtin(value: Any) -> Any:
    # Numpy values orjson cannot take directly (float16, non-contiguous
    # arrays, ...) still convert through tolist().
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _check_finite(metrics: Mapping[str, Any]) -> None:
    for key, value in metrics.items():
        where = _find_non_finite(value, key)
        if where is not None:
            raise ReportError(
                key,
                value,
                f"{where} is not a finite number. Results are JSON, which has no NaN or "
                "infinity; report a finite number, or None when the metric is undefined "
                "(e.g. the loss diverged).",
            )


def _find_non_finite(value: Any, path: str) -> str | None:
    """Path of the first NaN or infinity inside ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_non_finite(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(value, dict):
        for name, item in value.items():
            found = _find_non_finite(item, f"{path}[{name!r}]")
            if found is not None:
                return found
        return None
    dtype = getattr(value, "dtype", None)
    if getattr(dtype, "kind", None) in ("f", "c") and type(value).__module__ == "numpy":
        # numpy is loaded already if the user passed a numpy value.
        import numpy

        finite = numpy.isfinite(value)
        if not finite.all():
            if finite.ndim == 0:
                return path
            position = ", ".join(str(int(i)) for i in numpy.argwhere(~finite)[0])
            return f"{path}[{position}]"
    return None


def _number_from_env(
    env: Mapping[str, str], name: str, parse: Callable[[str], _Number], what: str, unset: str
) -> _Number | None:
    """The number localbackend put in ``env[name]``, or None when it is not set."""
    raw = env.get(name)
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError as err:
        raise ValueError(
            f"Environment variable {name}={raw!r} is not {what}. It is set by "
            f"localbackend; unset it to {unset}."
        ) from err

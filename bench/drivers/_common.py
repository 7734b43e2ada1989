"""Helpers for driver processes.

Only small standard modules are imported (no pathlib, dataclasses or
statistics): the floor's driver is the baseline for peak RSS and CPU, so it
must carry no more than a minimal Popen loop needs.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNE_METRIC = b"[tune-metric]: "


def trial_script(name: str) -> str:
    """Absolute path of a trial script in ``bench/trials``."""
    return os.path.join(BENCH_DIR, "trials", f"{name}.py")


def driver_cpu() -> float:
    """CPU seconds of this process alone (user + system), children excluded."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    """CPU seconds of the children this process has reaped (and what they reaped)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def current_rss() -> float:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


class Measured:
    """``with Measured() as m:``: wall time, driver CPU and reaped children's CPU."""

    def __init__(self) -> None:
        self.wall_s = self.cpu_s = self.children_cpu_s = 0.0
        self._start = (0.0, 0.0, 0.0)

    def __enter__(self) -> Measured:
        self._start = (time.perf_counter(), driver_cpu(), children_cpu())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, cpu, children = self._start
        self.wall_s = time.perf_counter() - wall
        self.cpu_s = driver_cpu() - cpu
        self.children_cpu_s = children_cpu() - children

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "children_cpu_s": self.children_cpu_s}


def wait_until(
    condition: Callable[[], Optional[T]], *, timeout: float, what: str, interval: float = 0.001
) -> T:
    """Poll ``condition`` until it returns something other than None/False, or raise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def process_exited(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


def scratch(params: dict[str, Any], *names: str) -> str:
    """A path inside this driver's scratch folder."""
    return os.path.join(params["scratch"], *names)


def make_localbackend(params: dict[str, Any], script: str, **options: Any) -> Any:
    from localbackend import LocalBackend

    return LocalBackend(
        trial_script(script),
        experiment_dir=scratch(params, "experiment"),
        binary=[params["trial_python"]],
        **options,
    )


def make_syne(params: dict[str, Any], script: str) -> Any:
    import importlib
    import logging

    # Imported by name: Syne Tune is only installed in the venv that runs this.
    syne_backend = importlib.import_module("syne_tune.backend")
    # One INFO line per trial started would go nowhere anyway.
    logging.getLogger("syne_tune").setLevel(logging.WARNING)
    backend = syne_backend.LocalBackend(
        entry_point=trial_script(script), binary=params["trial_python"]
    )
    backend.set_path(results_root=scratch(params, "experiment"))
    return backend


class JsonlTail:
    """The floor's reader of a growing file: a byte offset and whole lines only.

    ``prefix`` keeps only ``[tune-metric]:`` lines of a log; without it every
    line is a JSON object, as in a results file.
    """

    def __init__(
        self, path: str, prefix: bytes = b"", loads: Callable[[bytes], Any] = json.loads
    ) -> None:
        self.path = path
        self.prefix = prefix
        self.loads = loads
        self.offset = 0

    def read(self) -> list[Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            size = os.fstat(fd).st_size
            if size <= self.offset:
                return []
            data = os.pread(fd, size - self.offset, self.offset)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = data[:end].split(b"\n")[:-1]
        loads = self.loads
        if not self.prefix:
            return [loads(line) for line in lines]
        skip = len(self.prefix)
        prefix = self.prefix
        return [loads(line[skip:]) for line in lines if line.startswith(prefix)]


def fast_loads() -> Callable[[bytes], Any]:
    """orjson.loads where orjson is installed (the project venv), else json.loads."""
    try:
        import orjson
    except ImportError:
        return json.loads
    loads: Callable[[bytes], Any] = orjson.loads
    return loads

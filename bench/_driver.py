"""One driver process: ``python -m bench._driver JOB.json RESULT.json``.

The job names a scenario module, a contender and its parameters; the module's
``run_<contender>(params)`` does the work and returns its measurements. This
file adds what the whole process cost (CPU of the driver alone, CPU of the
children it reaped, peak RSS) and writes everything as JSON.

Only the standard library is imported here, so the floor's driver carries no
more than an interpreter and its own code: peak RSS is compared across drivers.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from typing import Any


def peak_rss() -> float:
    """Peak RSS of this process's own address space, in bytes (``VmHWM``).

    Not ``ru_maxrss``: Linux carries that across ``execve``, so it would
    start at the RSS of the process that forked this driver.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return float(int(line.split()[1]) * 1024)
    return float("nan")


def process_usage() -> dict[str, float]:
    """CPU and peak RSS of this process so far, and CPU of the children it reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_s": own.ru_utime + own.ru_stime,
        "children_cpu_s": children.ru_utime + children.ru_stime,
        "peak_rss_bytes": peak_rss(),
    }


def main(argv: list[str]) -> int:
    job_path, result_path = argv[1], argv[2]
    with open(job_path, encoding="utf-8") as job_file:
        job: dict[str, Any] = json.load(job_file)
    output: dict[str, Any] = {"job": job}
    try:
        module = importlib.import_module(f"bench.drivers.{job['module']}")
        run = getattr(module, f"run_{job['contender']}")
        output["measurements"] = run(job["params"])
    except BaseException as err:  # reported to the orchestrator, which shows it
        output["error"] = f"{type(err).__name__}: {err}"
        import traceback

        output["traceback"] = traceback.format_exc()
    output["process"] = process_usage()
    tmp = f"{result_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(output, out)
    os.replace(tmp, result_path)
    return 0 if "error" not in output else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

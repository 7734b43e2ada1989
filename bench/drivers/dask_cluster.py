"""Drivers for the Dask scenario: trivial trials, 2 at a time, on a 2-worker ``LocalCluster``.

Both contenders start the same ``LocalCluster`` (two worker processes, one
thread each) before they are measured, run one trial to warm it, and then
run ``trials`` trivial trials with at most ``concurrency`` running:

* floor: ``client.submit`` of a function that runs ``trials/trivial.py``
  with ``subprocess.run`` on the worker, its output to a file, and
  ``as_completed`` for the next end. It reads no result.
* localbackend: ``LocalBackend`` with a ``DaskLauncher`` on the same kind of
  cluster; ``wait()`` and ``fetch_status_results``. Each result's latency is
  the time from its ``st_worker_timestamp`` (written by the trial) to the
  fetch that handed it to the driver.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from bench.drivers._common import Measured, scratch, trial_script

FINISHED = ("Completed", "Failed", "Stopped")


def _cluster() -> tuple[Any, Any]:
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
    # The default client: as_completed looks for one.
    return Client(cluster), cluster


def run_trivial(argv: list[str], folder: str) -> int:
    """On a worker: one trial with ``subprocess.run``, as a plain Dask user would."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "stdout.log"), "wb") as out, open(
        os.path.join(folder, "stderr.log"), "wb"
    ) as err:
        return subprocess.run(argv, stdout=out, stderr=err, check=False).returncode


def run_floor(params: dict[str, Any]) -> dict[str, Any]:
    from distributed import as_completed

    trials, concurrency = int(params["trials"]), int(params["concurrency"])
    argv = [params["trial_python"], trial_script("trivial")]
    client, cluster = _cluster()
    failed = 0
    try:
        client.submit(run_trivial, argv, scratch(params, "floor", "warm"), pure=False).result()
        with Measured() as meter:
            first = [client.submit(run_trivial, argv, scratch(params, "floor", str(i)),
                                   pure=False) for i in range(min(concurrency, trials))]
            started = len(first)
            pending = as_completed(first)
            for future in pending:
                failed += int(future.result() != 0)
                if started < trials:
                    pending.add(client.submit(run_trivial, argv,
                                              scratch(params, "floor", str(started)),
                                              pure=False))
                    started += 1
    finally:
        client.close()
        cluster.close()
    return {"trials": trials, "failed": failed, "results": None, **meter.as_dict()}


def run_localbackend(params: dict[str, Any]) -> dict[str, Any]:
    from localbackend import LocalBackend
    from localbackend.launchers.dask import DaskLauncher

    trials, concurrency = int(params["trials"]), int(params["concurrency"])
    client, cluster = _cluster()
    latencies: list[float] = []
    failed = results = 0
    try:
        backend = LocalBackend(
            trial_script("trivial"), experiment_dir=scratch(params, "experiment"),
            binary=[params["trial_python"]], launcher=DaskLauncher(client),
        )
        with backend:
            warm = backend.start_trial({}).trial_id
            while warm in {t for t, _ in backend.busy_trial_ids()}:
                backend.wait(timeout=1.0)
                backend.fetch_status_results([warm])
            with Measured() as meter:
                running: set[int] = set()
                started = 0
                while started < trials or running:
                    while len(running) < concurrency and started < trials:
                        running.add(backend.start_trial({}).trial_id)
                        started += 1
                    backend.wait(timeout=5.0)
                    statuses, new = backend.fetch_status_results(sorted(running))
                    now = time.time()
                    latencies += [now - float(r["st_worker_timestamp"]) for _, r in new]
                    results += len(new)
                    for trial_id, (_, status) in statuses.items():
                        if status in FINISHED:
                            running.discard(trial_id)
                            failed += status != "Completed"
    finally:
        client.close()
        cluster.close()
    return {"trials": trials, "failed": failed, "results": results,
            "result_latency_s": latencies, **meter.as_dict()}

"""DaskLauncher with a worker that stops answering, a client that gave up, or bad input."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from localbackend import BackendConfigurationError, LocalBackend, TrialLaunchError
from localbackend.launchers.dask import DaskLauncher
from tests.crash_helpers import alive
from tests.dask.conftest import Cluster, running_cluster
from tests.dask.test_cluster import DEADLINE, backend_on, run_record
from tests.helpers import SCRIPTS, collect, format_logs, script, until_status, wait_for

pytestmark = pytest.mark.dask
pytest.importorskip("distributed")


@contextmanager
def frozen(cluster: Cluster, name: str) -> Iterator[None]:
    """Worker ``name`` stopped by SIGSTOP, as a hung or cut-off host; its trees run on."""
    pid = cluster.workers[name].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_worker_that_stops_answering_holds_up_no_stop_on_another(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "steady.py") as backend:
        ids = [backend.start_trial({}).trial_id for _ in range(2)]
        collect(backend, ids, lambda _s, r: {t for t, _ in r} == set(ids), timeout=DEADLINE)
        pids = {t: run_record(backend, t, 0)["pid"] for t in ids}
        on = {t: cluster.worker_running(pids[t]) for t in ids}
        assert None not in on.values() and on[0] != on[1], on
        with frozen(cluster, str(on[1])):
            backend.pause_trial(1)  # its call waits on the frozen worker
            backend.stop_trial(0)
            wait_for(lambda: not alive([pids[0]]), timeout=15,
                     what="the stopped trial's tree on the other worker to end",
                     on_fail=lambda: format_logs(backend))
        statuses, _ = collect(backend, ids, lambda s, _r: not backend.busy_trial_ids(),
                              timeout=DEADLINE)
        assert statuses[0][1] == "Stopped" and statuses[1][1] == "Paused", statuses


def test_the_first_start_does_not_wait_for_a_worker_that_stops_answering(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        with frozen(cluster, "b"):
            started = threading.Thread(target=backend.start_trial, args=({"epochs": 1},),
                                       daemon=True)
            started.start()
            started.join(DEADLINE)
            assert not started.is_alive(), "start_trial waited for the frozen worker"
        collect(backend, [0], until_status("Completed"), timeout=DEADLINE)


def test_a_trial_started_once_the_client_gave_up_on_the_scheduler_fails_naming_it(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = own_cluster
    launcher = DaskLauncher(cluster.address, connect_timeout=1.0, lease_timeout=2.0)
    with LocalBackend(script("steady.py"), experiment_dir=tmp_path / "exp", grace_period=1.0,
                      launcher=launcher) as backend:
        ids = [backend.start_trial({}).trial_id for _ in range(2)]
        collect(backend, ids, lambda _s, r: {t for t, _ in r} == set(ids), timeout=DEADLINE)
        assert cluster.scheduler is not None
        cluster.scheduler.kill()
        cluster.scheduler.wait()
        collect(backend, ids, lambda s, _r: all(s[t][1] == "Failed" for t in ids),
                timeout=DEADLINE)
        wait_for(lambda: launcher.dask_client.status in ("closing", "closed"),
                 timeout=DEADLINE, what="the client to give up reconnecting")
        late = backend.start_trial({}).trial_id
        statuses, _ = collect(backend, [late], until_status("Failed"), timeout=DEADLINE)
        reason = statuses[late][0].failure_reason
        assert f"the Dask scheduler at {cluster.address} cannot be reached" in reason, reason
    # close() said it could not reach the scheduler, and did not raise.


@pytest.mark.parametrize("address", ["not an address", "http://127.0.0.1:1"])
def test_a_malformed_scheduler_address_is_our_error(address: str) -> None:
    with pytest.raises(BackendConfigurationError) as raised:
        DaskLauncher(address, connect_timeout=1.0)
    assert repr(address) in str(raised.value)


def test_a_worker_without_localbackend_is_named_as_such(tmp_path: Path) -> None:
    with running_cluster(["a"], worker_env={
        "PYTHONPATH": str(SCRIPTS / "hides_localbackend"),
    }) as cluster, backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        with pytest.raises(TrialLaunchError) as raised:
            backend.start_trial({"epochs": 1})
        message = str(raised.value)
        assert "localbackend cannot be imported on Dask worker tcp://" in message, message
        assert "not shared" not in message, message
        assert "Install localbackend" in message, message

"""DaskLauncher when a worker, a task or the scheduler is lost, and on a TLS cluster with GPUs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbackend import LocalBackend
from localbackend.launchers.dask import DaskLauncher
from tests.crash_helpers import alive, wait_gone
from tests.dask.conftest import Cluster, make_certificates, running_cluster
from tests.dask.test_cluster import DEADLINE, backend_on, blocked, run_record
from tests.helpers import (
    collect,
    format_logs,
    script,
    until_status,
    wait_for,
    wait_not_busy,
)

pytestmark = pytest.mark.dask
pytest.importorskip("distributed")


@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
def test_a_sigkilled_worker_fails_its_trial_as_lost_and_ends_its_tree(
    own_cluster: Cluster, tmp_path: Path, detach: bool
) -> None:
    # Detached trials outlive their driver, never their worker.
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py", detach=detach) as backend:
        ids = [backend.start_trial({"epochs": 1000, "block_at": 2}).trial_id for _ in range(2)]
        collect(backend, ids, blocked(ids), timeout=DEADLINE)
        records = {t: run_record(backend, t, 0) for t in ids}
        victim = cluster.worker_running(records[0]["keeper"])
        assert victim is not None, cluster.logs()
        address = cluster.worker_addresses()[victim]

        cluster.kill_worker(victim)
        statuses, _ = collect(backend, ids, lambda s, _r: s[0][1] == "Failed", timeout=DEADLINE)
        trial = statuses[0][0]
        assert trial.failure_kind == "lost"
        assert trial.failure_reason == f"worker lost: {address}", trial.failure_reason
        # Its supervisor saw the worker's pipe close and ended the tree.
        wait_gone([records[0]["pid"], records[0]["keeper"]], timeout=10.0)
        assert alive([records[0]["pid"], records[0]["keeper"]]) == []
        # The trial on the other worker carries on, and is never re-run elsewhere.
        assert statuses[1][1] == "InProgress"
        assert json.loads((backend.trial_dir(0) / "run.json").read_text())["run"] == 0
        backend.stop_trial(1)
        wait_not_busy(backend, [1])


def test_a_run_whose_task_is_cancelled_while_its_worker_lives_ends_before_its_trial(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Another client cancels the run's task (as a scheduler that restarts
    # loses it): the worker, and the tree it runs, live on. The trial must not
    # end, which would free its slot and let a retry start, while that tree runs.
    from distributed import Client, Future

    with backend_on(cluster, tmp_path / "exp", "spawn_tree.py", grace=0.5) as backend:
        trial_id = backend.start_trial({"after": "stay"}).trial_id
        pids_file = backend.trial_dir(trial_id) / "pids.json"
        wait_for(pids_file.exists, timeout=DEADLINE, what="pids.json",
                 on_fail=lambda: format_logs(backend))
        recorded = json.loads(pids_file.read_text())
        pids = [int(recorded[name]) for name in ("leader", "setsid_child", "grandchild")]
        with Client(cluster.address) as other:
            keys = [key for keys in other.processing().values() for key in keys
                    if str(key).endswith(f"-trial-{trial_id}-run-0")]
            assert len(keys) == 1, other.processing()
            other.cancel([Future(keys[0], other)], force=True)
            statuses, _ = collect(backend, [trial_id], until_status("Failed"), timeout=DEADLINE)
            assert alive(pids) == [], "the trial ended while its tree still ran"
        trial = statuses[trial_id][0]
        assert trial.failure_kind == "lost", trial.failure_reason
        assert "cancelled" in str(trial.failure_reason).lower(), trial.failure_reason
        assert backend.busy_trial_ids() == []


def test_a_finished_run_whose_worker_dies_before_it_is_collected_never_runs_again(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    # The run's task has returned, but the driver has not collected its
    # outcome when the worker that holds it dies. Dask then computes the task
    # again on the other worker, for the client that still wants it: the run
    # must not start a second time, and its results must come once.
    from distributed import Client

    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "report_then_exit.py") as backend:
        trial_id = backend.start_trial({"n": 2}).trial_id
        folder = backend.trial_dir(trial_id)
        # No call to the backend meanwhile, so nothing is collected.
        wait_for((folder / "exit.json").exists, timeout=DEADLINE, what="the run to end",
                 on_fail=lambda: format_logs(backend))
        with Client(cluster.address) as other:

            def holder() -> str | None:
                for key, where in other.who_has().items():
                    if str(key).endswith(f"-trial-{trial_id}-run-0") and where:
                        return str(next(iter(where)))
                return None

            address = wait_for(holder, timeout=DEADLINE, what="the task's result",
                               on_fail=cluster.logs)
            name = {a: n for n, a in cluster.worker_addresses().items()}[address]
            cluster.kill_worker(name)
            _, results = collect(backend, [trial_id], until_status("Completed"),
                                 timeout=DEADLINE)
        assert [r["i"] for _, r in results] == [0, 1], format_logs(backend)
        lines = (folder / "results.jsonl").read_text().splitlines()
        assert len(lines) == 2, f"the run ran again:\n{format_logs(backend)}"
        assert backend.busy_trial_ids() == []


def test_a_sigkilled_scheduler_fails_the_running_trials_as_lost_once_their_trees_end(
    own_cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The driver's client loses the scheduler, and so do the workers, which
    # close and end their trees. The trials fail as lost once no process of
    # theirs is left, and closing the backend does not raise.
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        ids = [backend.start_trial({"epochs": 1000, "block_at": 0}).trial_id for _ in range(2)]
        collect(backend, ids, blocked_at_start(ids), timeout=DEADLINE)
        records = {t: run_record(backend, t, 0) for t in ids}
        assert cluster.scheduler is not None
        cluster.scheduler.kill()
        cluster.scheduler.wait()
        statuses, _ = collect(
            backend, ids, lambda s, _r: all(s[t][1] == "Failed" for t in ids), timeout=DEADLINE
        )
        pids = [p for r in records.values() for p in (r["pid"], r["keeper"])]
        assert alive(pids) == [], f"a trial ended before its tree\n{format_logs(backend)}"
        for trial_id in ids:
            assert statuses[trial_id][0].failure_kind == "lost", statuses[trial_id][0]
        assert backend.busy_trial_ids() == []
    # Closing could not reach the scheduler, and said so instead of raising.
    assert "could not reach the Dask scheduler" in caplog.text


def test_a_worker_closed_gracefully_never_has_its_run_started_again_elsewhere(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    # SIGTERM makes a worker close gracefully, and Dask may then compute its
    # running tasks again on another worker. The run must not start a second
    # time, and the trial must not end while its tree still runs.
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        trial_id = backend.start_trial({"epochs": 1000, "block_at": 0}).trial_id
        collect(backend, [trial_id], blocked_at_start([trial_id]), timeout=DEADLINE)
        record = run_record(backend, trial_id, 0)
        victim = cluster.worker_running(record["keeper"])
        assert victim is not None, cluster.logs()
        cluster.workers[victim].terminate()
        statuses, _ = collect(
            backend, [trial_id], lambda s, _r: s[trial_id][1] != "InProgress", timeout=DEADLINE
        )
        assert alive([record["pid"], record["keeper"]]) == [], \
            f"the trial ended before its tree: {statuses[trial_id][0]}\n{format_logs(backend)}"
        assert statuses[trial_id][1] in ("Failed", "Completed"), format_logs(backend)
        assert "".join(backend.stdout(trial_id)).count("starting at epoch") == 1, \
            format_logs(backend)
        assert backend.busy_trial_ids() == []
        cluster.workers.pop(victim).wait()


def blocked_at_start(trial_ids: list[int]) -> Any:
    return lambda _s, results: all(
        any(t == trial_id for t, _ in results) for trial_id in trial_ids
    )


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, object]]:
    """A TLS-only scheduler and a worker with three threads and two GPUs as resources."""
    from distributed.security import Security

    pem = make_certificates(tmp_path_factory.mktemp("certificates"))
    flags = ["--tls-ca-file", str(pem["ca"]), "--tls-cert", str(pem["cert"]),
             "--tls-key", str(pem["key"])]
    security = Security(
        tls_ca_file=str(pem["ca"]), tls_client_cert=str(pem["cert"]),
        tls_client_key=str(pem["key"]), require_encryption=True,
    )
    with running_cluster(["g"], security=[*flags], threads=3,
                         worker_options={"g": ["--resources", "GPU=2"]},
                         scheduler_options=["--protocol", "tls"]) as cluster:
        yield cluster, security


def visible(backend: LocalBackend, trial_id: int) -> str:
    path = backend.trial_dir(trial_id) / "argv-0.json"
    wait_for(path.exists, timeout=DEADLINE, what=str(path), on_fail=lambda: format_logs(backend))
    return str(json.loads(path.read_text())["env"].get("CUDA_VISIBLE_DEVICES"))


def test_gpus_come_from_worker_resources_least_used_first_over_tls(
    tls_cluster: tuple[Cluster, object], tmp_path: Path
) -> None:
    cluster, security = tls_cluster
    assert cluster.address.startswith("tls://")
    launcher = DaskLauncher(cluster.address, security=security, gpus_per_trial=1)
    with LocalBackend(script("print_argv.py"), experiment_dir=tmp_path / "exp",
                      grace_period=0.5, launcher=launcher) as backend:
        first, second = (backend.start_trial({"hold": 1}).trial_id for _ in range(2))
        # They start together, in either order, each on a GPU of its own.
        gpus = {visible(backend, first): first, visible(backend, second): second}
        assert sorted(gpus) == ["0", "1"]
        # Both GPUs are taken: a third trial waits for one, though a thread is free.
        third = backend.start_trial({"hold": 1}).trial_id
        backend.stop_trial(gpus["1"])
        wait_not_busy(backend, [gpus["1"]])
        assert visible(backend, third) == "1"
        backend.stop_all()
        wait_not_busy(backend, [first, second, third])
        statuses, _ = backend.fetch_status_results([first, second, third])
        assert {s for _, s in statuses.values()} == {"Stopped"}


def test_a_client_without_tls_cannot_reach_a_tls_scheduler(
    tls_cluster: tuple[Cluster, object],
) -> None:
    from localbackend import BackendConfigurationError

    cluster, _security = tls_cluster
    with pytest.raises(BackendConfigurationError):
        DaskLauncher(cluster.address, connect_timeout=2.0)



def test_what_a_run_wrote_before_its_worker_was_lost_is_delivered_once(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    # Nothing is fetched until the worker is gone and its run's tree with it:
    # the loss is taken in with results that were never read.
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        backend.start_trial({"epochs": 1000, "block_at": 2})
        wait_for(lambda: (backend.trial_dir(0) / "blocked").exists(), timeout=DEADLINE,
                 what="the trial blocked after epoch 2", on_fail=cluster.logs)
        record = run_record(backend, 0, 0)
        victim = cluster.worker_running(record["keeper"])
        assert victim is not None, cluster.logs()
        cluster.kill_worker(victim)
        wait_gone([record["pid"], record["keeper"]], timeout=DEADLINE)
        statuses, results = collect(backend, [0], until_status("Failed"), timeout=DEADLINE)
        assert statuses[0][0].failure_kind == "lost"
        assert [result["epoch"] for _, result in results] == [0, 1, 2], format_logs(backend)


def test_a_trial_started_once_the_scheduler_is_gone_fails_naming_the_scheduler(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = own_cluster
    with backend_on(cluster, tmp_path / "exp", "checkpointing.py") as backend:
        backend.start_trial({"epochs": 1})
        collect(backend, [0], until_status("Completed"), timeout=DEADLINE)
        assert cluster.scheduler is not None
        cluster.scheduler.kill()
        cluster.scheduler.wait()
        backend.start_trial({"epochs": 1})
        statuses, _ = collect(backend, [1], until_status("Failed"), timeout=DEADLINE)
        reason = statuses[1][0].failure_reason
        assert f"the Dask scheduler at {cluster.address} cannot be reached" in reason, reason
        assert "restore" in reason, reason

"""Real Dask clusters on 127.0.0.1 for the DaskLauncher tests, ended by PID whatever happens.

``dask scheduler`` and ``dask worker`` run as processes of their own, each
worker with its own ``--local-directory`` and ``--nthreads``, and without a
nanny, so that a SIGKILL of a worker is the death of the process that runs
its tasks. A cluster is started once per test module; a test that kills a
worker starts it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import psutil
import pytest

DASK = Path(sys.executable).with_name("dask")
# How long a scheduler or worker may take to come up on a busy 2-core machine.
STARTUP_SECONDS = 60.0


def _dask_command() -> list[str]:
    """The ``dask`` command of this interpreter's environment (the ``distributed`` CLI)."""
    if not DASK.exists():
        pytest.skip(f"{DASK} is not installed (pip install 'localbackend[dask]')")
    return [str(DASK)]


def _end(process: subprocess.Popen[bytes]) -> None:
    """End a cluster process by its PID: SIGTERM, SIGKILL after 10 s, always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Cluster:
    """A scheduler and named workers, each a process of this test session."""

    root: Path
    security: list[str] = field(default_factory=list)
    worker_options: dict[str, list[str]] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    scheduler_options: list[str] = field(default_factory=list)
    address: str = ""
    scheduler: Optional[subprocess.Popen[bytes]] = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Any:
        with open(self.log(name), "ab") as log:
            return subprocess.Popen(
                [*_dask_command(), *argv], stdout=log, stderr=subprocess.STDOUT,
                cwd=self.root, env=env, start_new_session=True,
            )

    def start(self, workers: Sequence[str]) -> None:
        scheduler_file = self.root / "scheduler.json"
        env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
        self.scheduler = self._spawn("scheduler", [
            "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
            "--scheduler-file", str(scheduler_file), *self.security, *self.scheduler_options,
        ], env)
        self._wait(lambda: scheduler_file.exists() and "address" in scheduler_file.read_text(),
                   "the scheduler to start", self.scheduler, "scheduler")
        self.address = json.loads(scheduler_file.read_text())["address"]
        for name in workers:
            self.start_worker(name)

    def start_worker(self, name: str) -> None:
        local = self.root / f"worker-{name}"
        local.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        env.update(self.worker_env)
        self.workers[name] = self._spawn(name, [
            "worker", self.address, "--name", name, "--nthreads", str(self.threads), "--no-nanny",
            "--no-dashboard", "--local-directory", str(local), "--host", "127.0.0.1",
            *self.security, *self.worker_options.get(name, []),
        ], env)
        self._wait(lambda: name in self.worker_names(), f"worker {name} to join",
                   self.workers[name], name)

    def worker_addresses(self) -> dict[str, str]:
        """The workers that joined, name to address, read from the scheduler's log."""
        text = self.log("scheduler").read_text(errors="replace")
        joined = {}
        for line in text.splitlines():
            if "Register worker" in line and "name: " in line and "addr: " in line:
                address = line.split("addr: ", 1)[1].split()[0]
                joined[line.rsplit("name: ", 1)[1].split()[0]] = address
        return joined

    def worker_names(self) -> set[str]:
        return set(self.worker_addresses())

    def _wait(self, condition: Any, what: str, process: Any, log: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not condition():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n"
                                     + self.log(log).read_text(errors="replace")[-3000:])
            time.sleep(0.05)

    def kill_worker(self, name: str) -> None:
        process = self.workers.pop(name)
        process.kill()
        process.wait()

    def worker_running(self, pid: int) -> Optional[str]:
        """The name of the worker whose process has ``pid`` among its descendants."""
        for name, process in self.workers.items():
            try:
                below = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
            except psutil.Error:
                continue
            if pid in below:
                return name
        return None

    def stop(self) -> None:
        for process in [*self.workers.values(), *([self.scheduler] if self.scheduler else [])]:
            _end(process)
        self.workers.clear()

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name} ---\n{log.read_text(errors='replace')[-2000:]}"
            for log in sorted(self.root.glob("*.log"))
        )


@contextlib.contextmanager
def running_cluster(workers: Sequence[str], **options: Any) -> Iterator[Cluster]:
    """A cluster in a folder of its own, its processes ended by PID on the way out."""
    root = Path(tempfile.mkdtemp(prefix="localbackend-dask-"))
    running = Cluster(root, **options)
    try:
        running.start(workers)
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """``dask scheduler`` and workers ``a`` and ``b`` with one thread each, per module."""
    with running_cluster(["a", "b"]) as running:
        yield running


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of workers ``a`` and ``b`` for one test (one that kills a worker)."""
    with running_cluster(["a", "b"]) as running:
        yield running


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and a certificate it signs for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make TLS certificates")
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    csr = folder / "cert.csr"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-keyout", paths["ca-key"], "-out", paths["ca"]],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", paths["key"], "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca-key"],
         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", paths["cert"]],
    ):
        subprocess.run([openssl, *map(str, argv)], check=True, capture_output=True)
    return paths

"""Reaching a Dask cluster: a scheduler address, a client, or a ``LocalCluster`` started here.

``check_options`` checks the launcher's other options first, so that a bad
value is our error before anything is reached.

Dask must never run a trial a second time behind the backend's back: the
scheduler's ``allowed_failures`` is set to 0, so a task whose worker dies
fails with ``KilledWorker`` instead of being re-run elsewhere (for an
external scheduler this changes that scheduler's setting for every client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..._errors import BackendConfigurationError

LOCAL_PREFIX = "local:"


@dataclass
class Connection:
    """A client, and the cluster started for it (``local:N``), which closing ends."""

    client: Any
    cluster: Any = None
    owns_client: bool = True
    # The scheduler's address, which the client no longer says once it lost it.
    address: str = ""

    def close(self) -> None:
        if self.owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def check_options(**options: Any) -> None:
    """Our error naming the first of ``DaskLauncher``'s options that is not valid."""
    for name in ("connect_timeout", "poll_interval", "lease_timeout"):
        value = options[name]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            raise BackendConfigurationError(
                name, value, "must be a finite number of seconds > 0",
                "Use for example connect_timeout=10, poll_interval=0.05, lease_timeout=10.",
            )
    gpus = options["gpus_per_trial"]
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise BackendConfigurationError(
            "gpus_per_trial", gpus, "must be a whole number >= 0",
            "Use 0 for CPU trials, or the GPUs each trial needs.",
        )


def connect(target: Any, security: Any, timeout: float) -> Connection:
    """Connect to ``target``: a ``distributed.Client``, an address, or ``"local:N"``."""
    from distributed import Client

    if isinstance(target, Client):
        if security is not None:
            raise BackendConfigurationError(
                "security", security, "is given together with a client",
                "Configure the client with the Security object instead, or pass an address.",
            )
        connection = Connection(target, owns_client=False)
    elif isinstance(target, str) and target.startswith(LOCAL_PREFIX):
        connection = _local_cluster(target, security)
    elif isinstance(target, str) and target:
        _check_tls(target, security)
        _check_address(target)
        try:
            client = _client_within(target, security, timeout)
        except (OSError, TimeoutError, TypeError) as err:
            raise BackendConfigurationError(
                "scheduler", target, f"cannot be reached within {timeout:g} s ({err})",
                "Check the address and port, that 'dask scheduler' runs there, and that the "
                "TLS settings (security=) match the scheduler's.",
            ) from err
        connection = Connection(client)
    else:
        raise BackendConfigurationError(
            "scheduler", target, "is not a scheduler address, 'local:N' or a distributed.Client",
            "Pass for example 'tcp://host:8786', 'tls://host:8786' or 'local:4'.",
        )

    def forbid_retries(dask_scheduler: Any) -> None:
        # Nested, so that it is sent by value: the scheduler need not import localbackend.
        dask_scheduler.allowed_failures = 0

    try:
        connection.client.run_on_scheduler(forbid_retries)
    except Exception as err:
        connection.close()
        raise BackendConfigurationError(
            "scheduler", target, f"refused to stop retrying tasks of lost workers ({err!r})",
            "Check that the scheduler runs the same Python and distributed versions as here.",
        ) from err
    connection.address = str(getattr(connection.client, "scheduler_address", None) or target)
    return connection


def unreachable_scheduler(connection: Connection) -> Optional[str]:
    """The scheduler's address once the client lost it (reconnecting, or given up), else None."""
    if getattr(connection.client, "status", "running") == "running":
        return None
    return connection.address or "its address"


def _check_address(target: str) -> None:
    """Our error for an address that distributed cannot parse (no port, an unknown scheme).

    Checked before any ``Client`` is made: a client that fails in its
    constructor is collected later, and its ``__del__`` can then wait for
    good on a lock of distributed's loop runner that another client holds.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(target)
        get_backend(scheme)
        if scheme in ("tcp", "tls", "ws", "wss"):
            parse_host_port(location)
    except ValueError as err:
        raise BackendConfigurationError(
            "scheduler", target, f"is not a scheduler address ({err})",
            "Pass for example 'tcp://host:8786', 'tls://host:8786' or 'local:4'.",
        ) from err


def _client_within(target: str, security: Any, timeout: float) -> Any:
    """A client of ``target``, or ``TimeoutError`` after ``timeout`` seconds whatever hangs.

    ``Client(timeout=)`` bounds the connection, not the handshake after it: a
    port that accepts and never answers would block for good. The client is
    made in a thread; one that arrives after the deadline is closed there.
    """
    import threading

    from distributed import Client

    made: list[Any] = []
    failed: list[BaseException] = []
    late = threading.Event()

    def make() -> None:
        try:
            client = Client(  # type: ignore[no-untyped-call]
                target, security=security, timeout=timeout, set_as_default=False
            )
        except BaseException as err:  # handed to the caller
            failed.append(err)
            return
        if late.is_set():
            client.close()  # type: ignore[no-untyped-call]
        else:
            made.append(client)

    thread = threading.Thread(target=make, name="localbackend-dask-connect", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        late.set()
        raise TimeoutError(f"no answer from {target} within {timeout:g} s")
    if failed:
        raise failed[0]
    return made[0]


def _check_tls(address: str, security: Optional[Any]) -> None:
    """A ``tls://`` scheduler needs certificates (given, or in the Dask config)."""
    if not address.startswith("tls://"):
        return
    from distributed.security import Security

    given = security if security is not None else Security()  # type: ignore[no-untyped-call]
    if given.get_connection_args("client").get("ssl_context") is None:
        raise BackendConfigurationError(
            "security", security, f"holds no TLS certificates for the scheduler {address}",
            "Pass security=Security(tls_ca_file=..., tls_client_cert=..., tls_client_key=..., "
            "require_encryption=True), or set them in the Dask config.",
        )


def _local_cluster(target: str, security: Optional[Any]) -> Connection:
    import dask
    from distributed import Client, LocalCluster

    count = target[len(LOCAL_PREFIX):]
    if not count.isdigit() or int(count) < 1:
        raise BackendConfigurationError(
            "scheduler", target, "does not name a number of workers >= 1",
            "Use for example 'local:4' for a LocalCluster of 4 worker processes.",
        )
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=int(count), threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, security=security,
        )
    try:
        client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
    except BaseException:
        cluster.close()
        raise
    return Connection(client, cluster)

"""Calls the driver makes on Dask workers with ``Client.run``: sent, or asked.

A stop is *sent*: handed to a thread of its own, so that the caller never
waits for the round trip (``terminate`` returns at once). A question about a
run of an earlier driver is *asked*, and waited for. Neither is made to a
worker the scheduler no longer lists: that worker is gone, and so is every
process it ran, and a call to a dead address waits for the connect timeout
(30 s by default).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional


class WorkerCalls:
    """The calls of one launcher, through its ``distributed.Client``; ``close`` ends them."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localbackend-dask")
        self._closed = False

    def send(self, function: Callable[..., Any], *args: Any,
             workers: Optional[list[str]]) -> None:
        """Run ``function`` on ``workers`` (every worker for None) from the calls thread."""
        if self._closed:
            return

        def call() -> None:
            live = self.live_workers()
            targets = [w for w in workers if w in live] if workers is not None else None
            if targets != []:  # a worker that is gone took its trees with it
                self._client.run(function, *args, workers=targets, on_error="ignore")

        self._thread.submit(call)

    def ask(self, function: Callable[..., Any], host: str, *args: Any) -> dict[str, Any]:
        """``function``'s answers on worker ``host`` (every worker if it is not known)."""
        if host and host not in self.live_workers():
            return {}
        try:
            answers = self._client.run(
                function, *args, workers=[host] if host else None, on_error="return",
            )
        except Exception:  # that worker is gone, or so is the scheduler
            return {}
        return {k: v for k, v in answers.items() if not isinstance(v, BaseException)}

    def live_workers(self) -> set[str]:
        try:
            return set(self._client.scheduler_info().get("workers", {}))
        except Exception:  # the scheduler is gone: so is every worker's answer
            return set()

    def close(self) -> None:
        """Wait for the calls already sent; later ones are not made."""
        self._thread.shutdown(wait=True)
        self._closed = True

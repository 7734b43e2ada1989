"""Calls the driver makes on Dask workers with ``Client.run``: sent, or asked.

A stop is *sent*: handed to a thread of its worker, so that the caller never
waits for the round trip (``terminate`` returns at once), and so that a
worker that stopped answering (a hung or cut-off host) holds up only the
calls to itself, never a stop to another worker. Calls to one worker keep
their order. A question about a run of an earlier driver is *asked*, and
waited for. Neither is made to a worker the scheduler no longer lists: that
worker is gone, and so is every process it ran, and a call to a dead address
waits for the connect timeout (30 s by default).

Each call is given up after ``CALL_SECONDS``; a stop to a worker that the
scheduler still lists is then sent again, since the trees it runs go on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

# How long one Client.run waits for its worker before it is given up.
CALL_SECONDS = 10.0
# How long close() waits for the stops already sent, in all.
CLOSE_SECONDS = 15.0

_Call = tuple[Callable[..., Any], tuple[Any, ...]]


class WorkerCalls:
    """The calls of one launcher, through its ``distributed.Client``; ``close`` ends them."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        # One queue and one thread per worker address (None: every worker).
        self._queues: dict[Optional[str], queue.SimpleQueue[Optional[_Call]]] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False

    def send(self, function: Callable[..., Any], *args: Any,
             workers: Optional[list[str]]) -> None:
        """Run ``function`` on ``workers`` (every worker for None), each from its own thread."""
        with self._lock:
            if self._closed:
                return
            for worker in workers if workers is not None else [None]:
                self._queue(worker).put((function, args))

    def _queue(self, worker: Optional[str]) -> queue.SimpleQueue[Optional[_Call]]:
        calls = self._queues.get(worker)
        if calls is None:
            calls = self._queues[worker] = queue.SimpleQueue()
            # A daemon: a thread stuck on a worker that never answers must not
            # hold up the interpreter's exit.
            thread = threading.Thread(target=self._serve, args=(worker, calls), daemon=True,
                                      name=f"localbackend-dask-{worker or 'all'}")
            thread.start()
            self._threads.append(thread)
        return calls

    def _serve(self, worker: Optional[str], calls: queue.SimpleQueue[Optional[_Call]]) -> None:
        while (call := calls.get()) is not None:
            function, args = call
            while True:
                if worker is not None and worker not in self.live_workers():
                    break  # a worker that is gone took its trees with it
                try:
                    self._client.run(function, *args, workers=None if worker is None
                                     else [worker], on_error="ignore",
                                     callback_timeout=CALL_SECONDS)
                    break
                except TimeoutError:
                    if worker is None or self._client.status in ("closing", "closed"):
                        break
                except Exception:  # the scheduler is gone: so is every worker's tree
                    break

    def ask(self, function: Callable[..., Any], host: str, *args: Any,
            wait: float = 0.0) -> dict[str, Any]:
        """``function``'s answers on worker ``host`` (every worker if it is not known).

        ``wait``: how long ``function`` itself may take, beyond a call's own time.
        """
        if host and host not in self.live_workers():
            return {}
        try:
            answers = self._client.run(
                function, *args, workers=[host] if host else None, on_error="return",
                callback_timeout=CALL_SECONDS + wait,
            )
        except Exception:  # that worker is gone or does not answer, or so is the scheduler
            return {}
        return {k: v for k, v in answers.items() if not isinstance(v, BaseException)}

    def live_workers(self) -> set[str]:
        try:
            return set(self._client.scheduler_info().get("workers", {}))
        except Exception:  # the scheduler is gone: so is every worker's answer
            return set()

    def close(self) -> None:
        """Wait (at most ``CLOSE_SECONDS``) for the calls already sent; later ones are not made."""
        with self._lock:
            self._closed = True
            for calls in self._queues.values():
                calls.put(None)
        deadline = time.monotonic() + CLOSE_SECONDS
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

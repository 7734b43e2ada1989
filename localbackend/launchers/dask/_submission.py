"""How the driver hands a run to Dask: one task, under a key that names its trial and run."""

from __future__ import annotations

from typing import Any

from .._base import RunSpec
from . import _task as task


class Submitter:
    """Submits the runs of one launcher (``token``), each asking ``gpus_per_trial`` GPUs."""

    def __init__(self, client: Any, *, token: str, topic: str, lease_timeout: float,
                 gpus_per_trial: int) -> None:
        self._client = client
        self._token, self._topic = token, topic
        self._lease_timeout = lease_timeout
        self._gpus_per_trial = gpus_per_trial
        self._gpu_cluster = False

    def submit(self, spec: RunSpec, *, lease: str, detach: bool) -> Any:
        """The future of ``spec``'s task; ``ConnectionError`` once the client gave up its scheduler.

        A client that is closing or closed takes a task and never ends it.
        """
        if self._client.status in ("closing", "closed"):
            raise ConnectionError(f"the Dask client is {self._client.status}")
        if not self._gpu_cluster and self._gpus_per_trial:
            # Asked again until a GPU worker is seen: workers may join late
            # (dask-jobqueue's scale() returns before they arrive).
            workers = self._client.scheduler_info().get("workers", {}).values()
            self._gpu_cluster = any("GPU" in (w.get("resources") or {}) for w in workers)
        gpus = self._gpus_per_trial if self._gpu_cluster else 0
        return self._client.submit(
            task.run_on_worker, spec, token=self._token, topic=self._topic, lease=lease,
            lease_timeout=self._lease_timeout, detach=detach, gpus_per_trial=gpus,
            key=f"localbackend-{self._token}-trial-{spec.trial_id}-run-{spec.run}",
            pure=False, retries=0, resources={"GPU": gpus} if gpus else None,
        )


__all__ = ["Submitter"]

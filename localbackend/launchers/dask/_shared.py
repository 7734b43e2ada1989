"""Check that the experiment folder is shared by the driver and every worker, at the same path.

The driver writes a file with a secret in it; each worker reads it back and
writes an answer beside it, which the driver reads. A worker that cannot
do either makes the check fail with an error naming the folder and the
worker. Workers that join later are checked by each run's task, which
fails the run with the same explanation when it cannot write its trial
folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from ..._errors import ExperimentError
from ..._files import atomic_write_bytes
from ..._paths import ExperimentPaths
from ._calls import CALL_SECONDS

_HINT = (
    "Put the experiment folder on a filesystem that the driver and every Dask worker mount "
    "at the same path (NFS, Lustre, ...), and run the workers as the folder's owner."
)


_NOT_INSTALLED_HINT = (
    "Install localbackend (the version the driver runs) in the Python environment of every "
    "Dask worker."
)


def check_shared_folder(client: Any, root: Path, token: str) -> None:
    """Raise ``ExperimentError`` unless each current worker that answers can use ``root``."""
    paths = ExperimentPaths(root)
    probe = paths.visibility_probe(token, "driver")
    secret = os.urandom(16).hex()
    atomic_write_bytes(probe, secret.encode())
    answers: dict[str, Any] = {}
    try:
        answers = _ask_each(client, answer_probe, str(root), token, secret)
        for worker, answer in sorted(answers.items()):
            if _not_installed(answer):
                raise ExperimentError(
                    str(root), f"cannot be checked: localbackend cannot be imported on Dask "
                    f"worker {worker} ({answer})", _NOT_INSTALLED_HINT,
                )
            problem = _problem(answer, secret)
            if problem:
                raise ExperimentError(
                    str(root), f"is not shared with Dask worker {worker}: {problem}", _HINT
                )
    finally:
        for path in [probe, *(Path(a) for a in answers.values() if isinstance(a, str))]:
            try:
                path.unlink()
            except OSError:
                pass


def _ask_each(client: Any, function: Any, *args: Any) -> dict[str, Any]:
    """``function``'s answer on each current worker, asked at once; those that answer in time.

    A worker that does not answer within a call's time (a hung host) is left to
    the check that each run's task makes where it lands.
    """
    from concurrent.futures import ThreadPoolExecutor

    workers = sorted(client.scheduler_info().get("workers", {}))
    if not workers:
        return {}

    def ask(worker: str) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = client.run(function, *args, workers=[worker],
                                                on_error="return", callback_timeout=CALL_SECONDS)
            return answer
        except TimeoutError:
            return {}

    with ThreadPoolExecutor(max_workers=min(16, len(workers))) as pool:
        return {k: v for answer in pool.map(ask, workers) for k, v in answer.items()}


def _not_installed(answer: Any) -> bool:
    """Whether a worker's answer says that it could not import localbackend to run the check."""
    # Dask hands back a function that fails to unpickle there as a plain
    # Exception that holds the ModuleNotFoundError's text.
    return isinstance(answer, BaseException) and (
        isinstance(answer, ImportError) or "No module named 'localbackend" in str(answer)
    )


def _problem(answer: Any, secret: str) -> Optional[str]:
    if isinstance(answer, BaseException):
        return f"the check failed there ({type(answer).__name__}: {answer})"
    if isinstance(answer, tuple):
        return str(answer[0])
    try:
        if Path(answer).read_text() == secret:
            return None
    except OSError:
        pass
    return f"what it wrote at {answer} does not reach this host"


def answer_probe(root: str, token: str, secret: str) -> Any:
    """On a worker: read the driver's probe, write an answer; its path, or ``(problem,)``."""
    paths = ExperimentPaths(Path(root))
    probe = paths.visibility_probe(token, "driver")
    try:
        seen = probe.read_text()
    except OSError as err:
        return (f"it cannot read {probe} ({err})",)
    if seen != secret:
        return (f"it sees another file at {probe} (a different filesystem at the same path)",)
    answer = paths.visibility_probe(token, os.urandom(6).hex())
    try:
        atomic_write_bytes(answer, secret.encode())
    except OSError as err:
        return (f"it cannot write in the folder ({err})",)
    return str(answer)

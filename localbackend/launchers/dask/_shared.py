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

_HINT = (
    "Put the experiment folder on a filesystem that the driver and every Dask worker mount "
    "at the same path (NFS, Lustre, ...), and run the workers as the folder's owner."
)


def check_shared_folder(client: Any, root: Path, token: str) -> None:
    """Raise ``ExperimentError`` unless every current worker reads and writes ``root``."""
    paths = ExperimentPaths(root)
    probe = paths.visibility_probe(token, "driver")
    secret = os.urandom(16).hex()
    atomic_write_bytes(probe, secret.encode())
    answers: dict[str, Any] = {}
    try:
        answers = client.run(answer_probe, str(root), token, secret, on_error="return")
        for worker, answer in sorted(answers.items()):
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

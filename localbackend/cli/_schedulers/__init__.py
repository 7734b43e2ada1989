"""The decisions of ``localbackend tune``: random search, ASHA and PBT.

A scheduler never touches a process. It is told of starts, results and
ends, and answers with data: continue, pause or stop a trial after a result,
and which trial to start or resume when a worker is free. The tuner carries
the answers out on the backend, so the logic here is plain and its state is
a JSON object saved for ``--resume``.

``_base`` holds the decisions and the base class, and each scheduler has
its own module: ``_random``, ``_asha`` and ``_pbt``. Import them from here.
"""

from __future__ import annotations

from ._asha import Asha, rung_levels
from ._base import (
    CONTINUE,
    PAUSE,
    STOP,
    Action,
    Decision,
    ResumeTrial,
    Scheduler,
    Settings,
    StartTrial,
    Verdict,
)
from ._pbt import Pbt
from ._random import RandomSearch

__all__ = [
    "CONTINUE",
    "PAUSE",
    "STOP",
    "Action",
    "Asha",
    "Decision",
    "Pbt",
    "RandomSearch",
    "ResumeTrial",
    "Scheduler",
    "Settings",
    "StartTrial",
    "Verdict",
    "rung_levels",
]

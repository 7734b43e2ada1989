"""Where trials run: the ``Launcher`` interface and its implementations.

``LocalLauncher`` runs trials on this machine through a supervisor process
and one keeper per run. Names are imported on first use, so that the
supervisor and keepers, which live below this package, load only what they
need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._base import (
        Launcher,
        LauncherCapabilities,
        RunEvent,
        RunExited,
        RunHandle,
        RunLimits,
        RunLost,
        RunNotStarted,
        RunSpec,
        RunStarted,
    )
    from .local import LocalLauncher

__all__ = [
    "Launcher",
    "LauncherCapabilities",
    "LocalLauncher",
    "RunEvent",
    "RunExited",
    "RunHandle",
    "RunLimits",
    "RunLost",
    "RunNotStarted",
    "RunSpec",
    "RunStarted",
]

_WHERE = {
    "Launcher": "._base",
    "LauncherCapabilities": "._base",
    "RunEvent": "._base",
    "RunExited": "._base",
    "RunHandle": "._base",
    "RunLimits": "._base",
    "RunLost": "._base",
    "RunNotStarted": "._base",
    "RunSpec": "._base",
    "RunStarted": "._base",
    "LocalLauncher": ".local",
}



def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return list(__all__)

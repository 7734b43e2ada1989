"""Trials on this machine: a supervisor process, one keeper per run, the process table.

``LocalLauncher`` (in ``_launcher``) is the driver's side. The supervisor
(``_supervisor``) and the keepers (``_keeper``) run in processes of their
own and import only the standard library, so this package imports nothing
until a name is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._launcher import LocalLauncher
    from ._zygote import ColdStartWarning

__all__ = ["ColdStartWarning", "LocalLauncher"]


def __getattr__(name: str) -> Any:
    if name == "LocalLauncher":
        from ._launcher import LocalLauncher

        return LocalLauncher
    if name == "ColdStartWarning":  # a warm start (preload) that started cold
        from ._zygote import ColdStartWarning

        return ColdStartWarning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

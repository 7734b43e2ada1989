"""Trials on a Dask distributed cluster: ``DaskLauncher``.

Each run is a long-running Dask task on a worker, which hands the run to a
supervisor process on that worker, the same supervisor and keeper as
``LocalLauncher`` uses. Needs the ``dask`` extra; nothing is imported until
a name is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._launcher import DaskLauncher

__all__ = ["DaskLauncher"]


def __getattr__(name: str) -> Any:
    if name == "DaskLauncher":
        from ._launcher import DaskLauncher

        return DaskLauncher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

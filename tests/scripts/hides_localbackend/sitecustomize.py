"""Loaded through ``PYTHONPATH`` by a Dask worker of ``tests/dask/test_unresponsive.py``.

It makes ``import localbackend`` fail in that worker, as on a host where the
package is not installed.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from typing import Any


class _NotInstalled(MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name == "localbackend" or name.startswith("localbackend."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())

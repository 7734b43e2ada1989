"""``module:function`` on the command line: a Python function tuned as FunctionBackend trials."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import CliError

# ``package.module:function`` or ``module:Class.method``: no path separators.
_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_function_reference(text: str) -> bool:
    """Whether ``text`` names a function (``module:function``) rather than a script file."""
    return _REFERENCE.fullmatch(text) is not None and not Path(text).exists()


def load_function(reference: str) -> Callable[..., Any]:
    """The function ``module:function`` names, imported as ``python -m`` would find it."""
    module_name, _, qualname = reference.partition(":")
    # As ``python -m``: modules in the working folder are importable.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise CliError(
            f"cannot import {module_name!r} for {reference!r} ({err}); run from the folder "
            "that holds it, or install it"
        ) from err
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise CliError(f"{module_name!r} has no {qualname!r} (from {reference!r})")
    if not callable(found):
        raise CliError(f"{reference!r} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]


__all__ = ["is_function_reference", "load_function"]

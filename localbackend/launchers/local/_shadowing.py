"""Files next to a script that a cold start would import in place of the zygote's modules.

A cold ``python script.py`` puts the script's folder (for ``python -m``, the
working folder) first on ``sys.path``, so a ``random.py`` next to the script
is the ``random`` it imports. A warm trial finds the supervisor's ``random``
in ``sys.modules`` already, and would never look. Any module the supervisor
imported that a cold interpreter has not yet imported when its script
starts counts: the preload modules, ``argparse``, and what the supervisor
itself uses. Such a run starts cold (``_zygote``).

This module imports only the standard library, and nothing runs at import time.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

# How the files of importable modules end: source, compiled, extensions.
_MODULE_SUFFIXES = tuple(importlib.machinery.all_suffixes())


def cold_first_path(argv: Sequence[str], cwd: str) -> str:
    """``sys.path[0]`` of a cold start: the working folder for ``-m``, else the script's folder."""
    if argv[1:2] == ["-m"]:
        return cwd
    return os.path.dirname(os.path.realpath(os.path.join(cwd, argv[1])))


class ShadowCheck:
    """The zygote's check, with what it keeps between runs to make it cheap.

    Per run it costs a ``stat`` of the script's folder; the folder is listed
    again only when it changed, and ``sys.modules`` read again only when it
    grew or shrank.
    """

    def __init__(self) -> None:
        # Top-level modules a cold interpreter has imported when the script starts.
        self.cold_modules: frozenset[str] = frozenset()
        # Top-level modules imported here and not by a cold start, for a count of sys.modules.
        self._imported_here: tuple[int, frozenset[str]] = (-1, frozenset())
        # Module names each folder offers, for its modification time.
        self._offered: dict[str, tuple[int, frozenset[str]]] = {}

    def set_cold_modules(self, names: Iterable[str]) -> None:
        self.cold_modules = frozenset(name.partition(".")[0] for name in names)
        self._imported_here = (-1, frozenset())

    def reason(self, spec: Mapping[str, Any]) -> Optional[str]:
        """Why a cold start would import another file for a module imported here, or None."""
        first = cold_first_path([str(word) for word in spec.get("argv") or ()],
                                str(spec.get("cwd") or os.getcwd()))
        for top in sorted(self._offered_by(first) & self._modules_imported_here()):
            loaded = getattr(sys.modules.get(top), "__file__", None)
            candidate = _module_file(first, top)
            if candidate is not None and (
                loaded is None or not os.path.samefile(candidate, loaded)
            ):
                return (
                    f"{candidate} would be imported as {top!r} by a cold start, where the "
                    f"supervisor has imported {loaded or 'another module'}"
                )
        return None

    def _modules_imported_here(self) -> frozenset[str]:
        count, names = self._imported_here
        if count != len(sys.modules):
            count = len(sys.modules)
            tops = {name.partition(".")[0] for name in list(sys.modules)}
            names = frozenset(tops - self.cold_modules - {"__main__"})
            self._imported_here = (count, names)
        return names

    def _offered_by(self, folder: str) -> frozenset[str]:
        """The top-level module names that entries of ``folder`` could be imported as."""
        try:
            changed = os.stat(folder).st_mtime_ns
        except OSError:
            return frozenset()
        cached = self._offered.get(folder)
        if cached is not None and cached[0] == changed:
            return cached[1]
        try:
            entries = os.listdir(folder)
        except OSError:
            entries = []
        names = set()
        for entry in entries:
            stem = next((entry[:-len(s)] for s in _MODULE_SUFFIXES if entry.endswith(s)), entry)
            if stem.isidentifier():
                names.add(stem)
        offered = frozenset(names)
        self._offered[folder] = (changed, offered)
        return offered


def _module_file(folder: str, name: str) -> Optional[str]:
    """The file ``import name`` finds in ``folder``, as the path finder looks, or None.

    A package (a folder with ``__init__``) comes first, then a module file;
    a folder without ``__init__`` is a namespace portion, which any module
    found later on ``sys.path`` wins over.
    """
    package = os.path.join(folder, name)
    for suffix in _MODULE_SUFFIXES:
        init = os.path.join(package, "__init__" + suffix)
        if os.path.isfile(init):
            return init
    for suffix in _MODULE_SUFFIXES:
        module = package + suffix
        if os.path.isfile(module):
            return module
    return None

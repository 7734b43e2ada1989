"""Warm starts: the supervisor as a zygote that has imported the preload modules.

With ``LocalBackend(preload=[...])`` every spawn command names the modules to
preload. On the first one the supervisor imports them, once; each keeper it
forks afterwards inherits them, and instead of ``posix_spawn`` the keeper
forks the trial from itself (``_warm_child``), so that the trial finds its
imports done. The trial is still the keeper's child in a new session: the
supervision is that of a cold start, because the zygote is the supervisor,
not a process outside the tree.

Forking is only safe from a process in a known state, so before each warm
start the supervisor checks that it has one thread (``/proc/self/task``,
which sees threads that ``threading`` does not), that no CUDA driver is
loaded, and that nothing the preload modules read at start-up would differ
for the trial, nor any module the trial would import from its own folder.
Any doubt starts that run cold, and the driver is told the reason once
(``ColdStartWarning``).

This module imports only the standard library, and nothing runs at import time.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

from ..._protocol import THREAD_COUNT_VARIABLES
from ._shadowing import ShadowCheck

# Modules whose import initialises CUDA or starts a GPU runtime: a forked
# child of a process holding a CUDA context cannot use the GPU.
CUDA_MODULES = frozenset({
    "cupy", "pycuda", "jax", "jaxlib", "tensorflow", "numba.cuda", "cudf", "cuml",
    "tensorrt", "pynvml", "torch.cuda",
})
# Variables that the thread pools of numerical libraries read when the
# library is loaded: they must be the trial's when the zygote imports.
THREAD_VARIABLES = (
    *THREAD_COUNT_VARIABLES, "OMP_PROC_BIND", "OMP_PLACES", "OMP_DYNAMIC", "OMP_WAIT_POLICY",
    "KMP_AFFINITY", "GOMP_SPINCOUNT",
)
# Read by the interpreter or the dynamic loader only when a process starts.
_STARTUP_NAMES = ("LANG", "LC_ALL", "LC_CTYPE", "LD_PRELOAD", "LD_LIBRARY_PATH")
# PYTHON* variables that a warm child honours itself or that are read later.
_HANDLED_PYTHON_VARIABLES = frozenset({"PYTHONUNBUFFERED", "PYTHONBREAKPOINT"})
# Names under which OpenBLAS builds export their thread-count setter.
_OPENBLAS_SETTERS = (
    "openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
)
_TRIAL_SIDE_MODULES = ("localbackend._report", "localbackend.checkpoint", "argparse")
_CUDA_LIBRARIES = ("libcuda.so", "libcudart.so", "libnvidia-ml.so")


# The state of this process's zygote once prepared; keepers forked from it inherit it.
_prepared: Optional[WarmState] = None


def prepared_state() -> Optional[WarmState]:
    """What the zygote this process was forked from preloaded, or None."""
    return _prepared


class ColdStartWarning(RuntimeWarning):
    """A run asked to start warm starts cold; the message names the reason."""


def cuda_modules(names: Sequence[str]) -> list[str]:
    """The names in a preload list that would initialise CUDA in the zygote."""
    return [
        name for name in names
        if any(name == cuda or name.startswith(cuda + ".") for cuda in CUDA_MODULES)
    ]


def thread_count() -> int:
    """Threads of this process, as the kernel counts them (C threads included)."""
    return len(os.listdir("/proc/self/task"))


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _mapped_libraries() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return []
    return sorted({line.split(None, 5)[5] for line in lines if len(line.split(None, 5)) == 6})


class WarmState(NamedTuple):
    """What the zygote learnt when it imported the preload modules; the child reads it.

    A named tuple, not a dataclass: ``dataclasses`` (with ``inspect``) added
    0.9 MiB to the supervisor, whose page tables every keeper's fork copies.
    """

    modules: tuple[str, ...]
    # By working folder, sys.path of a cold ``python script.py`` there without
    # its first entry; a relative PYTHONPATH entry is found from that folder.
    # Filled in by the zygote before it forks each keeper (Zygote.verdict).
    cold_paths: dict[str, list[str]]
    # The thread variables as they were when the modules were imported.
    import_env: dict[str, Optional[str]]
    # OpenBLAS's setter, when the zygote held OpenBLAS to one thread.
    openblas_setter: Any
    # The streams' encodings and errors, as this interpreter chose them.
    stdio: dict[str, tuple[str, str]]
    # libc's clearenv: the C environment can hold what os.environ does not
    # list (a module's os.putenv, or a C extension's setenv).
    clearenv: Any


class Zygote:
    """The supervisor's preloaded state and its verdict on each warm start."""

    def __init__(self) -> None:
        self.state: Optional[WarmState] = None
        self.broken: Optional[str] = None  # why no run can start warm
        self.reported: set[str] = set()
        self._environ = dict(os.environ)  # the supervisor's, as it started
        self.shadowing = ShadowCheck()

    def verdict(self, spec: Mapping[str, Any]) -> Optional[str]:
        """None when this run may start warm, else the reason it starts cold."""
        modules = tuple(str(name) for name in spec.get("preload") or ())
        if self.state is None and self.broken is None:
            self.broken = self._prepare(modules, spec.get("env") or {})
        if self.broken is not None:
            return self.broken
        state = self.state
        assert state is not None  # set by _prepare when it did not fail
        if modules != state.modules:
            return f"the supervisor preloaded {list(state.modules)}, not {list(modules)}"
        reason = self._program_reason(spec)
        if reason is None:
            reason = self._cold_path_reason(str(spec.get("cwd") or os.getcwd()), state)
        if reason is None:
            reason = self.shadowing.reason(spec)
        if reason is None:
            reason = self._environment_reason(spec.get("env") or {}, state)
        if reason is None:
            reason = self.process_reason(state.modules)
        return reason

    def note_once(self, reason: str) -> bool:
        """True the first time a reason is seen: the driver is told each one once."""
        if reason in self.reported:
            return False
        self.reported.add(reason)
        return True

    # -- checks -------------------------------------------------------------

    def _cold_path_reason(self, cwd: str, state: WarmState) -> Optional[str]:
        """Why the sys.path of a cold start in ``cwd`` is unknown, or None once it is known.

        Probed once per working folder; the probe also tells the shadowing
        check what a cold interpreter has imported when its script starts.
        """
        if cwd in state.cold_paths:
            return None
        try:
            cold_path, cold_modules = _cold_start(cwd)
        except (OSError, ValueError) as err:
            return f"the module path of a cold start in {cwd} could not be found ({err})"
        state.cold_paths[cwd] = cold_path
        self.shadowing.set_cold_modules(cold_modules)
        return None

    @staticmethod
    def _program_reason(spec: Mapping[str, Any]) -> Optional[str]:
        argv = list(spec.get("argv") or ())
        executable = str(spec.get("executable") or "")
        if executable != sys.executable and (
            os.path.realpath(executable) != os.path.realpath(sys.executable)
        ):
            return (
                f"the trial runs {executable}, not the Python the supervisor runs "
                f"({sys.executable}); only Python entry points start warm"
            )
        if len(argv) >= 3 and argv[1] == "-m":
            if all(part.isidentifier() for part in argv[2].split(".")):
                return None  # python -m module, as FunctionBackend runs its trials
            return f"{argv[2]!r} after -m is not a module name"
        if len(argv) < 2 or argv[1].startswith("-"):
            words = " ".join(argv[:2])
            return f"the binary passes options to Python ({words}); give binary=None"
        try:
            with open(argv[1], "rb") as script:
                head = script.read(4)
        except OSError as err:
            return f"the entry point {argv[1]} cannot be read ({err.strerror})"
        if head == b"PK\x03\x04" or head == importlib.util.MAGIC_NUMBER:
            return f"the entry point {argv[1]} is a zip application or compiled code, not source"
        return None

    def _environment_reason(
        self, env: Mapping[str, str], state: WarmState
    ) -> Optional[str]:
        for name in THREAD_VARIABLES:
            if env.get(name) != state.import_env.get(name):
                return (
                    f"the trial's {name} ({env.get(name)}) differs from the one the preload "
                    f"modules were imported with ({state.import_env.get(name)})"
                )
        names = {*_STARTUP_NAMES, *(n for n in (*env, *self._environ) if n.startswith("PYTHON"))}
        for name in sorted(names - _HANDLED_PYTHON_VARIABLES):
            if env.get(name) != self._environ.get(name):
                return (
                    f"the trial's {name} ({env.get(name)}) differs from the supervisor's "
                    f"({self._environ.get(name)}), and Python reads it only when it starts"
                )
        return None

    @staticmethod
    def process_reason(modules: Sequence[str]) -> Optional[str]:
        """Why this process must not be forked now, or None."""
        threads = thread_count()
        if threads != 1:
            return (
                f"the supervisor has {threads} threads after importing {list(modules)}, and "
                "forking a multi-threaded process can deadlock the child"
            )
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        if cuda is not None and cuda.is_initialized():
            return "CUDA was initialised in the supervisor"
        return None

    @staticmethod
    def _libraries_reason() -> Optional[str]:
        """Why the libraries loaded now rule out forking (checked once: only imports load more)."""
        loaded = [lib for lib in _mapped_libraries() if any(c in lib for c in _CUDA_LIBRARIES)]
        if loaded:
            return f"a CUDA library is loaded in the supervisor ({os.path.basename(loaded[0])})"
        return None

    # -- preparing ----------------------------------------------------------

    def _prepare(self, modules: tuple[str, ...], env: Mapping[str, str]) -> Optional[str]:
        """Import the modules once, as the trial's environment would; the reason if not."""
        refused = cuda_modules(modules)
        if refused:
            return f"preloading {refused} would initialise CUDA in the supervisor"
        import_env = {name: env.get(name) for name in THREAD_VARIABLES}
        for name, value in import_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        # OpenBLAS starts its thread pool at load time unless told not to; the
        # child gets the pool a cold start would have (see _warm_child).
        limit_blas = import_env["OPENBLAS_NUM_THREADS"] != "1"
        if limit_blas:
            os.environ["OPENBLAS_NUM_THREADS"] = "1"
        fds = _open_fds()
        umask = os.umask(0o077)
        os.umask(umask)
        try:
            # Trial scripts import localbackend's report and checkpoint helpers,
            # and nearly all read their config from argv with argparse.
            for name in (*modules, *_TRIAL_SIDE_MODULES):
                importlib.import_module(name)
        except BaseException as err:  # an import may raise anything, SystemExit included
            return f"importing the preload modules failed ({type(err).__name__}: {err})"
        finally:
            if limit_blas:
                _restore(os.environ, "OPENBLAS_NUM_THREADS", import_env["OPENBLAS_NUM_THREADS"])
            # Inherited by every run, warm or cold, as it was before the imports.
            os.umask(umask)
        left_open = sorted(_open_fds() - fds)
        if left_open:
            return (
                f"importing {list(modules)} left descriptors {left_open} open, which a trial "
                "must not inherit"
            )
        setter = _openblas_setter() if limit_blas else None
        if limit_blas and setter is None and any("openblas" in lib for lib in _mapped_libraries()):
            return "OpenBLAS is loaded but its thread count cannot be given back to the trial"
        reason = self._libraries_reason() or self.process_reason(modules)
        if reason is not None:
            return reason
        # Objects that exist now are never freed in a child: keep the
        # collector off them, so that children share their pages longer.
        gc.collect()
        gc.freeze()
        global _prepared
        self.state = _prepared = WarmState(
            modules=modules, cold_paths={}, import_env=import_env,
            openblas_setter=setter, stdio=_stdio_codecs(),
            clearenv=getattr(ctypes.CDLL(None), "clearenv", None),
        )
        return None


def _restore(environ: Any, name: str, value: Optional[str]) -> None:
    if value is None:
        environ.pop(name, None)
    else:
        environ[name] = value


def _openblas_setter() -> Any:
    """The loaded OpenBLAS's ``set_num_threads``, or None."""
    for library in _mapped_libraries():
        if "openblas" not in os.path.basename(library).lower():
            continue
        try:
            handle = ctypes.CDLL(library)
        except OSError:
            continue
        for symbol in _OPENBLAS_SETTERS:
            setter = getattr(handle, symbol, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = None
                return setter
    return None


def _cold_start(cwd: str) -> tuple[list[str], list[str]]:
    """What a cold start in ``cwd`` has when its script begins.

    ``sys.path`` less its first entry (the script's folder), and the
    top-level modules already imported (their names as listed, which
    ``ShadowCheck`` reduces to the top level). A failed probe raises
    ``ValueError``.
    ``subprocess`` is imported here, not with the module: it loads
    ``threading``, whose after-fork work every keeper forked by a supervisor
    would pay (about 100 page faults each), and a supervisor that runs no
    warm trial never needs it.
    """
    import subprocess

    probe = (
        "import sys; names = sorted(sys.modules); import json; "
        "print(json.dumps([sys.flags.safe_path, sys.path, names]))"
    )
    environ = dict(os.environ)
    try:
        output = subprocess.run(
            [sys.executable, "-c", probe], env=environ, cwd=cwd, capture_output=True,
            check=True, timeout=60, stdin=subprocess.DEVNULL,
        ).stdout
    except subprocess.SubprocessError as err:
        raise ValueError(str(err)) from err
    safe_path, path, names = json.loads(output)
    entries = [str(entry) for entry in path]
    if not safe_path and entries and entries[0] == "":
        entries = entries[1:]
    return entries, [str(name) for name in names]


def _stdio_codecs() -> dict[str, tuple[str, str]]:
    codecs = {}
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, "__" + name + "__", None)
        encoding = getattr(stream, "encoding", None) or "utf-8"
        errors = getattr(stream, "errors", None) or "strict"
        codecs[name] = (str(encoding), str(errors))
    return codecs

"""A warm start: the trial forked from its keeper, made to look like a cold start.

The keeper (``_keeper``) calls :func:`fork_trial` instead of ``posix_spawn``
when the supervisor judged the run fit to start warm (``_zygote``). The child
is the keeper's own child, so the supervision is the same as a cold start's.
Before the script runs, the child undoes everything it inherited that a
fresh ``python script.py`` would not have: its session, descriptors, signal
handlers and mask, environment, working folder, ``sys.argv``, ``sys.path``,
standard streams, random states and thread pools. The script then runs as
``__main__``, and its end (exit code, traceback, ``atexit``, non-daemon
threads, flushing) follows what the interpreter does after a script.

What a fork cannot undo is documented in the README ("Warm starts"): the
string hash seed is the zygote's, modules the zygote imported stay imported,
and objects still alive at exit are not finalised.
"""

from __future__ import annotations

import atexit
import builtins
import ctypes
import io
import json
import os
import random
import runpy
import signal
import sys
import threading
import types
import warnings
from collections.abc import Callable, Mapping
from importlib.machinery import SourceFileLoader
from typing import Any, Optional

from ._shadowing import cold_first_path
from ._zygote import WarmState, prepared_state

# The exit status of a child whose set-up failed (EX_SOFTWARE).
SETUP_FAILED = 70
# What Python exits with when flushing stdout or stderr at exit fails.
_FLUSH_FAILED = 120
# The range of a C long, into which the interpreter reads sys.exit's int.
_C_LONG_MAX = 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1
_C_LONG_MIN = -_C_LONG_MAX - 1
# Where the traceback of ``python -m module`` begins.
_RUNPY_FILE = runpy._run_module_as_main.__code__.co_filename  # type: ignore[attr-defined]
# Entry scripts compiled in the supervisor (``compile_ahead``), by absolute
# path: the file's identity then, its source and its code. A warm child whose
# script reads the same source runs that code, instead of compiling the
# file again in every run.
_compiled: dict[str, tuple[tuple[int, int, int], bytes, types.CodeType]] = {}


def compile_ahead(spec: Mapping[str, Any]) -> None:
    """In the supervisor, before a warm run's keeper is forked: compile its script.

    Compiled again only when the file's inode, size or modification time
    changed; the child compares the source itself. A script that cannot be
    read or compiled, or whose compilation warns (a ``SyntaxWarning`` belongs
    on the trial's stderr, as a cold start prints it), is left to the child.
    """
    argv = [str(word) for word in spec["argv"]]
    if len(argv) < 2 or argv[1] == "-m":
        return
    filename = os.path.abspath(os.path.join(str(spec["cwd"]), argv[1]))
    try:
        info = os.stat(filename)
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        cached = _compiled.get(filename)
        if cached is not None and cached[0] == identity:
            return
        _compiled.pop(filename, None)
        with io.open_code(filename) as source:
            text = source.read()
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            code = compile(text, filename, "exec", dont_inherit=True)
    except Exception:  # whatever the script holds, the supervisor carries on
        return
    if not warned:
        _compiled[filename] = (identity, text, code)


def fork_trial(
    spec: Mapping[str, Any], env: Mapping[str, str], out: int, err: int,
    imports_folder: Optional[str] = None,
) -> int:
    """Fork the trial from this keeper; its PID. The child never returns.

    ``imports_folder``: where the run lists what its script imported (see
    ``ENV_WARM_IMPORTS``), for ``localbackend check --preload``.
    """
    state = prepared_state()
    if state is None:
        raise RuntimeError("a warm start was asked of a keeper whose supervisor preloaded nothing")
    # The keeper signals the trial's process groups as soon as it knows the
    # PID: the child must be in its own session by then, not in the
    # supervisor's group. The pipe's end-of-file says it is.
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid != 0:
        os.close(ready_w)
        try:
            os.read(ready_r, 1)
        finally:
            os.close(ready_r)
        return pid
    code = SETUP_FAILED
    try:
        os.setsid()
        os.close(ready_w)
        os.close(ready_r)
        code = _run(spec, env, out, err, state, imports_folder)
    except BaseException as error:  # never fall back into the keeper's code
        try:
            import traceback

            text = "".join(traceback.format_exception(error))
            os.write(2, f"localbackend: the warm start failed: {text}\n".encode())
        except OSError:
            pass
    os._exit(code)


def _run(
    spec: Mapping[str, Any], env: Mapping[str, str], out: int, err: int, state: WarmState,
    imports_folder: Optional[str],
) -> int:
    _default_signals()
    _fresh_descriptors(out, err)
    os.chdir(str(spec["cwd"]))
    if state.clearenv is not None:
        state.clearenv()  # the C environment; os.environ is emptied next
    os.environ.clear()
    os.environ.update(env)
    _fault_handler(env)
    argv = [str(word) for word in spec["argv"]]
    module = argv[2] if argv[1] == "-m" else None
    # sys.path[0]: for python -m the cwd (sys.argv[0] becomes the module's
    # file), else the script's folder.
    first = cold_first_path(argv, os.getcwd())
    options = ["-m", *argv[3:]] if module is not None else argv[1:]
    _fresh_interpreter_state(argv, options, first, env, state.cold_paths[str(spec["cwd"])],
                             state)
    _reseed()
    _give_back_threads(env, state)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    imported_before = set(sys.modules) if imports_folder else set()
    if module is not None:
        status = _run_main(_module_runner(module), _RUNPY_FILE)
    else:
        status = _run_main(_script_runner(argv[1]), os.path.abspath(argv[1]))
    if imports_folder:
        try:
            _report_imports(imports_folder, spec, imported_before, own=(first, os.getcwd()))
        except Exception:  # the script's end stands; the check says it was not told
            pass
    return status


def _report_imports(
    folder: str, spec: Mapping[str, Any], before: set[str], own: tuple[str, ...]
) -> None:
    """For ``check --preload``: the modules the script imported after the fork, to preload.

    Listed: modules the import system found (a ``__spec__``; not a module an
    extension made up for itself, such as Cython's ``cython_runtime``), and
    not found in the script's own folders (``own``: ``sys.path[0]`` and the
    working folder, which another working folder would not have). Nothing
    is read through attributes, which a lazy module would load.
    """
    paths = sorted((os.path.abspath(p or os.getcwd()) for p in sys.path if isinstance(p, str)),
                   key=len, reverse=True)
    names = []
    for name, module in list(sys.modules.items()):
        if not isinstance(name, str) or name in before or name == "__main__":
            continue
        if not isinstance(module, types.ModuleType):
            continue
        # Past the module's own __getattribute__, which a lazy module loads in.
        found = object.__getattribute__(module, "__dict__").get("__spec__")
        if found is None:
            continue
        origin = getattr(found, "origin", None)
        if isinstance(origin, str) and os.path.isabs(origin):
            entry = next((p for p in paths if origin.startswith(p.rstrip(os.sep) + os.sep)), None)
            if entry is not None and entry in own:
                continue  # the script's own module
        names.append(name)
    # Imported here, in a check's warm run only: the supervisor, which every
    # keeper is a fork of, stays without it.
    from ..._paths import warm_imports_file

    with open(warm_imports_file(folder, spec["trial"], spec["run"]), "w", encoding="utf-8") as out:
        out.write(json.dumps(sorted(names)))


def _default_signals() -> None:
    """Every disposition as a cold interpreter sets it up (the mask is emptied last)."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # signals the C library keeps for itself
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _fault_handler(env: Mapping[str, str]) -> None:
    """``faulthandler`` on only with ``PYTHONFAULTHANDLER``, as cold: a preload module's
    (its handlers reset by ``_default_signals``) does not reach the trial."""
    import faulthandler

    faulthandler.disable()
    if env.get("PYTHONFAULTHANDLER"):
        faulthandler.enable()


def _fresh_descriptors(out: int, err: int) -> None:
    """0 from /dev/null, 1 and 2 to the trial's logs, and nothing else open."""
    null = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(source, target, inheritable=True)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _fresh_interpreter_state(
    argv: list[str], script_argv: list[str], path0: str, env: Mapping[str, str],
    cold_path: list[str], state: WarmState,
) -> None:
    sys.argv = script_argv
    sys.orig_argv = argv
    first = [] if sys.flags.safe_path else [path0]
    sys.path[:] = [*first, *cold_path]
    sys.path_importer_cache.clear()
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        stream = _stdio(fd, name, state.stdio[name], unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    tempfile: Any = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # computed from the environment on first use
    # The C library read TZ when ``time`` was imported in the supervisor; a
    # cold start reads the trial's (time.tzname, time.timezone, localtime).
    time: Any = sys.modules.get("time")
    if time is not None:
        time.tzset()


def _stdio(fd: int, name: str, codec: tuple[str, str], unbuffered: bool) -> io.TextIOWrapper:
    """A standard stream built as the interpreter builds it at start-up."""
    reading = fd == 0
    raw = io.FileIO(fd, "rb" if reading else "wb", closefd=False)
    raw.name = f"<{name}>"
    buffer: Any
    if reading:
        buffer = io.BufferedReader(raw)
    elif unbuffered:
        buffer = raw
    else:
        buffer = io.BufferedWriter(raw)
    encoding, errors = codec
    stream = io.TextIOWrapper(
        buffer, encoding=encoding, errors=errors, newline="\n",
        line_buffering=not unbuffered and fd == 2, write_through=unbuffered,
    )
    stream.mode = "r" if reading else "w"  # type: ignore[misc]
    return stream


def _reseed() -> None:
    """Fresh random states, from the OS, as each module seeds itself at import."""
    random.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.random.default_generator.seed()


def _give_back_threads(env: Mapping[str, str], state: WarmState) -> None:
    """OpenBLAS was held to one thread in the zygote; give the count a cold start gets."""
    if state.openblas_setter is None:
        return
    count = _cold_openblas_threads(env)
    if count != 1:
        state.openblas_setter(count)


def _cold_openblas_threads(env: Mapping[str, str]) -> int:
    """The thread count OpenBLAS picks at load time, from the same variables."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            value = int(env.get(name, "") or 0)
        except ValueError:
            value = 0
        if value > 0:
            return value
    return max(1, len(os.sched_getaffinity(0)))


def _script_runner(script: str) -> Callable[[], None]:
    """``python script.py``: the file compiled and run in a fresh ``__main__``."""
    filename = os.path.abspath(script)

    def run() -> None:
        main = _fresh_main()
        main.__dict__.update(
            __file__=filename, __cached__=None, __package__=None, __spec__=None,
            __loader__=SourceFileLoader("__main__", script),
        )
        with io.open_code(script) as source:
            text = source.read()
        cached = _compiled.get(filename)
        if cached is not None and cached[1] == text:
            code = cached[2]
        else:
            code = compile(text, filename, "exec", dont_inherit=True)
        exec(code, main.__dict__)

    return run


def _module_runner(module: str) -> Callable[[], None]:
    """``python -m module``: what the interpreter calls for it, in a fresh ``__main__``."""

    def run() -> None:
        _fresh_main()
        runpy._run_module_as_main(module, alter_argv=True)  # type: ignore[attr-defined]

    return run


def _fresh_main() -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    if "__annotations__" in vars(sys.modules["__main__"]):
        # As the interpreter makes its own __main__, which ours replaces.
        main.__annotations__ = {}
    sys.modules["__main__"] = main
    return main


def _run_main(run: Callable[[], None], first_file: str) -> int:
    """Run ``__main__`` and end as the interpreter would; the exit code.

    ``first_file`` is where a cold start's traceback begins: the script, or
    runpy for ``-m``.
    """
    interrupted = False
    try:
        run()
        status = 0
    except SystemExit as exit_request:
        status = _exit_status(exit_request)
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        _print_uncaught(error, first_file)
        status = 1
    status = _finish(status)
    if interrupted:
        # As Python does: die of SIGINT, so the parent sees how the script ended.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def _exit_status(exit_request: SystemExit) -> int:
    """What ``sys.exit(value)`` exits with: None is 0, an int itself, anything else 1.

    As the interpreter reads the int into a C ``long``: one out of its range
    is -1, that is 255.
    """
    value = exit_request.code
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF if _C_LONG_MIN <= value <= _C_LONG_MAX else 0xFF
    try:
        sys.stderr.write(f"{value}\n")
    except Exception:
        pass
    return 1


def _print_uncaught(error: BaseException, filename: str) -> None:
    """The traceback a cold start prints: from the script's first frame on."""
    trace = error.__traceback__
    while trace is not None and trace.tb_frame.f_code.co_filename != filename:
        trace = trace.tb_next
    error.__traceback__ = trace
    sys.excepthook(type(error), error, trace)


def _finish(status: int) -> int:
    """The interpreter's end after a script: threads joined, atexit run, streams flushed."""
    try:
        shutdown: Optional[Any] = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
    except BaseException as error:  # a KeyboardInterrupt while joining, as Python reports
        _print_uncaught(error, "")
    atexit._run_exitfuncs()
    flushed = _flush_at_exit(sys.stdout, report=True)
    if not _flush_at_exit(sys.stderr, report=False) or not flushed:
        status = _FLUSH_FAILED
    return status


def _flush_at_exit(stream: Any, report: bool) -> bool:
    """Flush a standard stream as the interpreter does at exit; False if that failed.

    A stream set to None, or closed by the script, is left alone. A failed
    flush of stdout is reported on stderr as an exception ignored.
    """
    if stream is None:
        return True
    try:
        closed = bool(stream.closed)
    except Exception:  # without a readable ``closed``, the interpreter flushes it
        closed = False
    if closed:
        return True
    try:
        stream.flush()
    except Exception as error:
        if report:
            try:
                import traceback

                # As the interpreter reports it (no Python frame): 3.13 names the
                # flush, then the stream's finaliser fails to flush it again.
                only = "".join(traceback.format_exception_only(error))
                if sys.version_info >= (3, 13):
                    sys.stderr.write(f"Exception ignored on flushing sys.stdout:\n{only}")
                sys.stderr.write(f"Exception ignored in: {stream!r}\n{only}")
            except Exception:
                pass
        return False
    return True


"""Trial: report what a started process sees, then end as --ending says.

Used by tests/test_warm_start.py to compare a warm start with a cold one.
Endings: ok, exit3 (sys.exit(3)), message (sys.exit("bye")), raise
(ValueError), numpy or torch (import it first), atexit (an atexit handler
and a non-daemon thread print after the script's end), sigterm (wait for
SIGTERM, with default handling).
"""

import atexit
import json
import os
import random
import signal
import sys
import threading
import time

# What the interpreter put in __main__ before the first line ran (imports add no dunder).
MAIN_NAMES = sorted(name for name in globals() if name.startswith("__"))

ending = sys.argv[sys.argv.index("--ending") + 1] if "--ending" in sys.argv else "ok"
if ending == "numpy":
    import numpy  # noqa: F401
if ending == "torch":
    import torch  # noqa: F401


def environ_of_a_child() -> dict[str, str]:
    """The C-level environment, as a program this trial starts inherits it."""
    import subprocess

    output = subprocess.run(["env", "-0"], capture_output=True, check=True).stdout
    entries = [entry.decode() for entry in output.split(b"\0") if entry]
    return dict(entry.split("=", 1) for entry in entries)


def numpy_facts() -> dict[str, object]:
    if "numpy" not in sys.modules:
        return {}
    import numpy

    return {"numpy_random": float(numpy.random.rand())}


def torch_facts() -> dict[str, object]:
    if "torch" not in sys.modules:
        return {}
    import torch

    return {"torch_threads": torch.get_num_threads(), "torch_seed": torch.initial_seed(),
            "torch_cuda_initialized": torch.cuda.is_initialized()}


def blas_threads() -> object:
    import ctypes

    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    for lib in libs:
        handle = ctypes.CDLL(lib)
        for name in ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_"):
            getter = getattr(handle, name, None)
            if getter is not None:
                return int(getter())
    return None


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


main_module = sys.modules["__main__"]
facts = {
    "argv": sys.argv,
    "orig_argv_tail": sys.orig_argv[1:],
    "path": sys.path,
    "session_leader": os.getsid(0) == os.getpid(),
    "group_leader": os.getpgid(0) == os.getpid(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "handlers": {
        signal.Signals(s).name: str(signal.getsignal(s))
        for s in sorted(signal.valid_signals())
        if s not in (signal.SIGKILL, signal.SIGSTOP) and s < signal.SIGRTMIN
    },
    "mask": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "name": __name__,
    "main_is_this": main_module.__dict__ is globals(),
    "file": __file__,
    "spec": None if __spec__ is None else [__spec__.name, __spec__.origin],
    "package": __package__,
    "cached": __cached__,
    "loader": type(__loader__).__name__,
    "main_names": MAIN_NAMES,
    "annotations": repr(globals().get("__annotations__")),
    "umask": umask(),
    "environ": dict(os.environ),
    "environ_reaches_children": dict(os.environ) == environ_of_a_child(),
    "cwd": os.getcwd(),
    "random": random.random(),
    "stdio": [
        (s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through,
         type(s.buffer).__name__, s.fileno())
        for s in (sys.stdin, sys.stdout, sys.stderr)
    ],
    "dunder_stdio_same": sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__,
    "stdin_empty": sys.stdin.read() == "",
    "threads": len(os.listdir("/proc/self/task")),
    "blas_threads": blas_threads(),
    **numpy_facts(),
    **torch_facts(),
}
with open(os.path.join(os.environ["LOCALBACKEND_TRIAL_DIR"], "facts.json"), "w") as out:
    json.dump(facts, out)
print("stdout line")
print("stderr line", file=sys.stderr)

from localbackend import report  # noqa: E402

report(epoch=1, loss=0.5)

if ending == "exit3":
    sys.exit(3)
if ending == "message":
    sys.exit("bye")
if ending == "raise":
    def fail() -> None:
        raise ValueError("deliberate")

    fail()
if ending == "atexit":
    atexit.register(lambda: print("atexit ran", flush=True))

    def late() -> None:
        time.sleep(0.2)
        print("thread finished", flush=True)

    threading.Thread(target=late).start()
if ending == "sigterm":
    report(epoch=2, loss=0.25)
    while True:
        time.sleep(1)

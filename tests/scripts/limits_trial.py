"""A trial for the limits tests; ``--mode`` says what it does.

- ``sleep``: report ``step=0``, sleep ``--seconds``, report ``step=1``.
- ``steps``: report a step every ``--seconds`` for ``--steps`` steps,
  checkpointing the step first, so a resumed run carries on.
- ``grandchild_alloc``: start a child that starts a grandchild in a new
  session; the grandchild allocates ``--megabytes`` MiB, 8 MiB at a time.
- ``affinity``: report the cores it may run on and ``OMP_NUM_THREADS``,
  then idle.
- ``hang``: report once, then block in ``stuck_in_here`` for good.
- ``crash_until``: epochs 0 to ``--epochs`` - 1, each checkpointed then
  reported; the first ``--crashes`` runs exit with code 3 after the epoch
  given by ``--crash_at`` plus the number of earlier crashes.
- ``crash``: exit with code 1 at once.
- ``alloc_on_term``: with a SIGTERM handler that touches ``term-handler-ran``,
  allocate ``--megabytes`` MiB.
"""

from __future__ import annotations

import os
import sys
import time

import trialkit

from localbackend import checkpoint, report

mode = trialkit.option("mode", "sleep")
seconds = float(trialkit.option("seconds", "1"))


def stuck_in_here() -> None:
    while True:
        time.sleep(1000)


def allocate(megabytes: int) -> None:
    blocks = []
    for _ in range(megabytes // 8):
        blocks.append(bytearray(8 << 20))  # bytearray() touches every page
        time.sleep(0.01)
    trialkit.touch("allocated")
    trialkit.idle()


if mode == "sleep":
    report(step=0)
    time.sleep(seconds)
    report(step=1)
elif mode == "steps":
    state = checkpoint.load_json()
    start = 0 if state is None else state["step"] + 1
    for step in range(start, int(trialkit.option("steps", "10"))):
        checkpoint.save_json({"step": step})
        report(step=step)
        time.sleep(seconds)
elif mode == "grandchild_alloc":
    megabytes = int(trialkit.option("megabytes", "256"))
    report(step=0)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            allocate(megabytes)
            os._exit(0)
        os._exit(0)
    trialkit.idle()
elif mode == "alloc_on_term":
    import signal

    signal.signal(signal.SIGTERM, lambda signum, frame: trialkit.touch("term-handler-ran"))
    report(step=0)
    allocate(int(trialkit.option("megabytes", "256")))
elif mode == "affinity":
    cores = sorted(os.sched_getaffinity(0))
    report(cores=cores, omp=os.environ.get("OMP_NUM_THREADS"))
    trialkit.idle()
elif mode == "threads":
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    report(**{name: os.environ.get(name) for name in names})
    trialkit.idle()
elif mode == "hang":
    report(step=0)
    print("about to hang", flush=True)
    stuck_in_here()
elif mode == "crash_until":
    crashes = int(trialkit.option("crashes", "2"))
    crash_at = int(trialkit.option("crash_at", "1"))
    counter = trialkit.trial_dir() / "crash-count"
    crashed = int(counter.read_text()) if counter.exists() else 0
    state = checkpoint.load_json()
    start = 0 if state is None else state["epoch"] + 1
    print(f"starting at epoch {start}", flush=True)
    for epoch in range(start, int(trialkit.option("epochs", "5"))):
        checkpoint.save_json({"epoch": epoch})
        report(epoch=epoch)
        if crashed < crashes and epoch == crash_at + crashed:
            counter.write_text(str(crashed + 1))
            print(f"crashing after epoch {epoch}", file=sys.stderr, flush=True)
            sys.stderr.flush()
            os._exit(3)
elif mode == "crash":
    print("failing at once", file=sys.stderr, flush=True)
    sys.exit(1)
elif mode == "slow_term":
    # Steps as in "steps", but a SIGTERM takes --term_seconds to be obeyed.
    import signal

    def on_term(signum: int, frame: object) -> None:
        time.sleep(float(trialkit.option("term_seconds", "1")))
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    state = checkpoint.load_json()
    start = 0 if state is None else state["step"] + 1
    for step in range(start, 100000):
        checkpoint.save_json({"step": step})
        report(step=step)
        time.sleep(seconds)
elif mode == "fork_pool":
    # Touch --megabytes MiB, then fork 3 children that share those pages.
    data = bytearray(int(trialkit.option("megabytes", "60")) << 20)
    report(step=0)
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            time.sleep(seconds)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    report(step=1)

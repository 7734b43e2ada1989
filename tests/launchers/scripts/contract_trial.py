"""A trial for the launcher contract tests; ``--mode`` picks what it does.

It talks to its test only through files in its trial folder
(``$LOCALBACKEND_TRIAL_DIR``), published atomically, and every wait has a
deadline so that it never outlives a broken test.

* ``record``: writes ``seen.json`` (its argv, working folder and the
  environment variables named by ``--show``), then exits 0.
* ``term_gate``: on SIGTERM touches ``term-received``, waits for the gate
  ``release``, touches ``handler-done`` and exits 0; until then it idles.
* ``lingering``: run ``--run N`` of a trial whose tree outlives SIGTERM. It
  first records which PIDs of earlier runs (``tree-*.json``) are still
  alive, in ``tree-N.json`` with its own PIDs; a child in a session of its own
  ignores SIGTERM, and the main process only notes it (``term-N``), so only
  SIGKILL ends the tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DEADLINE = 60.0
folder = Path(os.environ["LOCALBACKEND_TRIAL_DIR"])


def option(name: str, default: str) -> str:
    value = default
    for index, arg in enumerate(sys.argv[1:-1], start=1):
        if arg == f"--{name}":
            value = sys.argv[index + 1]
    return value


def publish(name: str, obj: object) -> None:
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, folder / name)


def wait_for_file(name: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not (folder / name).exists():
        if time.monotonic() > deadline:
            sys.stderr.write(f"contract_trial: gave up waiting for {name}\n")
            os._exit(97)
        time.sleep(0.005)


def idle() -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(98)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


IGNORING_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, sys.argv[1])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

mode = option("mode", "record")
if mode == "record":
    names = [name for name in option("show", "").split(",") if name]
    publish(
        "seen.json",
        {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {n: os.environ.get(n) for n in names}},
    )
    print("recorded", flush=True)
elif mode == "term_gate":

    def on_term(signum: int, frame: object) -> None:
        publish("term-received", os.getpid())
        wait_for_file("release")
        publish("handler-done", os.getpid())
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    publish("ready", os.getpid())
    idle()
elif mode == "lingering":
    run = int(option("run", "0"))
    earlier = []
    for path in sorted(folder.glob("tree-*.json")):
        earlier.extend(json.loads(path.read_text())["pids"])
    signal.signal(signal.SIGTERM, lambda signum, frame: publish(f"term-{run}", os.getpid()))
    ready = folder / f"child-{run}.pid"
    child = subprocess.Popen(
        [sys.executable, "-c", IGNORING_CHILD, str(ready)], start_new_session=True
    )
    wait_for_file(ready.name)
    publish(
        f"tree-{run}.json",
        {"pids": [os.getpid(), child.pid], "earlier_alive": [p for p in earlier if alive(p)]},
    )
    idle()
else:
    sys.exit(f"contract_trial: unknown mode {mode!r}")

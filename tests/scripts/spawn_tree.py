"""Start descendants the backend must reach, write their pids, then idle or exit.

* ``setsid_child``: a child in its own session (``start_new_session``).
* ``grandchild``: double-forked; its parent exits at once, so it is orphaned.
* ``group_child``: a child in the trial's process group that, on SIGTERM,
  touches ``group-child-got-term`` and exits.

With ``--descendants_ignore_term 1`` the first two ignore SIGTERM, so only
SIGKILL ends them. ``--after exit`` makes the trial's main process exit 0 once
``pids.json`` is written; ``--after stay`` makes it idle until signalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import trialkit

ignore_term = trialkit.option("descendants_ignore_term", "0") == "1"
after = trialkit.option("after", "stay")
folder = trialkit.trial_dir()

SLEEPER = """
import os, signal, sys, time
if sys.argv[1] == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready = sys.argv[2]
tmp = ready + ".tmp"
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, ready)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

GROUP_CHILD = """
import os, signal, sys, time
def on_term(signum, frame):
    open(sys.argv[1], "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
ready = sys.argv[2]
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(ready + ".tmp", ready)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

flag = "1" if ignore_term else "0"
setsid_child = subprocess.Popen(
    [sys.executable, "-c", SLEEPER, flag, str(folder / "setsid-child.ready")],
    start_new_session=True,
)
group_child = subprocess.Popen(
    [
        sys.executable, "-c", GROUP_CHILD,
        str(folder / "group-child-got-term"), str(folder / "group-child.ready"),
    ],
)

middle = os.fork()
if middle == 0:
    try:
        if os.fork() == 0:
            os.execv(
                sys.executable,
                [sys.executable, "-c", SLEEPER, flag, str(folder / "grandchild.ready")],
            )
    finally:
        os._exit(0)
os.waitpid(middle, 0)

for name in ("setsid-child.ready", "group-child.ready", "grandchild.ready"):
    trialkit.wait_for_path(folder / name)
grandchild = int((folder / "grandchild.ready").read_text())
trialkit.write_json(
    "pids.json",
    {
        "leader": os.getpid(),
        "leader_sid": os.getsid(0),
        "leader_pgid": os.getpgid(0),
        "setsid_child": setsid_child.pid,
        "group_child": group_child.pid,
        "grandchild": grandchild,
        "middle": middle,
    },
)
if after == "exit":
    # Leave the children running: the backend must end them when we are gone.
    os._exit(0)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)

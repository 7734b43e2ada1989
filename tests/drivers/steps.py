"""Trial: report one result per step, checkpointing before each report.

Options: --steps N (default 40), --step_seconds S (default 0.02),
--spawn_descendants (start a setsid child and a double-forked grandchild that
sleep forever; their PIDs go to descendants.txt in the trial folder).
"""

import argparse
import os
import subprocess
import sys
import time

from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--step_seconds", type=float, default=0.02)
parser.add_argument("--spawn_descendants", type=int, default=0)
args, _ = parser.parse_known_args()

if args.spawn_descendants:
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    child = subprocess.Popen(sleeper, start_new_session=True)
    grandchild_pid_file = os.path.join(os.environ["LOCALBACKEND_TRIAL_DIR"], "grandchild.pid")
    middle = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; "
         f"p = subprocess.Popen({sleeper!r}, start_new_session=True); "
         f"open({grandchild_pid_file!r}, 'w').write(str(p.pid))"]
    )
    middle.wait()  # the grandchild is now orphaned: double-forked
    with open(grandchild_pid_file) as handle:
        grandchild = int(handle.read())
    folder = os.environ["LOCALBACKEND_TRIAL_DIR"]
    with open(os.path.join(folder, "descendants.txt.tmp"), "w") as out:
        out.write(f"{child.pid} {grandchild}\n")
    os.replace(os.path.join(folder, "descendants.txt.tmp"), os.path.join(folder, "descendants.txt"))

state = checkpoint.load_json() or {"step": 0}
for step in range(state["step"] + 1, args.steps + 1):
    time.sleep(args.step_seconds)
    checkpoint.save_json({"step": step})
    report(step=step, pid=os.getpid())

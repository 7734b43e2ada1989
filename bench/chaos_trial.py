"""Trial for the chaos soak: checkpointed steps, each reported once, and an optional crash."""

import argparse
import os
import sys
import time

from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--step_seconds", type=float, default=0.005)
parser.add_argument("--crash_at", type=int, default=-1)
args, _ = parser.parse_known_args()

state = checkpoint.load_json() or {"step": 0}
for step in range(state["step"] + 1, args.steps + 1):
    time.sleep(args.step_seconds)
    if step == args.crash_at:
        print(f"crashing at step {step}", file=sys.stderr, flush=True)
        os._exit(3)
    checkpoint.save_json({"step": step}, keep=1)
    report(step=step, pid=os.getpid())

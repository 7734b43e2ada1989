"""Trial for the pause/resume scenario: checkpoint every ``--interval`` seconds.

On start it loads ``checkpoint.json`` from ``--st_checkpoint_dir`` (the
folder Syne Tune and localbackend both pass) and reports a first result at
once, carrying its pid and the step it resumed from. Then every interval it
advances a step, replaces the checkpoint atomically and reports again.

On SIGTERM it exits at once, unless ``--ignore_sigterm 1``: then it carries
on until SIGKILL, as a trial that never handles signals would.
"""

import json
import os
import signal
import sys
import time

options = dict(zip(sys.argv[1::2], sys.argv[2::2]))
folder = options["--st_checkpoint_dir"]
interval = float(options.get("--interval", "0.1"))
if options.get("--ignore_sigterm", "0") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

path = os.path.join(folder, "checkpoint.json")
try:
    with open(path) as state_file:
        step = int(json.load(state_file)["step"])
except FileNotFoundError:
    step = 0
os.makedirs(folder, exist_ok=True)
start = time.time()
pid = os.getpid()
iteration = 0


def emit(step: int) -> None:
    global iteration
    now = time.time()
    line = {
        "step": step,
        "pid": pid,
        "st_worker_timestamp": now,
        "st_worker_time": now - start,
        "st_worker_iter": iteration,
    }
    iteration += 1
    sys.stdout.write("[tune-metric]: " + json.dumps(line) + "\n")
    sys.stdout.flush()


emit(step)
deadline = time.monotonic() + 600  # never outlive a crashed driver for long
next_tick = time.monotonic()
while time.monotonic() < deadline:
    next_tick += interval
    time.sleep(max(0.0, next_tick - time.monotonic()))
    step += 1
    tmp = f"{path}.tmp-{pid}"
    with open(tmp, "w") as state_file:
        json.dump({"step": step}, state_file)
    os.replace(tmp, path)
    emit(step)

"""Ignore SIGTERM and idle, so only SIGKILL ends this trial.

Each run appends a line to ``runs.jsonl`` in the trial folder with its pid and
the pids of earlier runs that are still alive when it starts, then touches
``ready-<run>``.
"""

from __future__ import annotations

import json
import os
import signal

import trialkit

signal.signal(signal.SIGTERM, signal.SIG_IGN)

runs_path = trialkit.trial_dir() / "runs.jsonl"
earlier = []
if runs_path.exists():
    earlier = [json.loads(line)["pid"] for line in runs_path.read_text().splitlines() if line]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # A zombie is dead for our purposes but still has an entry.
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


line = json.dumps({"pid": os.getpid(), "earlier_alive": [p for p in earlier if alive(p)]})
with open(runs_path, "a") as runs:
    runs.write(line + "\n")
trialkit.touch(f"ready-{len(earlier)}")
print("ignoring SIGTERM", flush=True)
trialkit.idle()

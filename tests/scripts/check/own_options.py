"""A well-behaved trial whose options are its own: ``--steps`` and ``--delay``.

It reports ``epoch`` and ``loss`` once a step, checkpoints after each, resumes
from its checkpoint and exits on SIGTERM, so only the length of its run
decides what ``check`` can see.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, required=True)
parser.add_argument("--delay", type=float, required=True)
args, _unknown = parser.parse_known_args()

stop = {"requested": False}


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    stop["requested"] = True


signal.signal(signal.SIGTERM, on_sigterm)
saved = checkpoint.load_json()
step = saved["step"] if saved else 0
while step < args.steps:
    step += 1
    checkpoint.save_json({"step": step})
    report(epoch=step, loss=1.0 / step)
    deadline = time.monotonic() + args.delay
    while not stop["requested"] and time.monotonic() < deadline:
        time.sleep(0.005)
    if stop["requested"]:
        sys.exit(0)

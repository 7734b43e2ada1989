"""Broken on purpose: saves a checkpoint after every epoch but never loads one.

Every run, a resumed one included, starts again from epoch 1 with the same
seed, so it reports exactly what an uninterrupted run reports, from the start.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from types import FrameType

from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--epoch_seconds", type=float, default=0.1)
parser.add_argument("--seed", type=int, default=0)
args, _unknown = parser.parse_known_args()

stop = {"requested": False}


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    stop["requested"] = True


signal.signal(signal.SIGTERM, on_sigterm)
rng = random.Random(args.seed)
weight = 1.0
for epoch in range(1, args.epochs + 1):
    weight = weight * 0.8 + rng.gauss(0.0, 0.05)
    checkpoint.save_json({"epoch": epoch, "weight": weight})
    report(epoch=epoch, loss=abs(weight))
    deadline = time.monotonic() + args.epoch_seconds
    while not stop["requested"] and time.monotonic() < deadline:
        time.sleep(0.01)
    if stop["requested"]:
        print(f"SIGTERM after epoch {epoch}; exiting", file=sys.stderr)
        sys.exit(0)

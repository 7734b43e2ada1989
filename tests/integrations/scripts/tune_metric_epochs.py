"""Prints Syne Tune's ``[tune-metric]`` lines itself (no syne_tune import): epoch and loss.

``--crash 1`` exits 3 after the first epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--x", type=float, default=0.0)
parser.add_argument("--crash", type=int, default=0)
args, _ = parser.parse_known_args()
for epoch in range(1, args.epochs + 1):
    loss = math.exp(-epoch) + (args.x - 0.3) ** 2
    print("[tune-metric]: " + json.dumps({"epoch": epoch, "loss": loss}), flush=True)
    if args.crash:
        print("tune_metric_epochs: crashing on purpose", file=sys.stderr)
        sys.exit(3)

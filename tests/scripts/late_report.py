"""Train ``--epochs`` epochs (loss 1/epoch), resuming from the latest checkpoint.

On SIGTERM it reports ``loss=-1000`` and exits 0: a result written after the
pause, which the backend never delivers, so no view of the tune may show it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=9)
parser.add_argument("--lr", type=float, default=0.1)
args, _ = parser.parse_known_args()
state = checkpoint.load_json() or {"epoch": 0}


def on_term(signum: int, frame: object) -> None:
    report(epoch=state["epoch"] + 1, loss=-1000.0)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
for epoch in range(state["epoch"] + 1, args.epochs + 1):
    time.sleep(0.05)
    state["epoch"] = epoch
    checkpoint.save_json(state)
    report(epoch=epoch, loss=args.lr / epoch)

"""A tiny deterministic 'training' loop, with switches for the mistakes `check` must catch.

Each epoch nudges a weight with noise from a seeded generator and reports
``epoch`` and ``loss``. The scripts in this folder call :func:`train` with one
switch turned off each; with all on, it is a well-behaved trial.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from types import FrameType
from typing import Any

from localbackend import checkpoint, report


def train(*, checkpoints: bool = True, handle_sigterm: bool = True, save_rng: bool = True) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epoch_seconds", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args, _unknown = parser.parse_known_args()

    stop = {"requested": False}

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_sigterm if handle_sigterm else signal.SIG_IGN)

    rng = random.Random(args.seed)
    state: dict[str, Any] = {"epoch": 0, "weight": 1.0}
    saved = checkpoint.load_json() if checkpoints else None
    if saved is not None:
        state = {"epoch": saved["epoch"], "weight": saved["weight"]}
        if save_rng:
            version, internal, gauss = saved["rng"]
            rng.setstate((version, tuple(internal), gauss))

    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        state["weight"] = state["weight"] * 0.8 + rng.gauss(0.0, 0.05)
        state["epoch"] = epoch
        if checkpoints:
            checkpoint.save_json({**state, "rng": rng.getstate() if save_rng else None})
        report(epoch=epoch, loss=abs(state["weight"]))
        deadline = time.monotonic() + args.epoch_seconds
        while not stop["requested"] and time.monotonic() < deadline:
            time.sleep(0.01)
        if stop["requested"]:
            print(f"SIGTERM after epoch {epoch}; exiting", file=sys.stderr)
            return 0
    return 0

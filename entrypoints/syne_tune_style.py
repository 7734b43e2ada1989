"""Example trial written for Syne Tune, with no localbackend import.

It shows that plain Syne Tune scripts run unchanged under localbackend: the
checkpoint is a ``checkpoint.json`` written straight into the folder given by
``--st_checkpoint_dir``, and results are ``[tune-metric]: {json}`` lines on
stdout, as ``syne_tune.Reporter`` prints them. Only the standard library is
used::

    python entrypoints/syne_tune_style.py --epochs 5 --lr 0.1 --st_checkpoint_dir /tmp/ck
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "checkpoint.json"


class Reporter:
    """What ``syne_tune.Reporter`` does: a JSON line per call, with st_ fields."""

    def __init__(self) -> None:
        self.start = time.time()
        self.iteration = 0

    def __call__(self, **metrics: Any) -> None:
        now = time.time()
        metrics["st_worker_timestamp"] = now
        metrics["st_worker_time"] = now - self.start
        metrics["st_worker_iter"] = self.iteration
        self.iteration += 1
        print(f"[tune-metric]: {json.dumps(metrics)}", flush=True)


def load_checkpoint(folder: Path | None) -> dict[str, Any] | None:
    if folder is None:
        return None
    try:
        with open(folder / CHECKPOINT_FILE) as f:
            state: dict[str, Any] = json.load(f)
            return state
    except FileNotFoundError:
        return None


def save_checkpoint(folder: Path | None, state: dict[str, Any]) -> None:
    """Write ``checkpoint.json`` via a temporary file, so a kill never tears it."""
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / CHECKPOINT_FILE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--st_checkpoint_dir", type=Path, default=None)
    parser.add_argument("--epoch_seconds", type=float, default=0.0)
    args, _unknown = parser.parse_known_args()

    state = load_checkpoint(args.st_checkpoint_dir) or {"epoch": 0, "loss": 1.0}
    report = Reporter()
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        # A stand-in for training: the loss decays at a rate set by the lr.
        loss = state["loss"] * math.exp(-args.lr) + 0.01 / epoch
        if args.epoch_seconds > 0:
            time.sleep(args.epoch_seconds)
        state = {"epoch": epoch, "loss": loss}
        save_checkpoint(args.st_checkpoint_dir, state)
        report(epoch=epoch, loss=loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A trial script written for Syne Tune alone: argparse, --st_checkpoint_dir, syne_tune.Reporter.

It resumes from ``checkpoint.json`` in the checkpoint folder, and reports
``epoch``, ``loss``, ``run`` (1 for the first run, 2 after one resume, ...)
and ``name`` (the --name option, as received).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from syne_tune import Reporter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epoch_seconds", type=float, default=0.0)
    parser.add_argument("--name", type=str, default="")
    parser.add_argument("--st_checkpoint_dir", type=Path, default=None)
    args, _ = parser.parse_known_args()

    state = {"epoch": 0, "loss": 1.0, "run": 0}
    checkpoint = args.st_checkpoint_dir / "checkpoint.json" if args.st_checkpoint_dir else None
    if checkpoint is not None and checkpoint.exists():
        state = json.loads(checkpoint.read_text())
    state["run"] += 1
    report = Reporter()
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        time.sleep(args.epoch_seconds)
        state["epoch"] = epoch
        state["loss"] = state["loss"] * math.exp(-args.lr)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            temporary = checkpoint.with_name(f".checkpoint.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(state))
            os.replace(temporary, checkpoint)
        report(epoch=epoch, loss=state["loss"], run=state["run"], name=args.name)


if __name__ == "__main__":
    main()

"""Reports epoch 1, waits for the --gate file, reports epoch 2, then waits to be killed.

A run that finds a checkpoint (a resumed run) reports epochs 1 and 2 at once
and exits. Every result carries ``run``, so a result of the first run that
shows up after a resume is easy to spot.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from syne_tune import Reporter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gate", type=Path, required=True)
    parser.add_argument("--st_checkpoint_dir", type=Path, required=True)
    args, _ = parser.parse_known_args()

    checkpoint = args.st_checkpoint_dir / "checkpoint.json"
    run = json.loads(checkpoint.read_text())["run"] + 1 if checkpoint.exists() else 1
    args.st_checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(json.dumps({"run": run}))
    report = Reporter()
    report(epoch=1, run=run)
    if run > 1:
        report(epoch=2, run=run)
        return
    deadline = time.monotonic() + 60
    while not args.gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    report(epoch=2, run=run)
    while time.monotonic() < deadline:
        time.sleep(0.1)


if __name__ == "__main__":
    main()

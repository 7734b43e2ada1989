"""A trial script for the Optuna, SMAC and Ax tests: epochs of a fake loss, localbackend.report.

It reports ``epoch``, ``loss`` and ``pid`` each epoch, resumes from a
checkpoint, and with ``--crash 1`` writes to stderr and exits 3 after the
first epoch. ``--budget`` (SMAC's fidelity) overrides ``--epochs``, and
``--print_cost 1`` prints SMAC's ``cost=<loss>`` line at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from localbackend import checkpoint, report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--x", type=float, default=0.0)
    parser.add_argument("--epoch_seconds", type=float, default=0.0)
    parser.add_argument("--crash", type=int, default=0)
    parser.add_argument("--print_cost", type=int, default=0)
    args, _ = parser.parse_known_args()
    epochs = round(args.budget) if args.budget is not None else args.epochs

    state = checkpoint.load_json() or {"epoch": 0}
    for epoch in range(state["epoch"] + 1, epochs + 1):
        time.sleep(args.epoch_seconds)
        loss = math.exp(-args.lr * epoch) + (args.x - 0.3) ** 2
        checkpoint.save_json({"epoch": epoch})
        report(epoch=epoch, loss=loss, pid=os.getpid())
        if args.crash:
            print(f"lb_epochs: crashing on purpose after epoch {epoch}", file=sys.stderr)
            return 3
    if args.print_cost:
        # SMAC's own script convention, instead of report().
        print(f"cost={loss}; runtime=1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())

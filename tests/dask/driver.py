"""A driver on a Dask cluster for the crash test: start trials, wait for results, block.

Starts ``--trials`` trials of ``--entry`` through a DaskLauncher on
``--scheduler``, touches ``--ready`` once every trial has reported, and
then blocks until it is killed.
"""

import argparse
import sys
import time
from pathlib import Path

from localbackend import LocalBackend
from localbackend.launchers.dask import DaskLauncher

parser = argparse.ArgumentParser()
parser.add_argument("--scheduler", required=True)
parser.add_argument("--experiment-dir", required=True)
parser.add_argument("--entry", required=True)
parser.add_argument("--trials", type=int, default=2)
parser.add_argument("--ready", required=True)
parser.add_argument("--lease-timeout", type=float, default=2.0)
parser.add_argument("--detach", action="store_true")
args = parser.parse_args()

backend = LocalBackend(
    args.entry, experiment_dir=args.experiment_dir, grace_period=1.0, detach=args.detach,
    launcher=DaskLauncher(args.scheduler, lease_timeout=args.lease_timeout),
)
ids = [backend.start_trial({"epochs": 1000, "block_at": 2}).trial_id for _ in range(args.trials)]
seen: set[int] = set()
deadline = time.monotonic() + 60
while len(seen) < len(ids):
    if time.monotonic() > deadline:
        sys.exit("the trials never reported")
    backend.wait(timeout=1.0)
    _, results = backend.fetch_status_results(ids)
    seen.update(trial_id for trial_id, result in results if result.get("epoch") == 2)
Path(args.ready).touch()
while True:
    time.sleep(60)

"""A driver process for crash tests: runs trials, records what it was delivered, then blocks.

It writes every delivered result to --record (one JSON line each, flushed),
then creates --ready once at least --deliver-at-least results were delivered,
and then blocks until it is killed, never fetching again.
"""

import argparse
import json
import os
import pickle
import time
from pathlib import Path

from localbackend import LocalBackend

parser = argparse.ArgumentParser()
parser.add_argument("--experiment-dir", required=True)
parser.add_argument("--entry", required=True)
parser.add_argument("--trials", type=int, default=2)
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--step-seconds", type=float, default=0.02)
parser.add_argument("--deliver-at-least", type=int, default=5)
parser.add_argument("--record", required=True)
parser.add_argument("--ready", required=True)
parser.add_argument("--detach", action="store_true")
parser.add_argument("--spawn-descendants", action="store_true")
parser.add_argument("--pickle")
parser.add_argument("--then", choices=["block", "raise", "exit"], default="block")
args = parser.parse_args()

backend = LocalBackend(
    args.entry, experiment_dir=args.experiment_dir, grace_period=1.0, detach=args.detach
)
ids = [
    backend.start_trial(
        {"steps": args.steps, "step_seconds": args.step_seconds,
         "spawn_descendants": int(args.spawn_descendants)}
    ).trial_id
    for _ in range(args.trials)
]
delivered = 0
with open(args.record, "a") as record:
    while delivered < args.deliver_at_least:
        backend.wait(timeout=1.0)
        _, results = backend.fetch_status_results(ids)
        for trial_id, result in results:
            record.write(json.dumps({"trial_id": trial_id, **result}) + "\n")
        record.flush()
        os.fsync(record.fileno())
        delivered += len(results)
if args.spawn_descendants:
    folders = [backend.trial_dir(t) for t in ids]
    deadline = time.monotonic() + 30
    while not all((f / "descendants.txt").exists() for f in folders):
        if time.monotonic() > deadline:
            raise SystemExit("descendants never reported")
        time.sleep(0.01)
if args.pickle:
    Path(args.pickle).write_bytes(pickle.dumps(backend))
Path(args.ready).write_text(str(os.getpid()))
if args.then == "raise":
    raise RuntimeError("driver failing on purpose")
if args.then == "exit":
    os._exit(3)
while True:
    time.sleep(3600)

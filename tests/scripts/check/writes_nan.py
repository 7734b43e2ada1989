"""Broken on purpose: writes its results itself, with NaN, which is not JSON.

Each epoch is checkpointed, then appended to the results file as a line
``{"epoch": N, "loss": NaN}``: every line is skipped, so nothing is reported.
"""

import json
import os
import time

from localbackend import checkpoint

state = checkpoint.load_json() or {"epoch": 0}
for epoch in range(state["epoch"] + 1, 7):
    time.sleep(0.1)
    checkpoint.save_json({"epoch": epoch})
    with open(os.environ["LOCALBACKEND_RESULTS_FILE"], "a") as results:
        results.write(json.dumps({"epoch": epoch, "loss": float("nan")}) + "\n")

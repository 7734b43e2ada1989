"""Trial for the idle scenario: sleep ``--seconds``, report one result, exit."""

import json
import sys
import time

options = dict(zip(sys.argv[1::2], sys.argv[2::2]))
time.sleep(float(options.get("--seconds", "30")))
now = time.time()
line = {"slept": 1, "st_worker_timestamp": now, "st_worker_time": 0.0, "st_worker_iter": 0}
print("[tune-metric]: " + json.dumps(line), flush=True)

"""Trial for the launch scenarios: report one result and exit.

Standard library only, and no argument parsing: every contender runs the same
few milliseconds of work, so what differs is the backend. The result is a
``[tune-metric]:`` line on stdout, which Syne Tune and localbackend both read.
"""

import json
import time

now = time.time()
line = {"score": 1.0, "st_worker_timestamp": now, "st_worker_time": 0.0, "st_worker_iter": 0}
print("[tune-metric]: " + json.dumps(line), flush=True)

"""Trial for the ingestion scenario: write ``--count`` results, fast or at a rate.

Options (``--key value``, as every backend passes a config):

* ``--count N``: results to write;
* ``--rate R``: results per second, 0 for one burst as fast as possible;
* ``--via stdout|file``: ``[tune-metric]: {json}`` lines on stdout (what Syne
  Tune reads, and localbackend too), or JSON lines appended straight to
  ``$LOCALBACKEND_RESULTS_FILE`` (localbackend's results file, the format
  ``localbackend.report`` writes, without importing it);
* ``--done PATH``: created once every result is written;
* ``--hold 1``: then stay alive until signalled, so a driver can poll a
  running trial that has nothing new.

Each result carries the ``st_worker_*`` fields Syne Tune's reporter adds, so
every reader gets the same lines.
"""

import json
import os
import sys
import time

options = dict(zip(sys.argv[1::2], sys.argv[2::2]))
count = int(options.get("--count", "1000"))
rate = float(options.get("--rate", "0"))
via = options.get("--via", "stdout")
done = options.get("--done")
hold = options.get("--hold", "0") == "1"

if via == "file":
    fd = os.open(os.environ["LOCALBACKEND_RESULTS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    prefix = ""
else:
    fd = sys.stdout.fileno()
    prefix = "[tune-metric]: "

start = time.time()
# Burst: blocks of lines per write. Rate: one block per 10 ms tick.
block = max(1, int(rate / 100)) if rate > 0 else 1000
written = 0
next_tick = time.monotonic()
while written < count:
    n = min(block, count - written)
    now = time.time()
    lines = [
        prefix
        + json.dumps(
            {
                "epoch": i,
                "loss": 1.0 / (i + 1),
                "st_worker_timestamp": now,
                "st_worker_time": now - start,
                "st_worker_iter": i,
            }
        )
        + "\n"
        for i in range(written, written + n)
    ]
    data = "".join(lines).encode()
    while data:
        data = data[os.write(fd, data):]
    written += n
    if rate > 0:
        next_tick += n / rate
        pause = next_tick - time.monotonic()
        if pause > 0:
            time.sleep(pause)

if done:
    with open(done, "w") as marker:
        marker.write(str(written))
if hold:
    time.sleep(3600)

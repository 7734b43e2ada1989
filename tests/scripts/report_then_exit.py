"""Report ``--n`` results (``i`` = 0, 1, ...), optionally wait at a gate, then exit.

Options: ``--n``; ``--raw 1`` appends bare JSON lines instead of calling
report(); ``--hold 1`` touches ``reported`` and waits for the gate ``release``
before exiting; ``--exit_code``; ``--pause_every`` sleeps briefly every so many
results so the test's fetches interleave with the writes.
"""

from __future__ import annotations

import sys
import time

import trialkit

from localbackend import report

n = int(trialkit.option("n", "3"))
raw = trialkit.option("raw", "0") == "1"
hold = trialkit.option("hold", "0") == "1"
pause_every = int(trialkit.option("pause_every", "0"))
exit_code = int(trialkit.option("exit_code", "0"))

for i in range(n):
    if raw:
        trialkit.append_raw(b'{"i": %d}\n' % i)
    else:
        report(i=i)
    if pause_every and i % pause_every == pause_every - 1:
        time.sleep(0.002)
print(f"reported {n} results", flush=True)
if hold:
    trialkit.touch("reported")
    trialkit.gate("release")
sys.exit(exit_code)

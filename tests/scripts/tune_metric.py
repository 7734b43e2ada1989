"""Report through both channels: ``[tune-metric]:`` lines on stdout and report().

``--n`` results on each channel, interleaved; ``--bad 1`` adds a
``[tune-metric]:`` line whose payload is not JSON (stdout line 2); ``--hold 1``
then waits for the gate ``release`` before exiting.
"""

from __future__ import annotations

import json

import trialkit

from localbackend import report

n = int(trialkit.option("n", "5"))
bad = trialkit.option("bad", "0") == "1"
hold = trialkit.option("hold", "0") == "1"

print("starting", flush=True)  # stdout line 1
if bad:
    print("[tune-metric]: {not json", flush=True)  # stdout line 2
for i in range(n):
    print(f"[tune-metric]: {json.dumps({'source': 'stdout', 'k': i})}", flush=True)
    report(source="file", k=i)
    print(f"plain output {i}", flush=True)
if hold:
    trialkit.gate("release")

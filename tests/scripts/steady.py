"""Report ``step`` = 0, 1, 2, ... every few milliseconds until stopped.

Options: ``--steps N`` exits 0 after N results (default: run until a signal
or the trialkit deadline); ``--hold_on_term 1`` makes SIGTERM touch
``terminating`` and wait for the gate ``release`` before exiting 0, so a test
decides when this run's process ends.
"""

from __future__ import annotations

import signal
import sys
import time

import trialkit

from localbackend import report

steps = int(trialkit.option("steps", "-1"))

if trialkit.option("hold_on_term", "0") == "1":

    def on_term(signum: int, frame: object) -> None:
        trialkit.touch("terminating")
        trialkit.gate("release")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)

deadline = time.monotonic() + trialkit.DEADLINE_SECONDS
step = 0
while step != steps:
    if time.monotonic() > deadline:
        sys.stderr.write("steady: gave up after the trialkit deadline\n")
        sys.exit(97)
    report(step=step)
    step += 1
    time.sleep(0.01)
print(f"reported {steps} steps", flush=True)

"""Trial for the crash-point tests: a checkpointed step per result.

``--steps N``: steps up to N, each saved then reported (``step``, and
``after_term`` once SIGTERM came), ``--step_seconds`` apart; a resumed run
carries on after its checkpoint. ``--after_term K``: on SIGTERM, report K
more steps, then exit 0 (0: SIGTERM ends it at once). ``--hold 1``: after
the first step, wait for SIGTERM.
"""

from __future__ import annotations

import signal
import time

import trialkit

from localbackend import checkpoint, report

steps = int(trialkit.option("steps", "3"))
pause = float(trialkit.option("step_seconds", "0.02"))
after_term = int(trialkit.option("after_term", "0"))
hold = trialkit.option("hold", "0") == "1"
terms: list[int] = []
if after_term:
    signal.signal(signal.SIGTERM, lambda signum, frame: terms.append(signum))

state = checkpoint.load_json() or {"step": 0}
reported_after_term = 0
for step in range(int(state["step"]) + 1, steps + 1):
    checkpoint.save_json({"step": step})
    report(step=step, after_term=bool(terms))
    if terms:
        reported_after_term += 1
        if reported_after_term >= after_term:
            break
    while hold and not terms:
        time.sleep(0.01)
    time.sleep(pause)

"""Train for ``--epochs`` epochs, checkpointing each, resuming from the latest.

Each epoch first saves ``{"epoch": e}`` as a checkpoint, then reports
``epoch=e``. With ``--block_at K`` the run touches ``blocked`` after epoch K
and idles (a later run, resumed from epoch K, does not block again). With
``--report_on_term 1`` a SIGTERM makes it report ``epoch=-1`` and exit 0;
with ``--ignore_term 1`` SIGTERM is ignored, so only SIGKILL ends it.
The epoch it started from is printed on stdout.
"""

from __future__ import annotations

import signal
import sys

import trialkit

from localbackend import checkpoint, report

epochs = int(trialkit.option("epochs", "3"))
block_at = int(trialkit.option("block_at", "-1"))

if trialkit.option("report_on_term", "0") == "1":

    def on_term(signum: int, frame: object) -> None:
        report(epoch=-1, late=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)

if trialkit.option("ignore_term", "0") == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

state = checkpoint.load_json()
start = 0 if state is None else state["epoch"] + 1
print(f"starting at epoch {start}", flush=True)
for epoch in range(start, epochs):
    checkpoint.save_json({"epoch": epoch})
    report(epoch=epoch)
    if epoch == block_at:
        trialkit.touch("blocked")
        trialkit.idle()

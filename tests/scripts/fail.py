"""Fail: ``--mode exit`` writes 30 stderr lines and exits with ``--code``;
``--mode signal`` kills itself with SIGKILL."""

from __future__ import annotations

import os
import signal
import sys

import trialkit

mode = trialkit.option("mode", "exit")
if mode == "exit":
    for number in range(30):
        sys.stderr.write(f"error line {number}\n")
    sys.stderr.write("Traceback: ValueError: boom\n")
    sys.stderr.flush()
    sys.exit(int(trialkit.option("code", "3")))
os.kill(os.getpid(), signal.SIGKILL)

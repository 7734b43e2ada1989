"""Holds its GPUs until its gate file exists: reports CUDA_VISIBLE_DEVICES, then waits.

Stands in for the private ``_allocate_gpu``/``_deallocate_gpu`` calls of Syne
Tune's GPU tests: starting a trial allocates, letting it end deallocates.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from syne_tune import Reporter

parser = argparse.ArgumentParser()
parser.add_argument("--gate", type=Path, required=True)
args, _ = parser.parse_known_args()
Reporter()(cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
deadline = time.monotonic() + 60
while not args.gate.exists() and time.monotonic() < deadline:
    time.sleep(0.02)

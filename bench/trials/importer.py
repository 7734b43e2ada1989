"""Trial for the warm-start scenario: import modules, resume, report, save, wait for SIGTERM.

Options: --modules a,b (imported first, the way a training script starts),
--hold 1 (after reporting, sleep until SIGTERM ends the process).
"""

import argparse
import importlib
import time

from localbackend import checkpoint, report

parser = argparse.ArgumentParser()
parser.add_argument("--modules", default="")
parser.add_argument("--hold", type=int, default=0)
args, _ = parser.parse_known_args()

for name in filter(None, args.modules.split(",")):
    importlib.import_module(name)
state = checkpoint.load_json() or {"epoch": 0}
epoch = state["epoch"] + 1
report(epoch=epoch)
checkpoint.save_json({"epoch": epoch})  # after the result, as a training step would
while args.hold:
    time.sleep(60)

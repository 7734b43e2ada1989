"""Write what this process was given to ``argv-<run>.json`` in its trial folder.

The file holds argv, the interpreter's own argv, the environment, the working
folder, and the session and pid. With ``--hold 1`` the script then idles until
it is signalled, so the test can look while it runs; ``--lifetime S`` makes it
exit 0 by itself after S seconds instead.
"""

from __future__ import annotations

import os
import sys

import trialkit

run = len(list(trialkit.trial_dir().glob("argv-*.json")))
trialkit.write_json(
    f"argv-{run}.json",
    {
        "argv": sys.argv[1:],
        "orig_argv": sys.orig_argv,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "sid": os.getsid(0),
    },
)
if trialkit.option("hold", "0") == "1":
    lifetime = trialkit.option("lifetime", "")
    if lifetime:
        trialkit.idle(float(lifetime), code=0)
    trialkit.idle()

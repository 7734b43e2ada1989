"""Trial: reports the same results warm and cold, then fails only when warm.

A warm start runs the script below the frames of the supervisor that forked
it, which a cold start does not have (the README's "What a fork cannot
undo"): ``localbackend check --preload`` must not pass a script that ends
otherwise warm than cold, even when its results agree.
"""

import sys

from localbackend import report

for epoch in range(1, 4):
    report(epoch=epoch, loss=1.0 / epoch)
sys.exit(3 if sys._getframe().f_back is not None else 0)

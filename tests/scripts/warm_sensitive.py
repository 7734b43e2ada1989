"""Trial: reports how many modules are imported, which a warm start changes.

A script whose results depend on what the process had imported before it
ran: ``localbackend check --preload`` must tell that its warm start differs.
"""

import sys
import time

from localbackend import report

for epoch in range(1, 4):
    time.sleep(0.05)
    report(epoch=epoch, loss=float(len(sys.modules)))

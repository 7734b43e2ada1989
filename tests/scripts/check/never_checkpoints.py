"""Broken on purpose: reports and exits on SIGTERM, but never saves a checkpoint."""

import sys

from toy_training import train

sys.exit(train(checkpoints=False))

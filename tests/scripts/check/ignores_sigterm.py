"""Broken on purpose: checkpoints correctly, but ignores SIGTERM, so a pause must kill it."""

import sys

from toy_training import train

sys.exit(train(handle_sigterm=False))

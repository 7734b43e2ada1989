"""Broken on purpose: checkpoints the model but not its random generator's state.

A resumed run reseeds the generator, so from the resume on it reports other
values than an uninterrupted run would.
"""

import sys

from toy_training import train

sys.exit(train(save_rng=False))

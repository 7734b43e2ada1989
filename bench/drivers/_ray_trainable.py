"""``entrypoints/train_numpy.py``'s training as a Ray Tune function trainable.

The data, the model, the gradients and the optimizer are that script's own
functions; only the loop differs: Ray's ASHA stops a trial that is not
promoted, so there is nothing to checkpoint or resume, and each epoch is
reported with ``tune.report``. Each epoch also appends one line to
``config["log"]`` (one ``write`` of a short line, so lines of concurrent
trials never mix), from which the bench counts epochs and the best loss.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any

TRAIN_NUMPY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "entrypoints", "train_numpy.py",
)


@functools.lru_cache(maxsize=1)
def _train_numpy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_numpy", TRAIN_NUMPY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def train(config: dict[str, Any]) -> None:
    from ray import tune

    model = _train_numpy()
    args = argparse.Namespace(
        lr=config["lr"], momentum=config["momentum"], batch_size=int(config["batch_size"]),
        hidden=int(config["hidden"]), optimizer=config["optimizer"], seed=0,
        epochs=int(config["epochs"]), epoch_seconds=0.0,
    )
    x_train, y_train, x_val, y_val = model.make_dataset()
    state = model.fresh_state(args)
    log = os.open(config["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while state.epoch < args.epochs:
            order = state.rng.permutation(model.N_TRAIN)
            for start in range(0, model.N_TRAIN, args.batch_size):
                batch = order[start : start + args.batch_size]
                grads = model.gradients(state.params, x_train[batch], y_train[batch])
                model.apply_update(state, grads, args)
            state.epoch += 1
            loss, accuracy = model.loss_and_accuracy(state.params, x_val, y_val)
            os.write(log, (json.dumps({"epoch": state.epoch, "loss": loss}) + "\n").encode())
            tune.report({"epoch": state.epoch, "loss": loss, "accuracy": accuracy})
    finally:
        os.close(log)

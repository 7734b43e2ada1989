"""Example trial: a one-hidden-layer MLP trained with numpy on synthetic data.

Run it by hand::

    python entrypoints/train_numpy.py --epochs 3 --lr 0.05 --optimizer adam

Under localbackend it reports to the results file and checkpoints into the
trial's checkpoint folder; by hand it prints ``[tune-metric]:`` lines and, with
no checkpoint folder known, does not checkpoint.

It shows the pattern a pausable trial follows:

* resume from ``checkpoint.latest()`` on start;
* after each epoch, save a checkpoint and then report;
* on SIGTERM, finish the current step, save and exit 0.

Everything that influences later results (weights, optimizer state, the
random generator, the position inside the epoch) is in the checkpoint, so a
run that is stopped and resumed reports exactly what an uninterrupted run
would.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from localbackend import checkpoint, report

# The data set is the same for every trial; --seed only changes the
# initialisation and the order of the mini-batches.
DATA_SEED = 20240601
N_TRAIN = 2000
N_VALIDATION = 500
N_FEATURES = 16
ADAM_BETA2 = 0.999
ADAM_EPSILON = 1e-8
ARRAYS_FILE = "arrays.npz"
STATE_FILE = "state.json"

Arrays = dict[str, np.ndarray]


@dataclass
class TrainingState:
    """Everything needed to continue training exactly where it stopped."""

    params: Arrays
    slots: Arrays  # optimizer state, e.g. "velocity/w1" or "m/w1"
    rng: np.random.Generator
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps so far (Adam's bias correction needs it)
    # Order of the current epoch's mini-batches and how far we got; None
    # between epochs.
    order: np.ndarray | None = None
    position: int = 0
    optimizer: str = "sgd"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum, or Adam beta1")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epoch_seconds", type=float, default=0.0, help="extra sleep per epoch, for demos"
    )
    # parse_known_args: the backend (or Syne Tune) adds --st_checkpoint_dir,
    # which checkpoint.directory() reads from sys.argv itself.
    args, _unknown = parser.parse_known_args()
    if args.epochs < 0 or args.batch_size < 1 or args.hidden < 1:
        parser.error("--epochs must be >= 0, --batch_size and --hidden >= 1")
    return args


def make_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed binary classification task: labels from a random 'teacher' network."""
    rng = np.random.default_rng(DATA_SEED)
    x = rng.normal(size=(N_TRAIN + N_VALIDATION, N_FEATURES))
    teacher = rng.normal(size=(N_FEATURES, 8))
    logits = np.tanh(x @ teacher) @ rng.normal(size=8)
    y = (logits + 0.3 * rng.normal(size=len(x)) > 0).astype(np.float64)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def fresh_state(args: argparse.Namespace) -> TrainingState:
    rng = np.random.default_rng(args.seed)
    params = {
        "w1": rng.normal(scale=1 / np.sqrt(N_FEATURES), size=(N_FEATURES, args.hidden)),
        "b1": np.zeros(args.hidden),
        "w2": rng.normal(scale=1 / np.sqrt(args.hidden), size=args.hidden),
        "b2": np.zeros(()),
    }
    return TrainingState(
        params=params, slots=fresh_slots(params, args.optimizer), rng=rng, optimizer=args.optimizer
    )


def fresh_slots(params: Arrays, optimizer: str) -> Arrays:
    names = ("velocity",) if optimizer == "sgd" else ("m", "v")
    return {f"{slot}/{name}": np.zeros_like(p) for slot in names for name, p in params.items()}


def forward(params: Arrays, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.tanh(x @ params["w1"] + params["b1"])
    return hidden, hidden @ params["w2"] + params["b2"]


def loss_and_accuracy(params: Arrays, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    _, logits = forward(params, x)
    # log(1 + e^z) - y z is the cross-entropy, written to never overflow.
    loss = np.mean(np.logaddexp(0.0, logits) - y * logits)
    accuracy = np.mean((logits > 0) == (y > 0.5))
    return float(loss), float(accuracy)


def gradients(params: Arrays, x: np.ndarray, y: np.ndarray) -> Arrays:
    hidden, logits = forward(params, x)
    d_logits = (1 / (1 + np.exp(-logits)) - y) / len(y)
    d_hidden = np.outer(d_logits, params["w2"]) * (1 - hidden**2)
    return {
        "w1": x.T @ d_hidden,
        "b1": d_hidden.sum(axis=0),
        "w2": hidden.T @ d_logits,
        "b2": d_logits.sum(),
    }


def apply_update(state: TrainingState, grads: Arrays, args: argparse.Namespace) -> None:
    state.step += 1
    for name, grad in grads.items():
        if state.optimizer == "sgd":
            velocity = state.slots[f"velocity/{name}"]
            velocity *= args.momentum
            velocity += grad
            state.params[name] = state.params[name] - args.lr * velocity
        else:
            m, v = state.slots[f"m/{name}"], state.slots[f"v/{name}"]
            m *= args.momentum
            m += (1 - args.momentum) * grad
            v *= ADAM_BETA2
            v += (1 - ADAM_BETA2) * grad**2
            m_hat = m / (1 - args.momentum**state.step)
            v_hat = v / (1 - ADAM_BETA2**state.step)
            state.params[name] = state.params[name] - args.lr * m_hat / (
                np.sqrt(v_hat) + ADAM_EPSILON
            )


def save_state(folder: Path | None, state: TrainingState) -> None:
    """Write a checkpoint atomically: a kill at any moment keeps the last whole one."""
    if folder is None:
        return
    arrays: dict[str, Any] = {f"param/{k}": v for k, v in state.params.items()}
    arrays.update({f"slot/{k}": v for k, v in state.slots.items()})
    if state.order is not None:
        arrays["order"] = state.order
    meta = {
        "epoch": state.epoch,
        "step": state.step,
        "position": state.position,
        "optimizer": state.optimizer,
        # PCG64's state holds 128-bit integers, which json (unlike orjson) keeps.
        "rng": state.rng.bit_generator.state,
    }
    with checkpoint.save(folder) as target:
        with open(target / ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
        (target / STATE_FILE).write_text(json.dumps(meta))


def load_state(folder: Path | None, args: argparse.Namespace) -> TrainingState | None:
    if folder is None:
        return None
    latest = checkpoint.latest(folder)
    if latest is None:
        return None
    meta = json.loads((latest / STATE_FILE).read_text())
    with np.load(latest / ARRAYS_FILE) as npz:
        arrays = {name: npz[name] for name in npz.files}
    params = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
    if params["w1"].shape[1] != args.hidden:
        sys.exit(
            f"Checkpoint {latest} has --hidden {params['w1'].shape[1]}, but this run asks for "
            f"--hidden {args.hidden}; use the same value or a new checkpoint folder."
        )
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    state = TrainingState(
        params=params,
        slots={k[len("slot/") :]: v for k, v in arrays.items() if k.startswith("slot/")},
        rng=rng,
        epoch=meta["epoch"],
        step=meta["step"],
        order=arrays.get("order"),
        position=meta["position"],
        optimizer=meta["optimizer"],
    )
    if state.optimizer != args.optimizer:
        # A scheduler such as PBT may change the optimizer on resume; the old
        # optimizer's state means nothing to the new one.
        state.optimizer = args.optimizer
        state.slots = fresh_slots(params, args.optimizer)
        state.step = 0
    return state


class StopRequest:
    """Set by SIGTERM; the training loop checks it between steps."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: the handler runs between two bytecodes of the main
        # thread, possibly in the middle of an update or of checkpoint.save(),
        # and saving from here could write a half-updated model.
        self.requested = True


def sleep_unless_stopped(seconds: float, stop: StopRequest) -> None:
    # time.sleep resumes after a signal handler returns, so sleep in slices
    # to notice SIGTERM promptly.
    deadline = time.monotonic() + seconds
    while not stop.requested:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, 0.02))


def checkpoint_folder() -> Path | None:
    try:
        return checkpoint.directory()
    except checkpoint.CheckpointError:
        print(
            "train_numpy: no checkpoint folder given (LOCALBACKEND_CHECKPOINT_DIR or "
            "--st_checkpoint_dir); training without checkpoints.",
            file=sys.stderr,
        )
        return None


def main() -> int:
    args = parse_args()
    # Install the handler first, so a SIGTERM during start-up is not fatal.
    stop = StopRequest()
    stop.install()
    folder = checkpoint_folder()
    x_train, y_train, x_val, y_val = make_dataset()
    state = load_state(folder, args) or fresh_state(args)

    while state.epoch < args.epochs:
        if state.order is None:
            state.order = state.rng.permutation(N_TRAIN)
            state.position = 0
        while state.position < N_TRAIN:
            if stop.requested:
                # The last step is complete: save mid-epoch, with the batch
                # order and position, so the resumed run continues exactly here.
                save_state(folder, state)
                print(
                    f"train_numpy: SIGTERM during epoch {state.epoch + 1} at sample "
                    f"{state.position}; {'saved' if folder else 'no checkpoint'}, exiting.",
                    file=sys.stderr,
                )
                return 0
            batch = state.order[state.position : state.position + args.batch_size]
            apply_update(state, gradients(state.params, x_train[batch], y_train[batch]), args)
            state.position += len(batch)
        state.epoch += 1
        state.order = None
        state.position = 0
        loss, accuracy = loss_and_accuracy(state.params, x_val, y_val)
        # Save before reporting: a scheduler may pause the trial as soon as
        # it sees this result, and the checkpoint for it must then exist.
        save_state(folder, state)
        report(epoch=state.epoch, loss=loss, accuracy=accuracy)
        sleep_unless_stopped(args.epoch_seconds, stop)
        if stop.requested and state.epoch < args.epochs:
            print(f"train_numpy: SIGTERM after epoch {state.epoch}; exiting.", file=sys.stderr)
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

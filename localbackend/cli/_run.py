"""``localbackend run``: one trial, its output streamed live, for debugging."""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, Optional, TextIO

from .. import LocalBackend, Status
from .._types import FINISHED_STATUSES
from ._common import EXIT_INTERRUPTED, CliError, format_duration, format_value
from ._search_space import build_search_space

_WAKE_SECONDS = 0.2
_STREAM_MARKS = {"stdout": "out| ", "stderr": "err| "}
_RESULT_MARK = "result| "
_TUNE_METRIC = "[tune-metric]:"


class LogStream:
    """Prints a trial log from a byte offset on, one marked line at a time."""

    def __init__(self, backend: LocalBackend, trial_id: int, stream: str, out: TextIO) -> None:
        self.backend = backend
        self.trial_id = trial_id
        self.stream = stream
        self.out = out
        self.offset = 0
        self.pending = ""

    def pump(self, final: bool = False) -> None:
        while True:
            text, self.offset = self.backend.read_log(self.trial_id, self.stream, self.offset)
            if not text:
                break
            lines = (self.pending + text).split("\n")
            self.pending = lines.pop()
            for line in lines:
                self._print(line)
        if final and self.pending:
            self._print(self.pending)
            self.pending = ""

    def _print(self, line: str) -> None:
        if self.stream == "stdout" and line.startswith(_TUNE_METRIC):
            return  # shown as a result line instead
        self.out.write(_STREAM_MARKS[self.stream] + line + "\n")
        self.out.flush()


def run_one(args: argparse.Namespace) -> int:
    script = Path(args.script)
    if not script.is_file():
        raise CliError(f"trial script {args.script!r} does not exist or is not a file")
    config = build_search_space(None, args.param).sample(random.Random(args.seed))
    backend = LocalBackend(
        script, experiment_dir=args.experiment_dir, grace_period=args.grace_period
    )
    interrupted: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        interrupted.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    out = sys.stdout
    try:
        started = time.monotonic()
        trial = backend.start_trial(config)
        trial_id = trial.trial_id
        shown = " ".join(f"{k}={format_value(v)}" for k, v in config.items()) or "no config"
        out.write(f"trial {trial_id}: {script} {shown}\nfolder: {backend.trial_dir(trial_id)}\n")
        out.flush()
        logs = [LogStream(backend, trial_id, s, out) for s in ("stdout", "stderr")]
        results = 0
        stopping = False
        status = Status.in_progress
        last_trial: Any = trial
        while True:
            if interrupted and not stopping:
                stopping = True
                out.write("Ctrl-C: stopping the trial and its processes\n")
                backend.stop_trial(trial_id)
            backend.wait(timeout=_WAKE_SECONDS)
            for log in logs:
                log.pump()
            statuses, new = backend.fetch_status_results([trial_id])
            for _, result in new:
                results += 1
                out.write(_RESULT_MARK + _format_result(result) + "\n")
            out.flush()
            last_trial, status = statuses[trial_id]
            if status in FINISHED_STATUSES and not backend.busy_trial_ids():
                break
        for log in logs:
            log.pump(final=True)
        elapsed = time.monotonic() - started
        code = _exit_code(status, last_trial, bool(interrupted))
        how = _how(status, last_trial)
        out.write(
            f"trial {trial_id} {status} ({how}) after {format_duration(elapsed)}, "
            f"{results} result{'s' if results != 1 else ''}\n"
            f"folder: {backend.trial_dir(trial_id)}\n"
        )
        if status == Status.completed and results == 0:
            out.write(
                "note: no result was reported; call localbackend.report(metric=value) "
                "(or print '[tune-metric]: {json}' lines) so a tuner can use the script\n"
            )
        out.flush()
        return code
    finally:
        backend.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _format_result(result: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={format_value(v)}" for k, v in result.items() if not k.startswith("st_")
    )


def _how(status: str, trial: Any) -> str:
    if trial.exit_code is not None:
        return f"exit code {trial.exit_code}"
    if trial.exit_signal:
        return f"killed by {trial.exit_signal}"
    return "stopped" if status == Status.stopped else "ended"


def _exit_code(status: str, trial: Any, interrupted: bool) -> int:
    if interrupted:
        return EXIT_INTERRUPTED
    if status == Status.completed:
        return 0
    code: Optional[int] = trial.exit_code
    if code is not None and code != 0:
        return code if 0 < code < 256 else 1
    name = trial.exit_signal
    if name:
        try:
            return 128 + int(signal.Signals[name])
        except KeyError:
            return 1
    return 1

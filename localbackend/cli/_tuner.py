"""The tuner's loop: results in, scheduler decisions out, carried out on the backend.

The loop waits on the backend (never a fixed sleep), hands each result to
the scheduler, carries out its decisions with ``pause_trial``,
``resume_trial``, ``stop_trial`` and ``copy_checkpoint``, and fills free
workers with the scheduler's next action. After each batch it appends what
changed to the tuner's journal, and it writes the whole state only at
checkpoints (see ``_state``), so ``--resume`` carries on from the last batch.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Optional

from .. import LocalBackend, Status
from .._errors import CheckpointCopyError, LocalBackendError
from .._types import FINISHED_STATUSES
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    TUNER_FORMAT_VERSION,
    TunerPaths,
    append_jsonl,
    driver_identity,
    format_duration,
    format_value,
    read_json,
)
from ._control import handle_requests
from ._events import describe_event
from ._live import Row, Snapshot, View
from ._records import ResultsLog
from ._schedulers import PAUSE, STOP, Action, ResumeTrial, Scheduler, StartTrial
from ._search_space import SearchSpace
from ._state import StateStore

WAKE_SECONDS = 0.5
# ... and this often while a paused trial's process is ending, to reuse its worker at once.
WAKE_WHILE_ENDING = 0.05
# Give up when this many trials failed before any reported the metric.
FAILURES_BEFORE_GIVING_UP = 3


@dataclass
class TuneOptions:
    """Everything ``tune`` was asked to do; saved in ``tuner.json`` for ``--resume``."""

    script: str
    metric: str
    mode: str
    resource_attr: str
    max_resource: Optional[float]
    scheduler: str
    workers: int
    max_trials: Optional[int]
    max_time: Optional[float]
    seed: int
    grace_period: float
    reduction_factor: float
    min_resource: float
    population: int
    pbt_interval: Optional[float]
    pbt_mutate: Optional[list[str]]


@dataclass
class TrialView:
    """The tuner's view of one trial."""

    config: dict[str, Any]
    # running: should be running; paused: paused by the scheduler; interrupted:
    # paused by Ctrl-C, a time budget or a driver crash, resumed first; ended.
    phase: str = "running"
    status: str = Status.in_progress
    results: int = 0
    last_resource: Any = None
    last_value: Optional[float] = None
    best_value: Optional[float] = None
    runtime: float = 0.0
    run_started: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        saved = dataclasses.asdict(self)
        saved["run_started"] = None
        return saved


@dataclass
class _Outcome:
    reason: str = "finished"
    exit_code: int = 0
    message: str = ""


class _Fatal(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class Tuner:
    def __init__(
        self,
        options: TuneOptions,
        space: SearchSpace,
        backend: LocalBackend,
        files: TunerPaths,
        scheduler: Scheduler,
        rng: random.Random,
    ) -> None:
        self.options = options
        self.space = space
        self.backend = backend
        self.files = files
        self.scheduler = scheduler
        self.rng = rng
        self.view: View = View()
        self.trials: dict[int, TrialView] = {}
        self.log = ResultsLog(files, options.metric, options.mode)
        self.elapsed_before = 0.0
        self.session_start = time.monotonic()
        self.metric_seen = False
        self.resource_seen = False
        self.failures = 0
        self.warned_missing: set[int] = set()
        self.signal_received: Optional[int] = None
        self.stop_requested = False
        self.resumed = False
        self.driver = driver_identity()
        self.store = StateStore(files)
        # Trials changed since the state was last written, and the generator's
        # state as last written.
        self.touched: set[int] = set()
        self.saved_rng: Optional[tuple[Any, ...]] = None

    # -- state ---------------------------------------------------------------

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def touch(self, *trial_ids: int) -> None:
        """These trials changed: the next save writes them."""
        self.touched.update(trial_ids)

    def save_state(self, state: str = "running") -> None:
        """A checkpoint: the whole state, durably (at the start, at the end, and by size)."""
        rng_state = self.rng.getstate()
        self.store.snapshot(
            {
                "format_version": TUNER_FORMAT_VERSION,
                "state": state,
                "options": dataclasses.asdict(self.options),
                "search_space": self.space.to_json(),
                "rng_state": list(rng_state),
                "scheduler_state": self.scheduler.state_dict(),
                "scheduler_label": self.scheduler.label_header,
                "labels": {str(t): self.scheduler.label(t) for t in self.trials},
                "trials": {str(t): view.to_json() for t, view in self.trials.items()},
                "elapsed": self.elapsed(),
                "driver": self.driver,
                "saved": time.time(),
            }
        )
        self.touched.clear()
        self.saved_rng = rng_state

    def save_changes(self) -> None:
        """After a batch: append what it changed, in proportion to that alone."""
        rng_state = self.rng.getstate()
        if not self.touched and rng_state == self.saved_rng:
            return
        change: dict[str, Any] = {
            "elapsed": self.elapsed(),
            "trials": {
                str(t): {
                    "view": self.trials[t].to_json(),
                    "label": self.scheduler.label(t),
                    "scheduler": self.scheduler.trial_state(t),
                }
                for t in sorted(self.touched)
                if t in self.trials
            },
        }
        if rng_state != self.saved_rng:
            change["rng_state"] = list(rng_state)
        if self.store.append(change):
            self.save_state()
            return
        self.touched.clear()
        self.saved_rng = rng_state

    def load_state(self, state: dict[str, Any]) -> None:
        self.resumed = True
        self.store.continue_from(state)
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.trials = {int(t): TrialView(**view) for t, view in state.get("trials", {}).items()}
        self.metric_seen = any(view.results for view in self.trials.values())
        self.resource_seen = self.metric_seen

    # -- events --------------------------------------------------------------

    def event(self, event: dict[str, Any]) -> None:
        append_jsonl(self.files.events, {"time": time.time(), **event})
        text = describe_event(event, self.options)
        if text:
            self.view.message(text)

    # -- main ----------------------------------------------------------------

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        outcome = _Outcome()
        try:
            self._announce()
            if self.resumed:
                self._reattach()
            else:
                # Its first trials take the experiment lock, which is what tells
                # `status`, `stop` and `--resume` that this tune is running.
                self._fill_workers()
            self.save_state()
            outcome = self._loop()
        except _Fatal as fatal:
            outcome = _Outcome("failed", fatal.exit_code, fatal.message)
        except KeyboardInterrupt:
            outcome = _Outcome("interrupted", EXIT_INTERRUPTED)
        finally:
            try:
                outcome = self._finish(outcome)
            finally:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        return outcome.exit_code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_received is not None:
            # A second Ctrl-C: stop waiting for trials to pause.
            raise KeyboardInterrupt
        self.signal_received = signum

    def _announce(self) -> None:
        options = self.options
        if self.resumed:
            self.view.message(f"resuming the tune in {self.files.root}")
        else:
            self.view.message(f"experiment folder: {self.files.root}")
            self.view.message(
                f"from another terminal: localbackend status|logs|stop {self.files.root}"
            )
        budget = []
        if options.max_trials is not None:
            budget.append(f"{options.max_trials} trials")
        if options.max_time is not None:
            budget.append(f"{format_duration(options.max_time)}")
        self.view.message(
            f"tuning {options.script}: {self.scheduler.describe()}; {options.mode}imize "
            f"{options.metric!r}; {options.workers} workers; budget "
            f"{' or '.join(budget) or 'none'}; seed {options.seed}"
        )
        self.view.message(f"search space: {self.space.describe()}")

    def _reattach(self) -> None:
        """After a restore: take the results not yet delivered, then queue running trials."""
        known = list(range(self.backend.new_trial_id()))
        for trial_id in known:
            if trial_id not in self.trials:
                config = read_json(self.files.trial(trial_id).config) or {}
                self.trials[trial_id] = TrialView(config=config)
                self.scheduler.on_trial_start(trial_id, config)
        if known:
            self._collect(known)
        for view in self.trials.values():
            if view.phase == "running" and view.status == Status.paused:
                view.phase = "interrupted"
        self.touch(*self.trials)

    def _loop(self) -> _Outcome:
        while True:
            if self.signal_received is not None:
                return _Outcome("interrupted", 128 + self.signal_received)
            self._handle_control()
            if self.stop_requested:
                return _Outcome("stopped", 0)
            out_of_time = (
                self.options.max_time is not None and self.elapsed() >= self.options.max_time
            )
            if out_of_time:
                return _Outcome("budget", 0)
            busy = self._fill_workers()
            ending = any(state == Status.stopping for _, state in busy)
            ready = self.backend.wait(timeout=WAKE_WHILE_ENDING if ending else WAKE_SECONDS)
            if ready:
                self._collect(ready)
            elif not busy and not self.backend.busy_trial_ids() and not self._fill_workers():
                # Nothing ran, nothing could start, and nothing came in: done.
                return _Outcome("finished", 0)
            self.save_changes()
            self.view.update(self.snapshot())

    def _fill_workers(self) -> list[tuple[int, str]]:
        busy = self.backend.busy_trial_ids()
        free = self.options.workers - len(busy)
        while free > 0:
            action = self._next_action({t for t, _ in busy})
            if action is None:
                break
            self._execute(action)
            free -= 1
        if free < self.options.workers - len(busy):
            busy = self.backend.busy_trial_ids()
        return busy

    def _next_action(self, busy: set[int]) -> Optional[Action]:
        idle = {
            t
            for t, view in self.trials.items()
            if view.phase in ("paused", "interrupted") and t not in busy
        }
        for trial_id in sorted(idle):
            if self.trials[trial_id].phase == "interrupted":
                return ResumeTrial(
                    trial_id, event={"event": "resume_interrupted", "trial": trial_id}
                )
        started = len(self.trials)
        can_start = not self.stop_requested and (
            self.options.max_trials is None or started < self.options.max_trials
        )
        paused = {t for t in idle if self.trials[t].phase == "paused"}
        return self.scheduler.next_action(can_start, paused)

    def _execute(self, action: Action) -> None:
        try:
            if isinstance(action, StartTrial):
                result = self.backend.start_trial(action.config)
                trial_id = result.trial_id
                self.trials[trial_id] = TrialView(config=dict(result.config))
                self.trials[trial_id].run_started = time.time()
                self.scheduler.on_trial_start(trial_id, dict(result.config))
                self.touch(trial_id)
                self.event({"event": "start", "trial": trial_id, "config": result.config})
                return
            # Choosing it changed the scheduler's part of this trial.
            self.touch(action.trial_id)
            view = self.trials[action.trial_id]
            if action.copy_from is not None:
                try:
                    self.backend.copy_checkpoint(action.copy_from, action.trial_id)
                except CheckpointCopyError as err:
                    self.view.message(f"trial {action.trial_id}: checkpoint not copied: {err}")
            if action.event is not None:
                self.event(action.event)
            result = self.backend.resume_trial(action.trial_id, new_config=action.new_config)
            view.config = dict(result.config)
            view.phase = "running"
            view.status = Status.in_progress
            view.run_started = time.time()
        except LocalBackendError as err:
            raise _Fatal(f"cannot run the next trial: {err}", EXIT_FAILED) from err

    def _collect(self, trial_ids: list[int]) -> None:
        self.touch(*trial_ids)
        statuses, results = self.backend.fetch_status_results(trial_ids)
        for trial_id, result in results:
            self._on_result(trial_id, result)
        for trial_id, (trial, status) in statuses.items():
            view = self.trials.get(trial_id)
            if view is None:
                continue
            if status in FINISHED_STATUSES:
                if view.phase != "ended":
                    self._on_end(trial_id, view, trial, status)
            elif status != Status.in_progress or view.phase == "running":
                # The statuses were read before this batch's results paused anyone.
                view.status = status

    def _on_result(self, trial_id: int, result: dict[str, Any]) -> None:
        view = self.trials[trial_id]
        view.results += 1
        options = self.options
        value = result.get(options.metric)
        resource = result.get(options.resource_attr)
        if self.log.record(trial_id, result, view.config, options.resource_attr):
            self.event(
                {"event": "best", "trial": trial_id, "value": value, "resource": resource}
            )
        if options.metric not in result:
            self._missing(trial_id, result, options.metric, "--metric", self.metric_seen)
            return
        if not _is_number(value):
            raise _Fatal(
                f"trial {trial_id} reported {options.metric}={value!r}, which is not a number; "
                f"report a number, or choose another --metric",
                EXIT_USAGE,
            )
        self.metric_seen = True
        needs_resource = options.scheduler != "random" or options.max_resource is not None
        if needs_resource and options.resource_attr not in result:
            self._missing(
                trial_id, result, options.resource_attr, "--resource-attr", self.resource_seen
            )
            return
        if options.resource_attr in result:
            if not _is_number(resource):
                raise _Fatal(
                    f"trial {trial_id} reported {options.resource_attr}={resource!r}, which is "
                    "not a number; --resource-attr must name a number that grows, like the epoch",
                    EXIT_USAGE,
                )
            self.resource_seen = True
        number = float(value)  # type: ignore[arg-type]  # checked by _is_number
        level = float(resource) if resource is not None else None
        view.last_value = number
        view.last_resource = resource
        if view.best_value is None or self.scheduler.settings.better(number, view.best_value):
            view.best_value = number
        if view.phase != "running":
            return  # written before its pause took effect: recorded, but not a decision
        verdict = self.scheduler.on_result(trial_id, level, number)
        decision = verdict.decision
        if (
            options.max_resource is not None
            and level is not None
            and level > options.max_resource + 1e-9
        ):
            decision = STOP
        if verdict.event is not None:
            self.event(verdict.event)
        if decision == PAUSE:
            self.backend.pause_trial(trial_id)
            view.phase = "paused"
            view.status = Status.paused
            self._stop_clock(view)
        elif decision == STOP:
            self.backend.stop_trial(trial_id)
            self.event({"event": "stop", "trial": trial_id, "why": "max_resource"})
            self._end(trial_id, view, Status.stopped)

    def _missing(
        self, trial_id: int, result: dict[str, Any], name: str, option: str, seen: bool
    ) -> None:
        if seen:
            if trial_id not in self.warned_missing:
                self.warned_missing.add(trial_id)
                self.view.message(
                    f"trial {trial_id} reported a result without {name!r}; such results are "
                    "recorded but not used to decide"
                )
            return
        reported = sorted(k for k in result if not k.startswith("st_")) or ["nothing"]
        raise _Fatal(
            f"trial {trial_id} reported {', '.join(reported)} but not {name!r}; pass {option} "
            f"with one of those names, or make the script report {name}",
            EXIT_USAGE,
        )

    def _on_end(self, trial_id: int, view: TrialView, trial: Any, status: str) -> None:
        if status == Status.failed:
            self.failures += 1
            code = trial.exit_code
            how = f"exit code {code}" if code is not None else f"signal {trial.exit_signal}"
            tail = (trial.stderr_tail or "").strip().splitlines()
            last = tail[-1] if tail else "no output on stderr"
            self.event({"event": "failed", "trial": trial_id, "how": how, "last": last})
            if self.failures >= FAILURES_BEFORE_GIVING_UP and not self.metric_seen:
                raise _Fatal(
                    f"{self.failures} trials failed before any reported {self.options.metric!r}; "
                    f"the last said: {last}\nSee {self.files.trial(trial_id).stderr}, or try "
                    f"the script alone with `localbackend run {self.options.script} -p ...`",
                    EXIT_FAILED,
                )
        elif status == Status.completed:
            self.event(
                {
                    "event": "completed", "trial": trial_id, "value": view.last_value,
                    "resource": view.last_resource,
                }
            )
            if view.results == 0 and not self.metric_seen:
                raise _Fatal(
                    f"trial {trial_id} ended without reporting any result; the script must call "
                    f"localbackend.report({self.options.metric}=...) (or print "
                    "'[tune-metric]: {json}' lines); see "
                    f"{self.files.trial(trial_id).stdout}",
                    EXIT_USAGE,
                )
        self._end(trial_id, view, status)

    def _end(self, trial_id: int, view: TrialView, status: str) -> None:
        view.phase = "ended"
        view.status = status
        self._stop_clock(view)
        self.scheduler.on_trial_end(trial_id, status)
        self.touch(trial_id)

    @staticmethod
    def _stop_clock(view: TrialView) -> None:
        if view.run_started is not None:
            view.runtime += time.time() - view.run_started
            view.run_started = None

    def _handle_control(self) -> None:
        for request in handle_requests(self.files, self._stop_request):
            del request

    def _stop_request(self, trial_ids: Optional[list[int]]) -> dict[str, Any]:
        if trial_ids is None:
            self.stop_requested = True
            self.view.message("stop requested for the whole run (localbackend stop)")
            return {"whole_run": True}
        answer: dict[str, list[int]] = {"stopped": [], "already_finished": [], "unknown": []}
        for trial_id in trial_ids:
            view = self.trials.get(trial_id)
            if view is None:
                answer["unknown"].append(trial_id)
            elif view.phase == "ended":
                answer["already_finished"].append(trial_id)
            else:
                self.backend.stop_trial(trial_id)
                self.event({"event": "stop", "trial": trial_id, "why": "request"})
                self._end(trial_id, view, Status.stopped)
                answer["stopped"].append(trial_id)
        return dict(answer)

    # -- ending --------------------------------------------------------------

    def _finish(self, outcome: _Outcome) -> _Outcome:
        try:
            if outcome.reason in ("interrupted", "budget"):
                self._pause_running(outcome.reason)
            elif outcome.reason in ("stopped", "failed"):
                self._stop_running()
            state = {
                "finished": "finished", "stopped": "stopped", "budget": "budget",
                "interrupted": "interrupted", "failed": "failed",
            }[outcome.reason]
            try:
                self.save_state(state)
            except OSError as err:
                self.view.message(f"could not save the tuner state: {err}")
        finally:
            self.store.close()
            self.view.close()
            try:
                self.backend.close()
            except KeyboardInterrupt:
                self.backend.close()
        self._summary(outcome)
        return outcome

    def _pause_running(self, reason: str) -> None:
        """Pause every running trial and wait until its processes are gone."""
        running = [t for t, v in self.trials.items() if v.phase == "running"]
        if running:
            why = "Ctrl-C" if reason == "interrupted" else "time budget reached"
            self.view.message(f"{why}: pausing trials {', '.join(map(str, running))}")
        for trial_id in running:
            self.backend.pause_trial(trial_id)
            view = self.trials[trial_id]
            view.phase = "interrupted"
            view.status = Status.paused
            self._stop_clock(view)
            self.touch(trial_id)
        deadline = time.monotonic() + self.options.grace_period + 10.0
        try:
            while self.backend.busy_trial_ids() and time.monotonic() < deadline:
                ready = self.backend.wait(timeout=WAKE_WHILE_ENDING)
                if ready:
                    self._collect(ready)
        except KeyboardInterrupt:
            self.view.message("interrupted again: ending the trials now")

    def _stop_running(self) -> None:
        """End the run: stop every running trial for good (its processes end in close())."""
        for trial_id, view in self.trials.items():
            if view.phase == "running":
                self.backend.stop_trial(trial_id)
                self._end(trial_id, view, Status.stopped)

    def _summary(self, outcome: _Outcome) -> None:
        out = self.view
        root = self.files.root
        counts: dict[str, int] = {}
        for view in self.trials.values():
            counts[view.status] = counts.get(view.status, 0) + 1
        shown = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        best = self.log.best
        if best is not None:
            resource = best.get("resource")
            attr = self.options.resource_attr
            at = f" at {attr} {format_value(resource)}" if resource is not None else ""
            out.print(
                f"best trial {best['trial_id']}: {self.options.metric} "
                f"{format_value(best['value'])}{at}"
            )
            config = best["config"].items()
            out.print("  config: " + " ".join(f"{k}={format_value(v)}" for k, v in config))
        out.print(
            f"{len(self.trials)} trials ({shown or 'none'}) in "
            f"{format_duration(time.monotonic() - self.session_start)}"
        )
        out.print(f"results: {self.files.results_csv}  best: {self.files.best}")
        if outcome.reason in ("interrupted", "budget"):
            why = "interrupted" if outcome.reason == "interrupted" else "time budget reached"
            more = " --max-time SECONDS" if outcome.reason == "budget" else ""
            out.print(f"{why}; carry on with: localbackend tune --resume {root}{more}")
        elif outcome.reason == "stopped":
            out.print("stopped on request (localbackend stop)")
        paused = counts.get(Status.paused, 0)
        if outcome.reason == "finished" and paused and self.options.scheduler == "asha":
            out.print(f"{paused} trials stay paused at a rung: asha did not promote them")
        if outcome.reason == "failed":
            print(f"localbackend tune: error: {outcome.message}", file=sys.stderr)

    # -- the live view ---------------------------------------------------------

    def snapshot(self) -> Snapshot:
        now = time.time()
        rows = []
        for trial_id, view in sorted(self.trials.items()):
            runtime = view.runtime + (now - view.run_started if view.run_started else 0.0)
            shown = " ".join(
                f"{k}={format_value(view.config.get(k))}" for k in self.space.domains
            )
            rows.append(
                Row(
                    trial_id, view.status, self.scheduler.label(trial_id), view.last_resource,
                    view.last_value, view.best_value, runtime, shown,
                )
            )
        return Snapshot(
            rows=rows,
            progress=self.progress_line(),
            metric=self.options.metric,
            resource_attr=self.options.resource_attr,
            label_header=self.scheduler.label_header,
            mode=self.options.mode,
        )

    def progress_line(self) -> str:
        counts: dict[str, int] = {}
        for view in self.trials.values():
            counts[view.status] = counts.get(view.status, 0) + 1
        started = f"{len(self.trials)}"
        if self.options.max_trials is not None:
            started += f"/{self.options.max_trials}"
        elapsed = format_duration(self.elapsed())
        if self.options.max_time is not None:
            elapsed += f"/{format_duration(self.options.max_time)}"
        parts = [f"{started} trials", *(f"{n} {s}" for s, n in sorted(counts.items()))]
        parts.append(f"{elapsed} elapsed")
        best = self.log.best
        if best is not None:
            parts.append(
                f"best {self.options.metric} {format_value(best['value'])} "
                f"(trial {best['trial_id']})"
            )
        return "progress: " + ", ".join(parts)


def _is_number(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
    )


__all__ = ["TrialView", "TuneOptions", "Tuner"]

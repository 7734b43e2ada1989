"""The tuner's loop: results in, scheduler decisions out, carried out on the backend.

The loop waits on the backend (never a fixed sleep), hands each result to
the scheduler, carries out its decisions with ``pause_trial``,
``resume_trial``, ``stop_trial`` and ``copy_checkpoint``, and fills free
workers with the scheduler's next action. After each batch it appends what
changed to the tuner's journal, and it writes the whole state only at
checkpoints (see ``_tune_state``), so ``--resume`` carries on from the last
batch. It answers ``localbackend stop``, and winds the trials down at the end.

``_tune_judging`` says whether a result can be decided on, ``_tune_state``
keeps and saves the trials, ``_tune_display`` words what the user sees.
"""

from __future__ import annotations

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
    TunerPaths,
    append_jsonl,
    iter_jsonl,
    read_json,
)
from ._control import handle_requests
from ._events import describe_event
from ._live import View
from ._records import ResultsLog
from ._schedulers import PAUSE, STOP, Action, ResumeTrial, Scheduler, StartTrial
from ._search_space import SearchSpace
from ._tune_display import announcement, snapshot, summary
from ._tune_judging import ResultJudge, TuneFailed, how_it_failed
from ._tune_options import TuneOptions
from ._tune_state import TrialView, TuneState

# Wake at least this often, to notice Ctrl-C, stop requests and the time budget ...
WAKE_SECONDS = 0.5
# ... and this often while a paused trial's process is ending, to reuse its worker at once.
WAKE_WHILE_ENDING = 0.05


@dataclass
class _Outcome:
    """How the tune ended: finished, stopped, budget, interrupted or failed."""

    reason: str = "finished"
    exit_code: int = 0
    message: str = ""


class Tuner:
    """Runs one tune, new or resumed, from its first trials to its summary."""

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
        self.backend = backend
        self.files = files
        self.scheduler = scheduler
        # Replaced by the caller with the view it chose (live or plain).
        self.view: View = View()
        self.log = ResultsLog(files, options.metric, options.mode)
        # The scheduler samples from the space with the generator; the state saves them.
        self.state = TuneState(options, space, scheduler, rng, files)
        # Warnings go to the view shown at the time, not to this placeholder.
        self.judge = ResultJudge(options, files, lambda text: self.view.message(text))
        self.signal_received: Optional[int] = None
        self.stop_requested = False

    @property
    def trials(self) -> dict[int, TrialView]:
        return self.state.trials

    def load_state(self, state: dict[str, Any]) -> None:
        """Carry on from a saved state (``--resume``)."""
        self.state.load(state)
        self.judge.resumed(any(view.results for view in self.trials.values()))

    def event(self, event: dict[str, Any]) -> None:
        """Log a decision in ``events.jsonl`` and show it."""
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
            for line in announcement(self.state, self.files):
                self.view.message(line)
            if self.state.resumed:
                self._reattach()
            else:
                # Its first trials take the experiment lock, which is what tells
                # `status`, `stop` and `--resume` that this tune is running.
                self._fill_workers()
            self.state.save()
            outcome = self._loop()
        except TuneFailed as fatal:
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

    def _reattach(self) -> None:
        """After a restore: take the results not yet delivered, then queue running trials.

        A trial the backend started just before the tuner was killed, which
        the tuner's state never recorded, is taken on; its start is logged
        in ``events.jsonl`` unless the killed tuner logged it already.
        """
        known = list(range(self.backend.new_trial_id()))
        unknown = [trial_id for trial_id in known if trial_id not in self.trials]
        logged = {
            event.get("trial") for event in iter_jsonl(self.files.events)
            if event.get("event") == "start"
        } if unknown else set()
        for trial_id in unknown:
            config = read_json(self.files.trial(trial_id).config) or {}
            self.trials[trial_id] = TrialView(config=config)
            self.scheduler.on_trial_start(trial_id, config)
            if trial_id not in logged:
                self.event({"event": "start", "trial": trial_id, "config": config})
        if known:
            self._collect(known)
        for view in self.trials.values():
            if view.phase == "running" and view.status == Status.paused:
                view.phase = "interrupted"
        self.state.touch(*self.trials)

    def _loop(self) -> _Outcome:
        while True:
            if self.signal_received is not None:
                return _Outcome("interrupted", 128 + self.signal_received)
            self._handle_control()
            if self.stop_requested:
                return _Outcome("stopped", 0)
            out_of_time = (
                self.options.max_time is not None
                and self.state.elapsed() >= self.options.max_time
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
            self.state.save_changes()
            self.view.show(lambda: snapshot(self.state, self.log))

    # -- free workers ----------------------------------------------------------

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
                self.state.touch(trial_id)
                self.event({"event": "start", "trial": trial_id, "config": result.config})
                return
            # Choosing it changed the scheduler's part of this trial.
            self.state.touch(action.trial_id)
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
            raise TuneFailed(f"cannot run the next trial: {err}", EXIT_FAILED) from err

    # -- results and ends ------------------------------------------------------

    def _collect(self, trial_ids: list[int]) -> None:
        self.state.touch(*trial_ids)
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
        value, resource = result.get(options.metric), result.get(options.resource_attr)
        # Every result is recorded, usable for decisions or not.
        if self.log.record(trial_id, result, view.config, options.resource_attr):
            self.event({"event": "best", "trial": trial_id, "value": value, "resource": resource})
        reading = self.judge.read(trial_id, result)
        if reading is None:
            return
        view.last_value = reading.value
        view.last_resource = reading.resource
        better = self.scheduler.settings.better
        if view.best_value is None or better(reading.value, view.best_value):
            view.best_value = reading.value
        if view.phase != "running":
            return  # written before its pause took effect: recorded, but not a decision
        self._decide(trial_id, view, reading.value, reading.level)

    def _decide(self, trial_id: int, view: TrialView, value: float, level: Optional[float]) -> None:
        """Ask the scheduler about a running trial's result, and carry out its answer."""
        options = self.options
        verdict = self.scheduler.on_result(trial_id, level, value)
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
            view.stop_clock()
        elif decision == STOP:
            self.backend.stop_trial(trial_id)
            self.event({"event": "stop", "trial": trial_id, "why": "max_resource"})
            self._end(trial_id, view, Status.stopped)

    def _on_end(self, trial_id: int, view: TrialView, trial: Any, status: str) -> None:
        # The end is recorded before it is judged: a judgement that gives up
        # on the tune must find this trial ended, not still running.
        self._end(trial_id, view, status)
        if status == Status.failed:
            how, last = how_it_failed(trial)
            self.event({"event": "failed", "trial": trial_id, "how": how, "last": last})
            self.judge.failed(trial_id, last)
        elif status == Status.completed:
            self.event(
                {
                    "event": "completed", "trial": trial_id, "value": view.last_value,
                    "resource": view.last_resource,
                }
            )
            self.judge.completed(trial_id, view.results)

    def _end(self, trial_id: int, view: TrialView, status: str) -> None:
        view.phase = "ended"
        view.status = status
        view.stop_clock()
        self.scheduler.on_trial_end(trial_id, status)
        self.state.touch(trial_id)

    # -- requests from `localbackend stop` ---------------------------------------

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
                self.state.save(state)
            except OSError as err:
                self.view.message(f"could not save the tuner state: {err}")
        finally:
            self.state.close()
            try:
                self.view.close(lambda: snapshot(self.state, self.log))
            finally:
                try:
                    self.backend.close()
                except KeyboardInterrupt:
                    self.backend.close()
        for line in summary(self.state, self.log, self.files, outcome.reason):
            self.view.print(line)
        if outcome.reason == "failed":
            print(f"localbackend tune: error: {outcome.message}", file=sys.stderr)
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
            view.stop_clock()
            self.state.touch(trial_id)
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


__all__ = ["Tuner"]

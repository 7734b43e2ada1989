"""The runs a supervisor holds while it imports the preload modules, and a crash there.

A supervisor imports the preload modules (see ``_zygote``) when the first
run that asks for them reaches it, before it forks that run's keeper, and
tells the driver how the run starts (a ``start_mode`` event). Until then it
reads no command and has no keeper. An import can take the process down
(a C extension that crashes, a module that calls ``os._exit``) or never end.
``FirstImport`` tracks that window for the driver's ``SupervisorClient``:

- a supervisor that dies inside it has started none of the runs it was
  given: they are handed to the next supervisor without their preload
  list, so that they and every later run start cold, for that reason;
- a supervisor still inside it when the driver closes has no keeper to
  end: it can be killed at once rather than waited for.
"""

from __future__ import annotations

import signal
from typing import Any, Optional


class FirstImport:
    """What the driver knows of the current supervisor's import of the preload modules."""

    def __init__(self) -> None:
        # Why every run starts cold, once a supervisor died importing.
        self.failure: Optional[str] = None
        # Runs sent to this supervisor before it said how any run starts,
        # and not asked to end since.
        self._waiting: dict[tuple[int, int], dict[str, Any]] = {}
        # Every run sent to it meanwhile, asked to end or not.
        self._held: set[tuple[int, int]] = set()
        self._asked = self._answered = False
        self._modules: list[str] = []

    def started(self) -> None:
        """A new supervisor: it imports the modules again on its first warm run."""
        self._waiting.clear()
        self._held.clear()
        self._asked = self._answered = False

    @property
    def importing(self) -> bool:
        """Whether the supervisor may be importing now: it was given a warm run, judged none."""
        return self._asked and not self._answered

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        """``command`` as it is to be sent: without its preload list once imports failed."""
        if not command.get("preload"):
            return command
        if self.failure is not None:
            return {**command, "preload": []}
        if not self._answered:
            self._asked = True
            self._modules = [str(name) for name in command["preload"]]
            key = (int(command["trial"]), int(command["run"]))
            self._waiting[key] = command
            self._held.add(key)
        return command

    def holds(self, trial: int, run: int) -> bool:
        """Whether this run waits for the import, with no process: it has no keeper yet."""
        return self.importing and (trial, run) in self._held

    def answered(self) -> None:
        """The supervisor said how a run starts: it is done importing."""
        self._answered = True
        self._waiting.clear()
        self._held.clear()

    def cancelled(self, trial: int, run: int) -> None:
        """A run asked to end: it must not be handed to another supervisor."""
        self._waiting.pop((trial, run), None)

    def died(self, returncode: Optional[int]) -> list[dict[str, Any]]:
        """The supervisor died; the runs it died importing for, each to be sent again cold.

        From now on ``failure`` says why, and every run is sent without its
        preload list.
        """
        if not self.importing or self.failure is not None:
            return []
        self.failure = (
            f"the supervisor died importing the preload modules {self._modules} "
            f"({_how(returncode)})"
        )
        again = [self.command(waiting) for waiting in self._waiting.values()]
        self.started()
        return again


def _how(returncode: Optional[int]) -> str:
    if returncode is None:
        return "it closed its event pipe"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


__all__ = ["FirstImport"]

"""Exceptions raised by the backend.

Every exception carries the values it complains about as attributes, builds
its message from them, and survives pickling, so a tuner that saves its state
or ships errors between processes keeps the full story.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class LocalBackendError(Exception):
    """Base class of every error the backend raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[LocalBackendError], state: dict[str, Any]) -> LocalBackendError:
    """Recreate an error from its attributes without calling ``__init__``."""
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class TrialNotFoundError(LocalBackendError, KeyError):
    """A trial id that the backend does not know, or that is not an int."""

    def __init__(self, trial_id: object, known: int) -> None:
        self.trial_id = trial_id
        self.known = known
        if isinstance(trial_id, bool) or not isinstance(trial_id, int):
            detail = f"trial ids are ints, got {trial_id!r} of type {type(trial_id).__name__}"
        else:
            span = f"0..{known - 1}" if known else "none yet"
            detail = f"trial {trial_id} does not exist (known trial ids: {span})"
        super().__init__(f"{detail}. Use an id returned by start_trial().")


class InvalidTransitionError(LocalBackendError):
    """An operation that the trial's current status does not allow."""

    def __init__(self, trial_id: int, status: str, action: str, hint: str) -> None:
        self.trial_id = trial_id
        self.status = status
        self.action = action
        self.hint = hint
        super().__init__(f"cannot {action} trial {trial_id}: its status is {status}. {hint}")


class ConfigError(LocalBackendError, ValueError):
    """A config that cannot be passed to a trial script."""

    def __init__(self, key: str, value: object, problem: str, hint: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        self.hint = hint
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"config entry {key!r} = {shown}: {problem}. {hint}")


class EntryPointError(LocalBackendError, ValueError):
    """The trial script is missing or cannot be run."""

    def __init__(self, path: str, problem: str, hint: str) -> None:
        self.path = path
        self.problem = problem
        self.hint = hint
        super().__init__(f"entry point {path!r} {problem}. {hint}")


class BackendConfigurationError(LocalBackendError, ValueError):
    """A constructor argument or setting of the backend is invalid."""

    def __init__(self, name: str, value: object, problem: str, hint: str) -> None:
        self.name = name
        self.value = value
        self.problem = problem
        self.hint = hint
        super().__init__(f"{name}={value!r} {problem}. {hint}")


class CheckpointCopyError(LocalBackendError):
    """A checkpoint could not be copied; the target is left as it was.

    Unless the hint says that the copy is in place: then only syncing it to
    disk failed, after it was switched in.
    """

    def __init__(self, src_trial_id: int, tgt_trial_id: int, problem: str, hint: str) -> None:
        self.src_trial_id = src_trial_id
        self.tgt_trial_id = tgt_trial_id
        self.problem = problem
        self.hint = hint
        super().__init__(
            f"cannot copy the checkpoint of trial {src_trial_id} to trial {tgt_trial_id}: "
            f"{problem}. {hint}"
        )


class TrialLaunchError(LocalBackendError):
    """The operating system refused to start a trial's process."""

    def __init__(self, trial_id: int, argv: list[str], problem: str, hint: str) -> None:
        self.trial_id = trial_id
        self.argv = argv
        self.problem = problem
        self.hint = hint
        # A problem that is a sentence of its own (a supervisor's) keeps one full stop.
        super().__init__(
            f"cannot start trial {trial_id} ({argv[0]!r}): {problem.rstrip('.')}. {hint}"
        )


class SupervisorError(LocalBackendError):
    """The helper process that owns the trial processes stopped unexpectedly."""


class ExperimentError(LocalBackendError):
    """An experiment folder that cannot be used or restored."""

    def __init__(self, path: str, problem: str, hint: str) -> None:
        self.path = path
        self.problem = problem
        self.hint = hint
        super().__init__(f"experiment folder {path!r} {problem}. {hint}")


class ExperimentMovedError(ExperimentError):
    """The experiment was taken over by a backend restored in this same process."""

    def __init__(self, path: str) -> None:
        super().__init__(
            path,
            "has moved to a backend restored from it in this process (LocalBackend.restore, "
            "or unpickling, as Syne Tune's Tuner.load does); this older backend let go of it",
            "Use the restored backend instead of this one.",
        )


def experiment_folder_gone(path: str) -> ExperimentError:
    """The experiment folder vanished under the backend that holds it (deleted or moved)."""
    return ExperimentError(
        path,
        "was deleted or moved while this backend held it, so the trial table can no longer "
        "be saved there (what happened since its last snapshot is lost with it)",
        "Close this backend and start the experiment again in a new folder, or restore a "
        "copy of the old folder if you kept one.",
    )


def close_under(close: Callable[[], None], pending: BaseException | None) -> None:
    """``close()`` at the end of a ``with`` block whose own exception may be on its way.

    A failure to close does not take that exception's place (``with`` would
    otherwise raise the close's error, with the block's hidden as its
    context): it becomes a note on the block's exception.
    """
    if pending is None:
        close()
        return
    try:
        close()
    except Exception as error:
        pending.add_note(f"Closing the backend failed too: {type(error).__name__}: {error}")


class ExperimentLockedError(ExperimentError):
    """Another live driver holds the experiment folder."""

    def __init__(self, path: str, pid: object, host: object, since: object) -> None:
        self.pid = pid
        self.host = host
        self.since = since
        super().__init__(
            path,
            f"is in use by the driver with PID {pid} on host {host} (since {since})",
            "Stop that driver first, or use another experiment folder.",
        )


class IntegrationError(LocalBackendError):
    """A tuner adapter (``localbackend.integrations``) was used in a way it cannot serve."""

    def __init__(self, adapter: str, problem: str, hint: str) -> None:
        self.adapter = adapter
        self.problem = problem
        self.hint = hint
        super().__init__(f"{adapter}: {problem}. {hint}")

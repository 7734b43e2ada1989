"""The driver's side of the supervisor: start it, send commands, read events.

See ``_supervisor`` for what the supervisor and its keepers do. Commands go
to the supervisor's stdin as JSON lines; events come back on a pipe as JSON
lines. Both pipes are close-on-exec in the driver, so a process the driver
starts for other reasons never keeps them open.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ._errors import SupervisorError
from ._launch import LaunchSpec
from ._paths import TrialPaths

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(2)); "
    "from localbackend._supervisor import main; main()"
)


class SupervisorClient:
    """Owns the supervisor process for one backend."""

    def __init__(self, detach: bool = False) -> None:
        self.detach = detach
        self._process: subprocess.Popen[bytes] | None = None
        self._stdin: IO[bytes] | None = None
        self._events_fd = -1
        self._buffer = b""
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._process is not None

    @property
    def events_fd(self) -> int:
        """The fd to wait on for events (-1 before the supervisor starts)."""
        return self._events_fd

    def ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        if self._process is not None:
            self.close_pipes()
        read_fd, write_fd = os.pipe()
        package_parent = str(Path(__file__).resolve().parent.parent)
        try:
            self._process = subprocess.Popen(
                [
                    sys.executable, "-c", _BOOTSTRAP, str(write_fd), package_parent,
                    "detach" if self.detach else "attach",
                ],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                # Its own session: a Ctrl-C in the driver's terminal is the
                # driver's to handle, not a signal to every trial at once.
                start_new_session=True,
            )
        except OSError as err:
            os.close(read_fd)
            raise SupervisorError(
                f"cannot start the supervisor process ({sys.executable}): {err}. "
                "Check that the interpreter runs and that the process limit is not reached."
            ) from err
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._events_fd = read_fd
        self._stdin = self._process.stdin
        self._buffer = b""

    def _send(self, command: dict[str, Any]) -> None:
        self.ensure_started()
        line = json.dumps(command, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            stdin = self._stdin
            if stdin is None:
                raise SupervisorError("the supervisor is not running")
            try:
                stdin.write(line)
                stdin.flush()
            except (BrokenPipeError, ValueError) as err:
                raise SupervisorError(
                    "the supervisor process has exited; its trials were ended with it. "
                    "Create a new backend or restore this experiment."
                ) from err

    def spawn(
        self, trial_id: int, run: int, spec: LaunchSpec, executable: str, paths: TrialPaths,
        grace: float,
    ) -> None:
        self._send(
            {
                "op": "spawn",
                "trial": trial_id,
                "run": run,
                "executable": executable,
                "argv": list(spec.argv),
                "env": dict(spec.env),
                "cwd": str(spec.cwd),
                "stdout": str(paths.stdout),
                "stderr": str(paths.stderr),
                "results": str(paths.results),
                "exit_file": str(paths.exit_status),
                "grace": grace,
            }
        )

    def terminate(self, trial_id: int, run: int) -> None:
        self._send({"op": "terminate", "trial": trial_id, "run": run})

    def read_events(self) -> list[dict[str, Any]]:
        """Every event that has arrived, without blocking."""
        if self._events_fd < 0:
            return []
        chunks = [self._buffer]
        eof = False
        while True:
            try:
                chunk = os.read(self._events_fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        *lines, self._buffer = data.split(b"\n")
        events = [json.loads(line) for line in lines if line.strip()]
        if eof:
            events.append({"ev": "supervisor_gone"})
            self.close_pipes()
        return events

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def shutdown(self) -> None:
        """Stop every trial (with its grace period) and wait for the supervisor."""
        if self._process is None:
            return
        try:
            self._send({"op": "shutdown"})
        except SupervisorError:
            pass
        self._process.wait()
        self.close_pipes()

    def close_pipes(self) -> None:
        if self._stdin is not None:
            try:
                self._stdin.close()
            except OSError:
                pass
            self._stdin = None
        if self._events_fd >= 0:
            os.close(self._events_fd)
            self._events_fd = -1
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._process = None

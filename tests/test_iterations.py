"""The iteration counter carries on across resumes, even when a paused run writes late."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from localbackend import LocalBackend, Status
from tests.helpers import drain, format_logs, wait_for

LATE_WRITER = """
import os, signal, sys, time
from pathlib import Path
from localbackend import checkpoint, report

folder = Path(os.environ["LOCALBACKEND_TRIAL_DIR"])
run = len(list(folder.glob("run-*")))
(folder / f"run-{run}").write_text("")
stopping = False

def on_sigterm(signum, frame):
    global stopping
    stopping = True

signal.signal(signal.SIGTERM, on_sigterm)
if run == 0:
    report(phase="before")
    while not stopping:
        time.sleep(0.005)
    for _ in range(3):  # written after the pause: never delivered, but counted
        report(phase="late")
    (folder / "go-on").write_text("")
    while (folder / "go-on").exists():
        time.sleep(0.005)
else:
    report(phase="resumed")
"""


def test_resumed_run_counts_results_the_paused_run_wrote_late(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(textwrap.dedent(LATE_WRITER))
    with LocalBackend(script, experiment_dir=tmp_path / "exp", grace_period=30) as backend:
        backend.start_trial({})
        backend.wait(timeout=30)
        assert [r["phase"] for _, r in backend.fetch_status_results([0])[1]] == ["before"]
        backend.pause_trial(0)
        backend.resume_trial(0)  # queued until the paused run has ended
        go_on = backend.trial_dir(0) / "go-on"
        wait_for(go_on.exists, what="the late results", on_fail=lambda: format_logs(backend))
        go_on.unlink()
        statuses, results = drain(backend, [0])
        assert statuses[0][1] == Status.completed, format_logs(backend)
        assert [r["phase"] for _, r in results] == ["resumed"]
        written = [json.loads(line) for line in
                   (backend.trial_dir(0) / "results.jsonl").read_text().splitlines()]
        assert [r["st_worker_iter"] for r in written] == [0, 1, 2, 3, 4]

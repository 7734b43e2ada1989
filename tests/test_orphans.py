"""No orphans: the trees of every trial end when the driver dies, however it dies."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.crash_helpers import alive, kill_driver, kill_pids, start_driver, trial_pids
from tests.helpers import wait_for


def test_sigkilled_driver_takes_all_trial_trees_within_two_seconds(tmp_path: Path) -> None:
    driver = start_driver(tmp_path, "--spawn-descendants", trials=3, steps=1000,
                          step_seconds=0.05, deliver_at_least=3)
    try:
        # Each trial's descendants record themselves as they start, which can
        # be after its first results on a loaded machine.
        def all_started() -> list[int]:
            pids = trial_pids(driver.experiment_dir)
            return pids if len(alive(pids)) >= 9 else []

        pids = wait_for(
            all_started, timeout=30,
            what="a leader, a setsid child and a grandchild per trial",
        )
        kill_driver(driver, signal.SIGKILL)
        killed_at = time.monotonic()
        while alive(pids) and time.monotonic() - killed_at < 2.0:
            time.sleep(0.01)
        assert not alive(pids), f"still alive 2 s after the driver died: {alive(pids)}"
    finally:
        if driver.process.poll() is None:
            kill_driver(driver, signal.SIGKILL)
        kill_pids(trial_pids(driver.experiment_dir))

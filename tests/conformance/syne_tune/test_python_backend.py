"""Syne Tune's ``PythonBackend`` test, run against ``SyneTunePythonBackend``.

Source (Apache License 2.0): https://github.com/syne-tune/syne-tune, tag
v0.14.2 (identical in v0.15.0), ``tst/trial_backend/test_python_backend.py``.

Adapted: ``PythonBackend`` is ``SyneTunePythonBackend``; the
``pytest.mark.timeout(5)`` is a deadline in ``wait_until_all_trials_completed``
(see ``test_local_trial_backend``); the backend is closed at the end.
"""

from __future__ import annotations

import tempfile

import pytest

pytest.importorskip("syne_tune")

from syne_tune.backend.trial_status import Status
from syne_tune.config_space import randint

from localbackend.integrations.syne_tune import SyneTunePythonBackend
from tests.conformance.syne_tune.test_local_trial_backend import wait_until_all_trials_completed

pytestmark = pytest.mark.integration


def f(x):  # type: ignore[no-untyped-def]
    import logging

    from syne_tune import Reporter

    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    reporter = Reporter()
    for i in range(5):
        reporter(step=i + 1, y=x + i)


def test_python_backend() -> None:
    with tempfile.TemporaryDirectory() as local_path:
        import logging

        root = logging.getLogger()
        root.setLevel(logging.INFO)
        backend = SyneTunePythonBackend(f, config_space={"x": randint(0, 10)})
        try:
            backend.set_path(str(local_path))
            backend.start_trial({"x": 2})
            backend.start_trial({"x": 3})

            wait_until_all_trials_completed(backend, timeout=30)

            trials, metrics = backend.fetch_status_results([0, 1])

            for trial, status in trials.values():
                assert status == Status.completed, "\n".join(
                    backend.stdout(trial.trial_id)
                ) + "\n".join(backend.stderr(trial.trial_id))

            metrics_first_trial = [metric["y"] for x, metric in metrics if x == 0]
            metrics_second_trial = [metric["y"] for x, metric in metrics if x == 1]
            assert metrics_first_trial == [2, 3, 4, 5, 6]
            assert metrics_second_trial == [3, 4, 5, 6, 7]
        finally:
            backend.close()

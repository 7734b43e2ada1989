"""Benchmarks: localbackend against the floor and Syne Tune's LocalBackend.

Run ``python -m bench`` from the repository root (``--help`` for options).
Each scenario runs in fresh driver processes, one per contender and round:

* ``floor``: a bare ``subprocess.Popen`` and a blocking ``waitpid`` loop,
  the least any backend can do;
* ``localbackend``: this project's ``LocalBackend``, driven with ``wait()``;
* ``syne``: ``syne_tune.backend.LocalBackend`` 0.16, driven through its API
  and polled, in a venv of its own (``bench/.venv-syne``).

The package import stays empty on purpose: a driver process imports it, and
its peak RSS is one of the measurements.
"""

"""Adapters that let other tuners drive :class:`localbackend.LocalBackend`.

Each adapter lives in its own module and imports its tuner library only when
that module is imported, so ``import localbackend.integrations`` costs nothing
and needs none of them:

* :mod:`localbackend.integrations.syne_tune`: ``SyneTuneBackend``, a Syne Tune
  ``TrialBackend`` with the surface of Syne Tune's ``LocalBackend``, and
  ``SyneTunePythonBackend`` for its ``PythonBackend`` (extra ``syne-tune``);
* :mod:`localbackend.integrations.optuna`: ``OptunaRunner``, ask-and-tell with
  pruning (extra ``optuna``);
* :mod:`localbackend.integrations.smac`: ``SMACRunner``, a SMAC
  ``AbstractRunner`` (extra ``smac``);
* :mod:`localbackend.integrations.ax`: ``LocalBackendRunner`` and
  ``LocalBackendMapMetric`` for Ax's ``Orchestrator``, and
  ``LocalBackendClientRunner`` and ``LocalBackendClientMetric`` for its
  ``Client`` (extra ``ax``).
"""

from __future__ import annotations

__all__: list[str] = []

"""What ``tune`` was asked to do: :class:`TuneOptions`.

The options are plain data: ``_tune`` builds them from the command line
(or reads them back from ``tuner.json`` on ``--resume``), and the loop, the
judging of results, the event lines and the display only read them. They
depend on nothing else in the package, so every part of the tuner can
import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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
    # Modules preloaded for warm starts (``--preload``).
    preload: Optional[list[str]] = None


__all__ = ["TuneOptions"]

"""Random search: the scheduler that only samples, and never pauses or stops a trial."""

from __future__ import annotations

from ._base import Scheduler


class RandomSearch(Scheduler):
    """Each trial gets an independent random config and runs to its end.

    That is the base class's behaviour; this class gives it a name, so the
    tuner treats every scheduler alike.
    """

    name = "random"


__all__ = ["RandomSearch"]

"""Loggers that import ``logging`` only when something is logged.

The driver's modules log only warnings, and rarely; importing ``logging`` up
front would add about 0.8 MiB to every driver. A ``LazyLogger`` resolves
``logging.getLogger(name)`` on its first message, so handlers, levels and
``caplog`` see the same logger names as with ``logging.getLogger``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging


class LazyLogger:
    """The logger called ``name``, looked up when first used."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _resolve(self) -> logging.Logger:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        # stacklevel 2: the record names the caller, not this method.
        kwargs.setdefault("stacklevel", 2)
        self._resolve().warning(msg, *args, **kwargs)

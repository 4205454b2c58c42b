"""Errors of the rate limiter.

::

    LimiterError                 root: catch this to handle every limiter failure
    └── LimiterUnavailable       the limiter cannot decide now (Redis down, slow, or failing)
        └── LimiterClosed        the limiter was used after ``aclose()``

A *denied* request is not an error: ``acquire`` returns a ``Decision`` with ``allowed=False``.
``LimiterUnavailable`` means "no decision"; the gateway chooses what to do (it fails open, so a
Redis outage never takes the platform down).
"""

from __future__ import annotations

__all__ = ["LimiterClosed", "LimiterError", "LimiterUnavailable"]


class LimiterError(Exception):
    """The rate limiter failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class LimiterUnavailable(LimiterError):
    """The rate limiter cannot decide right now (with Redis, it may still have charged)."""


class LimiterClosed(LimiterUnavailable):
    """The rate limiter is closed."""

"""Rate limits: GCRA token buckets, checked all-or-nothing, in process or shared through Redis.

The gateway builds the ``Bucket`` list of a request (per key, key x chain, chain, IP) and asks a
``Limiter`` once per request; the rules of a ``Decision`` are in ``hoodrun.limits.bucket``.
"""

from __future__ import annotations

from hoodrun.limits.bucket import Bucket, Decision, Limiter
from hoodrun.limits.exceptions import LimiterClosed, LimiterError, LimiterUnavailable
from hoodrun.limits.memory import MemoryLimiter
from hoodrun.limits.redis_backend import RedisLimiter

__all__ = [
    "Bucket",
    "Decision",
    "Limiter",
    "LimiterClosed",
    "LimiterError",
    "LimiterUnavailable",
    "MemoryLimiter",
    "RedisLimiter",
]

"""Buckets, decisions and the ``Limiter`` interface shared by both backends.

The algorithm is GCRA (the generic cell rate algorithm), a token bucket stored as one number per
bucket: its *theoretical arrival time* ``tat``, the moment the bucket will be full again. With
``rate`` tokens per second and ``capacity`` tokens of burst, at time ``now`` a bucket holds::

    available = capacity - (max(tat, now) - now) * rate

A request of ``cost`` tokens is admitted when ``available >= cost`` and then moves ``tat`` forward
by ``cost / rate``. A bucket nobody touched since ``tat`` is full, so its state can be dropped.

Decision rules, identical in ``MemoryLimiter`` and the Lua script of ``RedisLimiter``:

- **All or nothing.** A request names several buckets (key, key x chain, chain, IP, ...). It is
  admitted only if *every* bucket can afford ``cost``; then every bucket is charged. Otherwise no
  bucket is charged.
- **Allowed:** ``limit``, ``remaining`` and ``reset_after`` describe the *tightest* bucket, the one
  with the fewest tokens left after the charge (fractions count; the first one on an exact tie);
  ``retry_after`` is 0 and ``bucket`` is ``None``.
- **Denied:** ``bucket`` names the bucket that must refill the longest before ``cost`` fits, and
  ``retry_after`` is that wait, i.e. the earliest moment the same request could be admitted if
  nothing else is charged meanwhile. ``limit``, ``remaining`` and ``reset_after`` describe that
  bucket, uncharged.
- **Cost above capacity.** A bucket can never hold more than ``capacity`` tokens, so such a
  request can never be admitted. It is denied naming the first bucket whose capacity is below
  ``cost``, and ``retry_after`` is computed for the capacity: the seconds until that bucket is
  full again (0 if it already is). Callers recognise the case by ``cost > decision.limit`` and
  should answer "request too large" instead of "retry later".
- **Cost 0** peeks: always allowed, charges nothing. **No buckets**: allowed with ``limit=0``
  (nothing to report in headers).
- Bucket keys within one decision must be distinct.

A bucket's rate or capacity may change between calls (a plan change): the stored ``tat`` is simply
read with the new parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["TOKEN_EPSILON", "Bucket", "Decision", "Limiter", "new_decision"]

# Float slack, in tokens, when comparing "available" with "cost": without it a burst of exactly
# `capacity` requests can be refused because a sum of `cost / rate` steps rounds one ulp above
# `capacity / rate`. It admits at most a thousandth of a token early and never accumulates
# (each admission still advances `tat` by the full cost). The Lua script uses the same value.
TOKEN_EPSILON = 1e-3
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit: ``capacity`` tokens of burst, refilled at ``rate`` tokens per second.

    ``key`` identifies the state shared by every request that names it, e.g. ``"k:key_abc"``
    (per key), ``"kc:key_abc:eth"`` (per key and chain), ``"c:eth"`` (whole chain) or
    ``"ip:1.2.3.4"`` (keyless access).
    """

    key: str
    rate: float
    capacity: int

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("Bucket.key must not be empty")
        if not 0 < self.rate < _INF:  # also refuses NaN
            raise ValueError(f"Bucket.rate must be > 0 tokens per second, got {self.rate!r}")
        if self.capacity < 1:
            raise ValueError(f"Bucket.capacity must be >= 1, got {self.capacity!r}")

    @classmethod
    def per_window(cls, key: str, limit: int, window_seconds: float) -> Bucket:
        """A cap of ``limit`` per rolling ``window_seconds`` (e.g. per minute or hour).

        As a GCRA bucket: the full ``limit`` may be spent at once, and it comes back at
        ``limit / window_seconds`` tokens per second, so no window of that length ever admits
        more than ``2 x limit`` and a steady client gets ``limit`` per window.
        """
        if not window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
        return cls(key, limit / window_seconds, limit)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one ``acquire``; see the module docstring for how each field is chosen."""

    allowed: bool
    limit: int
    """Capacity of the reported bucket (``X-RateLimit-Limit``)."""
    remaining: int
    """Whole tokens left in the reported bucket after this decision (``X-RateLimit-Remaining``)."""
    reset_after: float
    """Seconds until the reported bucket is full again (``X-RateLimit-Reset``)."""
    retry_after: float
    """When denied, seconds until this cost could be admitted (``Retry-After``); 0 if allowed."""
    bucket: str | None
    """Key of the bucket that denied; ``None`` when allowed."""


def _slot_setter(name: str) -> Any:
    return getattr(Decision, name).__set__


_new = object.__new__
_set_allowed = _slot_setter("allowed")
_set_limit = _slot_setter("limit")
_set_remaining = _slot_setter("remaining")
_set_reset_after = _slot_setter("reset_after")
_set_retry_after = _slot_setter("retry_after")
_set_bucket = _slot_setter("bucket")


def new_decision(
    allowed: bool,
    limit: int,
    remaining: int,
    reset_after: float,
    retry_after: float,
    bucket: str | None,
) -> Decision:
    """``Decision(...)`` for the hot path: the same object, built in well under half the time.

    A frozen dataclass's ``__init__`` assigns each field through ``object.__setattr__``, which
    made it most of ``MemoryLimiter``'s decision cost; this fills the slots directly.
    """
    decision = _new(Decision)
    _set_allowed(decision, allowed)
    _set_limit(decision, limit)
    _set_remaining(decision, remaining)
    _set_reset_after(decision, reset_after)
    _set_retry_after(decision, retry_after)
    _set_bucket(decision, bucket)
    return decision


class Limiter(Protocol):
    """A rate limiter backend: ``MemoryLimiter`` (one process) or ``RedisLimiter`` (shared)."""

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> Decision:
        """Charge ``cost`` tokens to every bucket, or to none if any cannot afford it.

        Raises ``LimiterUnavailable`` when no decision can be made (the caller fails open) and
        ``ValueError`` for a negative cost.
        """
        ...

    async def aclose(self) -> None:
        """Release resources; later ``acquire`` calls raise ``LimiterClosed``."""
        ...

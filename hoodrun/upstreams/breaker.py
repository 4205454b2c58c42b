"""Per-upstream circuit breaker.

CLOSED ─(``failures`` failures in a row)→ OPEN ─(``cooldown`` s)→ HALF_OPEN: exactly one probe is
let through; its success closes the breaker, its failure opens it again for another cool-down.
Late answers to requests sent before the breaker opened neither close it nor extend the
cool-down. A probe whose outcome is never reported is given up after another cool-down. The
clock is injected so tests drive time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(IntEnum):
    """Values double as the ``upstream_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Counts consecutive failures; see the module docstring.

    ``on_change(old, new)`` is called on every state change (for logs and metrics). The
    OPEN → HALF_OPEN change happens lazily, when someone looks (``state``, ``allow``).
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_on_change",
        "_opened_at",
        "_probe_at",
        "_state",
        "cooldown",
        "threshold",
    )

    def __init__(
        self,
        failures: int,
        cooldown: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.threshold = failures
        self.cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_at: float | None = None  # when the HALF_OPEN probe was let through

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._set(BreakerState.HALF_OPEN)
        return self._state

    @property
    def closed(self) -> bool:
        """The hot-path check: no clock read."""
        return self._state is BreakerState.CLOSED

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far."""
        return self._failures

    def allow(self) -> bool:
        """May a request go through? In HALF_OPEN the first caller takes the one probe."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        now = self._clock()
        # A probe whose outcome was never reported (lost task) is given up after a cool-down.
        if self._probe_at is None or now - self._probe_at >= self.cooldown:
            self._probe_at = now
            return True
        return False

    def probe_available(self) -> bool:
        """Would ``allow`` let a request through (without taking the probe)?"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        return self._probe_at is None or self._clock() - self._probe_at >= self.cooldown

    def record_success(self) -> None:
        if self._state is BreakerState.OPEN:
            # A late answer to a request sent before the breaker opened: only a probe closes.
            return
        self._failures = 0
        self._probe_at = None
        if self._state is BreakerState.HALF_OPEN:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        state = self.state
        if state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.threshold:
                self._open()
        elif state is BreakerState.HALF_OPEN:
            self._failures += 1
            self._open()
        # OPEN: late failures of requests sent before it opened do not extend the cool-down.

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled, or an answer that proves nothing)."""
        self._probe_at = None

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_at = None
        self._set(BreakerState.OPEN)

    def _set(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if self._on_change is not None:
            self._on_change(old, new)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state.name} failures={self._failures}/{self.threshold}>"

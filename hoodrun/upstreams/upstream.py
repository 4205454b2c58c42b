"""One upstream node of a chain: its connections, breaker, score and last health verdict."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hoodrun.config import HealthConfig, UpstreamConfig
from hoodrun.upstreams._http import HttpPool
from hoodrun.upstreams.breaker import BreakerState, CircuitBreaker

__all__ = ["Upstream"]

# EWMA weights of a new sample. Latency follows the node within ~10 requests; the error rate
# forgets a failure after ~20 successes.
LATENCY_ALPHA = 0.1
ERROR_ALPHA = 0.1
# The score's error-rate penalty: an upstream failing half its requests scores 6x worse.
ERROR_PENALTY = 10.0


class Upstream:
    """Traffic statistics are updated by ``ChainPool.call``, health by its health loop.

    ``ewma_latency`` is in seconds; ``error_rate`` is an EWMA of failures (0..1).
    """

    __slots__ = (
        "attempts_failed",
        "attempts_ok",
        "batch_ok",
        "breaker",
        "chain_verified",
        "check_error",
        "check_latency",
        "checked_at",
        "client_version",
        "config",
        "cordoned",
        "error_rate",
        "ewma_latency",
        "fallback",
        "finalized",
        "head",
        "health_http",
        "http",
        "inflight",
        "lag",
        "max_inflight",
        "name",
        "out_reason",
        "peers",
        "reachable",
        "syncing",
        "tags",
        "txpool_pending",
        "txpool_queued",
        "url",
        "weight",
        "wrong_chain_id",
    )

    def __init__(
        self,
        config: UpstreamConfig,
        health: HealthConfig,
        *,
        max_connections: int = 64,
        connect_timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        on_breaker_change: Callable[[Upstream, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.weight = config.weight
        self.tags = frozenset(config.tags)
        self.fallback = config.tier == "fallback"
        self.max_inflight = config.max_inflight
        self.http = HttpPool(
            config.url, max_connections=max_connections, connect_timeout=connect_timeout
        )
        # Health checks have their own connection so that a saturated traffic pool does not
        # make a busy node look dead.
        self.health_http = HttpPool(config.url, max_connections=1, connect_timeout=connect_timeout)
        self.breaker = CircuitBreaker(
            health.breaker_failures,
            health.breaker_cooldown,
            clock=clock,
            on_change=(
                None
                if on_breaker_change is None
                else lambda old, new: on_breaker_change(self, old, new)
            ),
        )
        self.ewma_latency = 0.0
        self.error_rate = 0.0
        self.inflight = 0
        # Request attempts since the upstream was configured (counters for /metrics).
        self.attempts_ok = 0
        self.attempts_failed = 0
        # Health, as of the last check.
        self.reachable = False  # the last check got an answer
        self.head: int | None = None
        self.syncing: bool | None = None
        self.peers: int | None = None
        self.finalized: int | None = None
        self.txpool_pending: int | None = None
        self.txpool_queued: int | None = None
        self.client_version: str | None = None
        self.check_latency: float | None = None  # seconds, the last check's round trip
        self.lag: int | None = None
        self.chain_verified = False
        self.wrong_chain_id: int | None = None
        self.check_error: str | None = None
        self.batch_ok = True
        self.checked_at: float | None = None
        self.out_reason: str | None = "not checked yet"
        # Taken out of rotation by an operator (``ChainPool.set_cordoned``): no traffic, but
        # still health-checked, so its figures stay current for when it comes back.
        self.cordoned = False

    @property
    def healthy(self) -> bool:
        """The health checks pass and the breaker is closed (eligible for traffic unless
        ``cordoned``)."""
        return self.out_reason is None and self.breaker.closed

    @property
    def reason(self) -> str | None:
        """Why the upstream is out, or None."""
        if self.out_reason is not None:
            return self.out_reason
        state = self.breaker.state
        if state is BreakerState.OPEN:
            return "circuit breaker open"
        if state is BreakerState.HALF_OPEN:
            return "circuit breaker half-open (probing)"
        return None

    def score(self) -> float:
        """Lower is better."""
        return (
            self.ewma_latency
            * (self.inflight + 1)
            * (1.0 + ERROR_PENALTY * self.error_rate)
            / self.weight
        )

    def record_latency(self, latency: float) -> None:
        if self.ewma_latency == 0.0:
            self.ewma_latency = latency
        else:
            self.ewma_latency += LATENCY_ALPHA * (latency - self.ewma_latency)

    def record_success(self, latency: float) -> None:
        self.attempts_ok += 1
        self.record_latency(latency)
        self.error_rate -= ERROR_ALPHA * self.error_rate
        self.breaker.record_success()

    def record_failure(self, *, breaker: bool = True) -> None:
        self.attempts_failed += 1
        self.error_rate += ERROR_ALPHA * (1.0 - self.error_rate)
        if breaker:
            self.breaker.record_failure()

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "url": self.url,
            "healthy": self.healthy,
            "reason": self.reason,
            "head": self.head,
            "lag": self.lag,
            "syncing": self.syncing,
            "peers": self.peers,
            "finalized": self.finalized,
            "txpool_pending": self.txpool_pending,
            "txpool_queued": self.txpool_queued,
            "client_version": self.client_version,
            "check_latency_ms": (
                None if self.check_latency is None else round(self.check_latency * 1000.0, 3)
            ),
            "breaker": self.breaker.state,  # an IntEnum: int() for gauges, .name for people
            "breaker_state": self.breaker.state.name.lower(),
            "latency_ms": round(self.ewma_latency * 1000.0, 3),
            "error_rate": round(self.error_rate, 4),
            "inflight": self.inflight,
            "attempts": {"ok": self.attempts_ok, "failed": self.attempts_failed},
            "weight": self.weight,
            "tags": sorted(self.tags),
            "tier": "fallback" if self.fallback else "own",
            "cordoned": self.cordoned,
            "connections": {"idle": self.http.idle, "in_use": self.http.in_use},
        }

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.health_http.aclose()

    def __repr__(self) -> str:
        return f"<Upstream {self.name} {self.url} healthy={self.healthy}>"

"""Per-chain state of the gateway: its upstream pool, its global limit and the head it serves."""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import orjson

from hoodrun.config import ChainConfig
from hoodrun.limits import Bucket
from hoodrun.upstreams import ChainPool

__all__ = ["ChainState", "loads"]


def loads(body: bytes) -> Any:
    """Parse JSON; orjson refuses integers past 64 bits, the stdlib does not."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except ValueError:
            return None


class ChainState:
    """A chain's config, its upstream pool, its global bucket and the head served to clients.

    The head served never goes backwards: ``eth_blockNumber`` answers lower than one already
    given (upstreams disagree, one falls behind) are raised to it.
    """

    __slots__ = (
        "_hedge_after",
        "_latencies",
        "_samples",
        "config",
        "global_bucket",
        "hedge_methods",
        "name",
        "pool",
        "served_finalized",
        "served_head",
    )

    def __init__(self, config: ChainConfig, pool: ChainPool) -> None:
        self.name = config.name
        self.config = config
        self.pool = pool
        self.served_head = 0
        self.served_finalized = -1
        self.global_bucket: Bucket | None = None
        self.hedge_methods: tuple[str, ...] | None = None
        self._hedge_after: float | None = None
        self.reconfigure(config)
        self._latencies: deque[float] = deque(maxlen=512)
        self._samples = 0

    def reconfigure(self, config: ChainConfig) -> None:
        """Adopt the chain's new config (a reload); the heads served so far stay."""
        rate = config.rate
        # The limiter keeps a bucket's state by its name: a new rate applies from now on.
        self.global_bucket = (
            None if rate is None else Bucket(f"c:{config.name}", rate.rps, rate.capacity)
        )
        self.config = config
        hedge = config.hedge
        self.hedge_methods = None if hedge is None else hedge.methods
        # The delay before a hedge: fixed, or a percentile of recent upstream latencies
        # (recomputed every 64 answers; no hedging until 64 were seen).
        self._hedge_after = None if hedge is None else hedge.delay

    def finalized(self) -> int | None:
        """The finalized block served for the "finalized" tag: the lowest finalized block of
        the healthy upstreams (every one of them has it), never going backwards."""
        now = self.pool.finalized_head(self.config.finality_depth)
        if now is not None and now > self.served_finalized:
            self.served_finalized = now
        return self.served_finalized if self.served_finalized >= 0 else None

    def hedge_delay(self) -> float | None:
        return self._hedge_after

    def observe_latency(self, seconds: float) -> None:
        hedge = self.config.hedge
        if hedge is None or hedge.percentile is None:
            return
        self._latencies.append(seconds)
        self._samples += 1
        if self._samples % 64 == 0:
            ordered = sorted(self._latencies)
            at = min(len(ordered) - 1, int(len(ordered) * hedge.percentile / 100.0))
            self._hedge_after = max(ordered[at], 0.001)

    def monotonic_head(self, result: Any) -> Any:
        if not isinstance(result, str) or not result.startswith("0x"):
            return result
        try:
            height = int(result, 16)
        except ValueError:
            return result
        if height >= self.served_head:
            self.served_head = height
            return result
        return hex(self.served_head)

    def monotonic_head_body(self, body: bytes) -> bytes:
        parsed = loads(body)
        if not isinstance(parsed, dict) or "result" not in parsed:
            return body
        result = parsed["result"]
        clamped = self.monotonic_head(result)
        if clamped is result:
            return body
        parsed["result"] = clamped
        return orjson.dumps(parsed)

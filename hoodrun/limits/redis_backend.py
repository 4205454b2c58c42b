"""``RedisLimiter``: GCRA buckets in Redis, one limit shared by every gateway process.

Each decision is one Lua script (``gcra.lua``, sent by EVALSHA; redis-py reloads it after a
``NOSCRIPT``) that reads and charges all of the decision's buckets atomically, on the Redis
server's clock, so processes on different hosts neither race nor disagree about time. Keys are
``{prefix}:rl:{bucket.key}`` and expire when their bucket is full again. All keys of a decision
must live on one server (plain Redis or a sentinel pair; not Redis Cluster).

When Redis cannot answer (refused, reset, slower than ``timeout``, an error reply), ``acquire``
raises ``LimiterUnavailable`` and the gateway fails open: a Redis outage degrades limits, never the
platform. Redis counts as *down* when a decision fails and no other decision of this limiter got
an answer while it waited; then the limiter does not touch Redis for ``cooldown`` seconds and
raises at once, so a dead or black-holed Redis costs requests nothing but the first ``timeout``.
A decision that fails while others succeed (it queued too long for a connection under load)
raises alone and starts no cooldown: a load spike must not switch the limits off for everyone.

Give the limiter a client on a ``redis.asyncio.BlockingConnectionPool``: redis-py's default pool
raises ``MaxConnectionsError`` as soon as more than ``max_connections`` (100) decisions are in
flight, which would fail open exactly under load. That error raises ``LimiterUnavailable`` too,
but without the cooldown, since Redis itself is fine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import MaxConnectionsError, RedisError

from hoodrun.limits._resp import RespClient
from hoodrun.limits.bucket import Bucket, Decision, new_decision
from hoodrun.limits.exceptions import LimiterClosed, LimiterUnavailable

__all__ = ["RedisLimiter"]

_SCRIPT = files("hoodrun.limits").joinpath("gcra.lua").read_text(encoding="utf-8")
_ALLOW_EMPTY = Decision(True, 0, 0, 0.0, 0.0, None)


class RedisLimiter:
    """Shared limiter on ``client``; the client is borrowed, and ``aclose`` leaves it open.

    ``timeout`` (seconds, ``None`` for none) bounds one decision including redis-py's own
    reconnect retries; ``clock`` only times the ``cooldown`` (decisions use Redis time).
    """

    def __init__(
        self,
        client: Redis | RespClient,
        prefix: str,
        *,
        timeout: float | None = 0.5,
        cooldown: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key_prefix = f"{prefix}:rl:"
        # Both clients' scripts are awaited as ``script(keys=..., args=...)``.
        self._script: Any = client.register_script(_SCRIPT)
        self._timeout = timeout
        self._cooldown = cooldown
        self._clock = clock
        self._down_until = 0.0
        self._answers = 0  # decisions answered so far: "did Redis answer anyone meanwhile?"
        self._closed = False

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> Decision:
        if self._closed:
            raise LimiterClosed
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost!r}")
        if not buckets:
            return _ALLOW_EMPTY
        if self._down_until:
            wait = self._down_until - self._clock()
            if wait > 0:
                raise LimiterUnavailable(f"Redis rate limiter unavailable; retrying in {wait:.2f}s")
            self._down_until = 0.0
        prefix = self._key_prefix
        keys = [prefix + bucket.key for bucket in buckets]
        args: list[float | int] = [cost]
        for bucket in buckets:
            args.append(bucket.rate)
            args.append(bucket.capacity)
        answers = self._answers
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._script(keys=keys, args=args)
        except MaxConnectionsError as exc:
            # This process is busy, Redis is not down: no cooldown.
            raise LimiterUnavailable(
                "Redis connection pool exhausted; give the limiter a BlockingConnectionPool"
            ) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            if self._answers == answers:
                self._down_until = self._clock() + self._cooldown
            raise LimiterUnavailable(f"Redis rate limiter unavailable: {exc!r}") from exc
        self._answers += 1
        allowed, index, limit, remaining, reset_after, retry_after = reply
        return new_decision(
            allowed == 1,
            int(limit),
            int(remaining),
            float(reset_after),
            float(retry_after),
            None if allowed == 1 else buckets[int(index) - 1].key,
        )

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> RedisLimiter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

"""Limiter fixtures: one harness per backend, so the behaviour tests run against both."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from hoodrun.limits import MemoryLimiter, RedisLimiter
from hoodrun.limits._resp import RespClient

from .support import REDIS_URL, FakeClock, Harness


@pytest.fixture(params=["memory", "redis", "redis-lean"])
async def harness(
    request: pytest.FixtureRequest, redis_client: Redis, redis_prefix: str
) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()
        limiter = MemoryLimiter(clock=clock)
        yield Harness("memory", limiter, clock)
        await limiter.aclose()
    elif request.param == "redis":
        redis_limiter = RedisLimiter(redis_client, redis_prefix)
        yield Harness("redis", redis_limiter)
        await redis_limiter.aclose()
    else:
        # The gateway's own path: the same script through the lean pipelined client.
        lean = RespClient(REDIS_URL)
        redis_limiter = RedisLimiter(lean, redis_prefix)
        yield Harness("redis", redis_limiter)
        await redis_limiter.aclose()
        await lean.aclose()

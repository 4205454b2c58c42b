"""Helpers shared by the limiter tests (a fake clock, and a harness over either backend)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from hoodrun.limits import Bucket, Decision, Limiter

REDIS_URL = os.environ.get("HOODRUN_TEST_REDIS", "redis://127.0.0.1:6379/0")

# Slow enough that a test's own run time refills nothing that matters (0.001 tokens a second
# is below a whole token for 1000 s), so Redis tests can count exactly on the server's clock.
SLOW = 0.001


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@dataclass
class Harness:
    """A limiter plus the way time passes for it: a fake clock, or Redis's real one."""

    name: str
    limiter: Limiter
    clock: FakeClock | None = None

    async def acquire(self, buckets: Sequence[Bucket], cost: int = 1) -> Decision:
        return await self.limiter.acquire(buckets, cost)

    async def poll_until_allowed(
        self, buckets: Sequence[Bucket], cost: int = 1, *, deadline: float = 5.0
    ) -> tuple[Decision, int]:
        """Retry every few milliseconds until admitted; returns the decision and the attempts.

        The memory backend's clock is moved instead of slept on; Redis refills on its own.
        """
        step = 0.005
        give_up = time.monotonic() + deadline
        waited = 0.0
        attempts = 0
        while True:
            attempts += 1
            decision = await self.acquire(buckets, cost)
            if decision.allowed:
                return decision, attempts
            if self.clock is not None:
                if waited > deadline:
                    raise AssertionError(f"not allowed within {deadline}s of fake time")
                self.clock.advance(step)
                waited += step
            else:
                if time.monotonic() > give_up:
                    raise AssertionError(f"not allowed within {deadline}s")
                await asyncio.sleep(step)

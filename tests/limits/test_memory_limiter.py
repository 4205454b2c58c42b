"""MemoryLimiter specifics: exact timing on a fake clock, eviction, the synchronous hot path."""

from __future__ import annotations

import math

import pytest

from hoodrun.limits import Bucket, Decision, MemoryLimiter
from hoodrun.limits.bucket import new_decision

from .support import SLOW, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_retry_after_is_exactly_the_wait(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    bucket = Bucket("k:a", 4.0, 3)
    for _ in range(3):
        assert limiter.acquire_now([bucket]).allowed
    denied = limiter.acquire_now([bucket], cost=2)
    assert denied.retry_after == pytest.approx(0.5)
    assert denied.reset_after == pytest.approx(0.75)

    clock.advance(0.45)
    assert not limiter.acquire_now([bucket], cost=2).allowed
    clock.advance(0.05)
    assert limiter.acquire_now([bucket], cost=2).allowed


def test_reset_after_is_when_the_bucket_is_full(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    bucket = Bucket("k:a", 3.0, 9)
    decision = limiter.acquire_now([bucket], cost=7)
    assert decision.reset_after == pytest.approx(7 / 3)

    clock.advance(decision.reset_after)
    assert limiter.acquire_now([bucket], cost=0).remaining == 9
    assert len(limiter) == 1  # full, but kept until the next sweep


async def test_async_acquire_is_acquire_now(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    bucket = Bucket("k:a", SLOW, 2)
    assert await limiter.acquire([bucket]) == Decision(True, 2, 1, 1000.0, 0.0, None)
    assert limiter.acquire_now([bucket]) == Decision(True, 2, 0, 2000.0, 0.0, None)


def test_fast_decision_is_an_ordinary_decision() -> None:
    fast = new_decision(False, 5, 0, 1.5, 0.25, "c:eth")
    slow = Decision(False, 5, 0, 1.5, 0.25, "c:eth")
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    with pytest.raises(AttributeError):
        fast.allowed = True  # type: ignore[misc]


def test_idle_buckets_are_swept(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock)
    for i in range(3000):
        limiter.acquire_now([Bucket(f"ip:old-{i}", 1.0, 5)])
    clock.advance(1.0)  # every old bucket is full again
    for i in range(3000):
        limiter.acquire_now([Bucket(f"ip:new-{i}", 1.0, 5)])
    assert len(limiter) == 3000  # only the new ones


def test_busy_buckets_stay_bounded_forgetting_the_fullest(clock: FakeClock) -> None:
    limiter = MemoryLimiter(clock=clock, max_buckets=50)
    hot = Bucket("k:hot", SLOW, 10)
    limiter.acquire_now([hot], cost=9)
    for i in range(500):
        limiter.acquire_now([Bucket(f"ip:{i}", SLOW, 10)])
        assert len(limiter) <= 50
    # The nearly empty bucket outlived the ones that had spent a single token.
    assert limiter.acquire_now([hot], cost=0).remaining == 1


def test_a_clock_at_zero_and_huge_costs_work() -> None:
    clock = FakeClock(start=0.0)
    limiter = MemoryLimiter(clock=clock)
    bucket = Bucket("k:a", 1e6, 10**9)
    assert limiter.acquire_now([bucket], cost=10**9).allowed
    denied = limiter.acquire_now([bucket])
    assert denied.retry_after == pytest.approx(1e-6)
    assert math.isclose(denied.reset_after, 1000.0)


def test_max_buckets_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_buckets"):
        MemoryLimiter(max_buckets=0)


def test_per_window_spreads_the_limit_over_the_window() -> None:
    assert Bucket.per_window("km:a", 60, 60) == Bucket("km:a", 1.0, 60)
    assert Bucket.per_window("kh:a", 7200, 3600).rate == 2.0
    with pytest.raises(ValueError, match="window"):
        Bucket.per_window("k", 1, 0)


@pytest.mark.parametrize(
    ("key", "rate", "capacity"),
    [
        ("", 1.0, 1),
        ("k", 0.0, 1),
        ("k", -1.0, 1),
        ("k", float("nan"), 1),
        ("k", float("inf"), 1),
        ("k", 1.0, 0),
    ],
)
def test_bucket_refuses_nonsense(key: str, rate: float, capacity: int) -> None:
    with pytest.raises(ValueError, match="Bucket"):
        Bucket(key, rate, capacity)

"""Decision semantics, run against both backends (``harness`` is parametrized)."""

from __future__ import annotations

import pytest

from hoodrun.limits import Bucket, Decision, LimiterClosed

from .support import SLOW, Harness

# Redis decides on its own clock, so durations there are checked within this many seconds.
TIME_SLACK = 2.0


def slow(key: str, capacity: int, rate: float = SLOW) -> Bucket:
    return Bucket(key, rate, capacity)


async def test_burst_admits_exactly_capacity_then_denies(harness: Harness) -> None:
    bucket = slow("k:key_abc", 5)
    decisions = [await harness.acquire([bucket]) for _ in range(8)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 for d in decisions)
    assert all(d.bucket is None and d.retry_after == 0 for d in decisions[:5])
    denied = decisions[-1]
    assert denied.bucket == "k:key_abc"
    assert denied.remaining == 0
    # One token comes back every 1/SLOW = 1000 s; the bucket is full after 5 of them.
    assert 1000 - TIME_SLACK < denied.retry_after <= 1000
    assert 5000 - TIME_SLACK < denied.reset_after <= 5000


async def test_denial_charges_no_bucket(harness: Harness) -> None:
    wide, narrow = slow("k:a", 5), slow("kc:a:eth", 2)
    results = [(await harness.acquire([wide, narrow])).allowed for _ in range(4)]
    assert results == [True, True, False, False]

    # `wide` paid for the two admitted requests only: three tokens are left.
    alone = [await harness.acquire([wide]) for _ in range(4)]
    assert [d.allowed for d in alone] == [True, True, True, False]
    assert [d.remaining for d in alone[:3]] == [2, 1, 0]


async def test_denial_names_the_bucket_with_the_longest_wait(harness: Harness) -> None:
    soon, later = slow("ip:1.2.3.4", 1), slow("c:eth", 1, rate=SLOW / 10)
    await harness.acquire([soon])
    await harness.acquire([later])

    for order in ([soon, later], [later, soon]):
        decision = await harness.acquire(order)
        assert not decision.allowed
        assert decision.bucket == "c:eth"
        assert 10_000 - TIME_SLACK < decision.retry_after <= 10_000


async def test_denial_names_the_only_empty_bucket(harness: Harness) -> None:
    full, empty = slow("k:a", 10), slow("c:eth", 1)
    await harness.acquire([empty])

    decision = await harness.acquire([full, empty])
    assert (decision.allowed, decision.bucket, decision.limit) == (False, "c:eth", 1)


async def test_headers_describe_the_tightest_bucket(harness: Harness) -> None:
    roomy, tight = slow("k:a", 100), slow("c:eth", 3)

    first = await harness.acquire([roomy, tight])
    assert (first.limit, first.remaining) == (3, 2)
    assert 1000 - TIME_SLACK < first.reset_after <= 1000

    # The same bucket stays the tightest until it runs out.
    second = await harness.acquire([tight, roomy])
    assert (second.limit, second.remaining) == (3, 1)


async def test_cost_above_one(harness: Harness) -> None:
    bucket = slow("k:a", 10)
    costs = [4, 4, 4, 2]
    decisions = [await harness.acquire([bucket], cost) for cost in costs]

    assert [d.allowed for d in decisions] == [True, True, False, True]
    assert [d.remaining for d in decisions] == [6, 2, 2, 0]
    denied = decisions[2]
    assert denied.bucket == "k:a"
    # Two tokens short at 1000 s a token.
    assert 2000 - TIME_SLACK < denied.retry_after <= 2000


async def test_cost_above_capacity_is_denied_without_charging(harness: Harness) -> None:
    roomy, small = slow("k:a", 100), slow("c:eth", 3)

    decision = await harness.acquire([roomy, small], cost=5)
    assert not decision.allowed
    assert decision.bucket == "c:eth"
    assert decision.limit == 3 < 5  # how callers tell "too large" from "too soon"
    assert decision.remaining == 3
    assert decision.retry_after == 0  # computed for the capacity: `small` is already full

    after = await harness.acquire([roomy])
    assert after.remaining == 99

    await harness.acquire([small])
    again = await harness.acquire([roomy, small], cost=5)
    assert again.bucket == "c:eth"
    assert 1000 - TIME_SLACK < again.retry_after <= 1000  # until `small` is full again


async def test_cost_zero_peeks_without_charging(harness: Harness) -> None:
    bucket = slow("k:a", 4)
    peek = await harness.acquire([bucket], cost=0)
    assert (peek.allowed, peek.remaining, peek.limit) == (True, 4, 4)

    await harness.acquire([bucket], cost=3)
    for _ in range(3):
        assert (await harness.acquire([bucket], cost=0)).remaining == 1


async def test_no_buckets_is_allowed(harness: Harness) -> None:
    assert await harness.acquire([]) == Decision(True, 0, 0, 0.0, 0.0, None)


async def test_negative_cost_is_refused(harness: Harness) -> None:
    with pytest.raises(ValueError, match="cost"):
        await harness.acquire([slow("k:a", 1)], cost=-1)


async def test_buckets_are_independent(harness: Harness) -> None:
    a, b = slow("k:a", 1), slow("k:b", 1)
    assert (await harness.acquire([a])).allowed
    assert not (await harness.acquire([a])).allowed
    assert (await harness.acquire([b])).allowed


async def test_refill_admits_again(harness: Harness) -> None:
    # Two tokens a second: refilling one takes 0.5 s, far longer than two calls in a row.
    bucket = Bucket("k:a", 2.0, 1)
    assert (await harness.acquire([bucket])).allowed
    denied = await harness.acquire([bucket])
    assert not denied.allowed
    assert 0 < denied.retry_after <= 0.5

    decision, attempts = await harness.poll_until_allowed([bucket])
    assert decision.allowed
    assert attempts > 1
    assert not (await harness.acquire([bucket])).allowed


async def test_closed_limiter_refuses(harness: Harness) -> None:
    await harness.limiter.aclose()
    with pytest.raises(LimiterClosed):
        await harness.acquire([slow("k:a", 1)])

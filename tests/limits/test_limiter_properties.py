"""Property tests of the GCRA rules on MemoryLimiter with a fake clock.

The Redis script is the same algorithm; the behaviour suite pins the two backends together.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hoodrun.limits import Bucket, Decision, MemoryLimiter
from hoodrun.limits.bucket import TOKEN_EPSILON

from .support import FakeClock

# The limiter may admit TOKEN_EPSILON of a token early; anything beyond that plus float noise
# would be a real over-admission.
SLACK = TOKEN_EPSILON + 1e-6

rates = st.floats(min_value=0.01, max_value=100.0, allow_nan=False, allow_infinity=False)
bucket_lists = st.lists(
    st.tuples(rates, st.integers(min_value=1, max_value=50)), min_size=1, max_size=3
).map(lambda specs: [Bucket(f"b{i}", rate, cap) for i, (rate, cap) in enumerate(specs)])
advances = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=200.0),
)
ops = st.lists(
    st.tuples(advances, st.integers(min_value=0, max_value=60), st.booleans()), max_size=60
)
starts = st.floats(min_value=0.0, max_value=1e6)


def peek(limiter: MemoryLimiter, bucket: Bucket) -> Decision:
    return limiter.acquire_now([bucket], cost=0)


@settings(max_examples=150, deadline=None)
@given(buckets=bucket_lists, ops=ops, start=starts)
def test_admissions_never_exceed_burst_plus_refill(
    buckets: list[Bucket], ops: list[tuple[float, int, bool]], start: float
) -> None:
    """Any window [t0, t1] admits at most capacity + rate * (t1 - t0) per bucket; a denial
    charges nothing; an allowed request charges every bucket; waiting retry_after suffices."""
    clock = FakeClock(start)
    limiter = MemoryLimiter(clock=clock)
    admitted: list[tuple[float, int]] = []

    for advance, cost, honour_retry in ops:
        clock.advance(advance)
        before = [peek(limiter, b) for b in buckets]
        decision = limiter.acquire_now(buckets, cost)
        after = [peek(limiter, b) for b in buckets]

        if decision.allowed:
            admitted.append((clock.now, cost))
            assert decision.bucket is None
            assert decision.retry_after == 0
            assert decision.remaining == min(a.remaining for a in after) or cost == 0
            for bucket, old, new in zip(buckets, before, after, strict=True):
                charged = (new.reset_after - old.reset_after) * bucket.rate
                assert abs(charged - cost) < 1e-6 * max(1.0, bucket.capacity)
            continue

        assert after == before  # all or nothing
        named = next(b for b in buckets if b.key == decision.bucket)
        assert decision.limit == named.capacity
        if cost > named.capacity:
            # The first bucket that can never hold `cost` is the one named.
            assert all(cost <= b.capacity for b in buckets[: buckets.index(named)])
            assert decision.retry_after == decision.reset_after
            continue
        assert all(cost <= b.capacity for b in buckets)
        assert decision.retry_after > 0
        # The named bucket alone denies for just as long (and, denying, charges nothing).
        assert limiter.acquire_now([named], cost) == decision
        if honour_retry:
            clock.advance(decision.retry_after)
            assert limiter.acquire_now(buckets, cost).allowed
            admitted.append((clock.now, cost))

    for bucket in buckets:
        for i, (t0, _) in enumerate(admitted):
            total = 0
            for t, cost in admitted[i:]:
                total += cost
                assert total <= bucket.capacity + bucket.rate * (t - t0) + SLACK


@settings(max_examples=100, deadline=None)
@given(buckets=bucket_lists, ops=ops, start=starts, data=st.data())
def test_a_burst_within_capacity_after_idle_is_always_allowed(
    buckets: list[Bucket], ops: list[tuple[float, int, bool]], start: float, data: st.DataObject
) -> None:
    clock = FakeClock(start)
    limiter = MemoryLimiter(clock=clock)
    for advance, cost, _ in ops:
        clock.advance(advance)
        limiter.acquire_now(buckets, cost)

    clock.advance(max(b.capacity / b.rate for b in buckets) + data.draw(advances))
    smallest = min(b.capacity for b in buckets)
    spent = 0
    for cost in data.draw(st.lists(st.integers(min_value=0, max_value=smallest), max_size=20)):
        if spent + cost > smallest:
            break
        spent += cost
        decision = limiter.acquire_now(buckets, cost)
        assert decision.allowed
        assert decision.remaining == min(b.capacity for b in buckets) - spent

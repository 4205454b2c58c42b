"""The job queue on SQLite and PostgreSQL: order, idempotency, backoff, dead letters, leases."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from hoodrun.jobs import (
    HIGH,
    JobNotFound,
    JobQueue,
    JobStateError,
    LeaseLost,
    UnknownJobKind,
)
from hoodrun.store import Store, read_audit
from hoodrun.store.tables import jobs
from tests._stores import FakeClock
from tests.jobs._helpers import TEST_POLICIES, make_queue


@pytest.fixture
def queue(store: Store, clock: FakeClock) -> JobQueue:
    return make_queue(store, clock, seed=42)


async def _count(store: Store) -> int:
    async with store.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(jobs))).scalar_one()


async def test_claims_by_priority_then_run_at_then_creation(
    queue: JobQueue, clock: FakeClock
) -> None:
    low = await queue.enqueue("report-generate")
    first = await queue.enqueue("invoice-generate", {"n": 1})
    high = await queue.enqueue("payment-process")
    second = await queue.enqueue("invoice-generate", {"n": 2})
    earlier = await queue.enqueue("invoice-generate", run_at=clock.now - timedelta(minutes=1))
    boosted = await queue.enqueue("report-generate", priority=HIGH + 1)
    claimed = await queue.claim("w1", limit=10)
    assert [job.id for job in claimed] == [
        boosted.id, high.id, earlier.id, first.id, second.id, low.id,
    ]  # fmt: skip
    assert {job.status for job in claimed} == {"running"}
    assert all(job.attempts == 1 and job.locked_by == "w1" for job in claimed)
    assert await queue.claim("w2", limit=10) == []


async def test_a_job_waits_for_its_run_at(queue: JobQueue, clock: FakeClock) -> None:
    job = await queue.enqueue("fx-fetch", run_at=clock.now + timedelta(minutes=5))
    assert await queue.claim("w1") == []
    clock.advance(timedelta(minutes=5))
    assert [claimed.id for claimed in await queue.claim("w1")] == [job.id]


async def test_claim_takes_only_the_kinds_asked(queue: JobQueue) -> None:
    await queue.enqueue("payment-process")
    fx = await queue.enqueue("fx-fetch")
    assert [job.id for job in await queue.claim("w1", limit=5, kinds=["fx-fetch"])] == [fx.id]
    assert await queue.claim("w1", kinds=[]) == []


async def test_an_idempotency_key_makes_one_job(queue: JobQueue, store: Store) -> None:
    first = await queue.enqueue("invoice-generate", {"invoice": "a"}, idempotency_key="inv:a")
    again = await queue.enqueue("invoice-generate", {"invoice": "b"}, idempotency_key="inv:a")
    assert again.id == first.id and again.payload == {"invoice": "a"}
    racing = await asyncio.gather(
        *(queue.enqueue("invoice-generate", idempotency_key="inv:race") for _ in range(8))
    )
    assert len({job.id for job in racing}) == 1
    assert await _count(store) == 2
    assert (await queue.by_key("inv:race")) == racing[0]
    # A finished job keeps its key: the work it names was asked for once.
    [claimed] = await queue.claim("w1", kinds=["invoice-generate"])
    await queue.complete(claimed, "w1")
    assert (await queue.enqueue("invoice-generate", idempotency_key="inv:a")).status == "done"


async def test_enqueue_in_commits_with_the_callers_transaction(
    queue: JobQueue, store: Store
) -> None:
    async with store.transaction() as conn:
        made = await queue.enqueue_in(conn, "invoice-generate", {"i": 1}, idempotency_key="k1")
        assert made is not None
        assert await queue.enqueue_in(conn, "invoice-generate", {}, idempotency_key="k1") is None

    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with store.transaction() as conn:
            await queue.enqueue_in(conn, "invoice-generate", {"i": 2}, idempotency_key="k2")
            raise Abort
    assert [job.idempotency_key for job in await queue.list()] == ["k1"]


async def test_unknown_kinds_and_bad_payloads_are_refused(queue: JobQueue) -> None:
    with pytest.raises(UnknownJobKind, match=r"unknown job kind 'nope': use one of .*fx-fetch"):
        await queue.enqueue("nope")
    with pytest.raises(ValueError, match="payload must be JSON"):
        await queue.enqueue("fx-fetch", {"when": object()})
    with pytest.raises(ValueError, match="idempotency key"):
        await queue.enqueue("fx-fetch", idempotency_key="x" * 129)


async def test_failures_back_off_with_full_jitter(queue: JobQueue, clock: FakeClock) -> None:
    expected = random.Random(42)  # the queue's rng: same seed, same draws
    job = await queue.enqueue("payment-process")
    for attempt, ceiling in ((1, 5.0), (2, 10.0), (3, 20.0)):
        [claimed] = await queue.claim("w1")
        assert claimed.attempts == attempt
        failed = await queue.fail(claimed, "w1", "provider down")
        delay = timedelta(seconds=expected.uniform(0.0, ceiling))
        assert failed.status == "queued" and failed.last_error == "provider down"
        assert failed.run_at == clock.now + delay
        clock.advance(delay - timedelta(microseconds=1))
        assert await queue.claim("w1") == []
        clock.advance(timedelta(microseconds=1))
    assert [j.id for j in await queue.claim("w1")] == [job.id]


async def test_backoff_is_capped() -> None:
    queue = JobQueue(
        None,  # type: ignore[arg-type]  # backoff never touches the store
        rng=random.Random(3),
        backoff_base=5.0,
        backoff_cap=60.0,
    )
    assert all(0.0 <= queue.backoff(attempt) <= 60.0 for attempt in range(1, 200))
    assert max(queue.backoff(50) for _ in range(200)) > 30.0


async def test_dead_after_max_attempts_then_retried(
    queue: JobQueue, clock: FakeClock, store: Store
) -> None:
    job = await queue.enqueue("invoice-generate")  # 3 attempts
    for _ in range(3):
        [claimed] = await queue.claim("w1")
        failed = await queue.fail(claimed, "w1", f"attempt {claimed.attempts} failed")
        clock.advance(timedelta(hours=2))
    assert failed.status == "dead" and failed.attempts == 3
    assert failed.last_error == "attempt 3 failed"
    assert failed.finished_at == clock.now - timedelta(hours=2)
    assert await queue.claim("w1") == []
    retried = await queue.retry(job.id, actor="cli:ops")
    assert (retried.status, retried.attempts, retried.run_at) == ("queued", 0, clock.now)
    assert retried.finished_at is None
    with pytest.raises(JobStateError, match="is queued: only dead or cancelled jobs can be"):
        await queue.retry(job.id)
    with pytest.raises(JobNotFound):
        await queue.retry("job_missing")
    async with store.connect() as conn:
        [entry] = await read_audit(conn, target_id=job.id)
    assert (entry.actor, entry.action) == ("cli:ops", "job.retry")
    [claimed] = await queue.claim("w1")
    assert claimed.attempts == 1


async def test_retry_dead_requeues_every_dead_letter(queue: JobQueue) -> None:
    for kind in ("fx-fetch", "fx-fetch", "reconcile"):
        await queue.enqueue(kind)
    for claimed in await queue.claim("w1", limit=3):
        await queue.fail(claimed, "w1", "bad data", permanent=True)
    assert await queue.retry_dead(kind="reconcile") == 1
    assert await queue.retry_dead() == 2
    assert {job.status for job in await queue.list()} == {"queued"}


async def test_permanent_failures_and_retry_in(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue("payment-process")
    await queue.enqueue("refund-process")
    first, second = await queue.claim("w1", limit=2)
    dead = await queue.fail(first, "w1", "card declined", permanent=True)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 1, "card declined")
    later = await queue.fail(second, "w1", "rate limited", retry_in=90)
    assert later.status == "queued" and later.run_at == clock.now + timedelta(seconds=90)
    long_error = await queue.enqueue("fx-fetch")
    [claimed] = await queue.claim("w1", kinds=["fx-fetch"])
    assert len((await queue.fail(claimed, "w1", "x" * 5000)).last_error or "") == 2000
    assert long_error.id == claimed.id


async def test_an_expired_lease_is_claimed_by_another_worker(
    queue: JobQueue, clock: FakeClock
) -> None:
    job = await queue.enqueue("payment-process")  # 120 s timeout; the lease is 60 s whatever it is
    [held] = await queue.claim("w1")
    assert held.locked_until == clock.now + timedelta(seconds=60)
    clock.advance(timedelta(seconds=60))
    assert await queue.claim("w2") == []  # expires after locked_until, not at it
    clock.advance(timedelta(seconds=1))
    [taken] = await queue.claim("w2")
    assert (taken.id, taken.locked_by, taken.attempts) == (job.id, "w2", 2)
    assert taken.last_error == "lease expired: worker w1 stopped during attempt 1"
    assert await queue.heartbeat(held, "w1") is False
    with pytest.raises(LeaseLost, match="no longer held by worker w1"):
        await queue.complete(held, "w1")
    with pytest.raises(LeaseLost):
        await queue.fail(held, "w1", "late")
    assert (await queue.complete(taken, "w2", {"paid": True})).result == {"paid": True}


async def test_an_expired_lease_on_the_last_attempt_is_dead(
    queue: JobQueue, clock: FakeClock
) -> None:
    job = await queue.enqueue("once")  # one attempt
    await queue.claim("w1")
    clock.advance(timedelta(minutes=5))
    assert await queue.claim("w2") == []
    dead = await queue.get(job.id)
    assert dead is not None and dead.status == "dead" and dead.locked_by is None
    assert dead.last_error == "lease expired: worker w1 stopped during attempt 1, the last"


async def test_heartbeats_keep_the_lease(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue("payment-process")
    [held] = await queue.claim("w1")
    for _ in range(6):  # past the job's 120 s timeout: the worker enforces that, not the lease
        clock.advance(timedelta(seconds=50))
        assert await queue.heartbeat(held, "w1") is True
        assert await queue.claim("w2") == []
    renewed = await queue.get(held.id)
    assert renewed is not None and renewed.locked_until == clock.now + timedelta(seconds=60)


async def test_release_gives_the_attempt_back(queue: JobQueue, clock: FakeClock) -> None:
    await queue.enqueue("invoice-generate")
    [held] = await queue.claim("w1")
    released = await queue.release(held, "w1")
    assert (released.status, released.attempts, released.locked_by) == ("queued", 0, None)
    assert [job.attempts for job in await queue.claim("w2")] == [1]


async def test_cancel(queue: JobQueue, clock: FakeClock) -> None:
    waiting = await queue.enqueue("fx-fetch", run_at=clock.now + timedelta(hours=1))
    assert (await queue.cancel(waiting.id)).status == "cancelled"
    await queue.enqueue("reconcile")
    [running] = await queue.claim("w1")
    cancelled = await queue.cancel(running.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at == clock.now
    assert await queue.heartbeat(running, "w1") is False
    with pytest.raises(JobStateError, match="is cancelled: only queued or running or dead"):
        await queue.cancel(running.id)
    assert (await queue.retry(running.id)).status == "queued"


async def test_prune_deletes_old_finished_jobs_only(
    queue: JobQueue, clock: FakeClock, store: Store
) -> None:
    for kind in ("fx-fetch", "reconcile", "ledger-export"):
        await queue.enqueue(kind)
    held = {job.kind: job for job in await queue.claim("w1", limit=3)}
    await queue.complete(held["fx-fetch"], "w1")
    dead = await queue.fail(held["reconcile"], "w1", "broken", permanent=True)
    await queue.cancel(held["ledger-export"].id)
    clock.advance(timedelta(days=31))
    recent = await queue.enqueue("fx-fetch", idempotency_key="recent")
    [claimed] = await queue.claim("w1")
    await queue.complete(claimed, "w1")
    assert await queue.prune(clock.now - timedelta(days=30)) == 2
    assert {job.id for job in await queue.list()} == {dead.id, recent.id}


async def test_list_and_counts(queue: JobQueue) -> None:
    for kind in ("fx-fetch", "fx-fetch", "reconcile"):
        await queue.enqueue(kind)
    [claimed] = await queue.claim("w1", kinds=["reconcile"])
    await queue.complete(claimed, "w1")
    assert await queue.counts() == {("fx-fetch", "queued"): 2, ("reconcile", "done"): 1}
    assert [job.kind for job in await queue.list(status="queued")] == ["fx-fetch", "fx-fetch"]
    assert len(await queue.list(kind="fx-fetch", limit=1)) == 1
    newest_first = await queue.list()
    assert newest_first[0].kind == "reconcile"


async def test_outcomes_are_counted_in_prometheus(queue: JobQueue) -> None:
    def sample(outcome: str) -> float:
        labels = {"kind": "fast", "outcome": outcome}
        return REGISTRY.get_sample_value("hoodrun_jobs_total", labels) or 0.0

    before = {outcome: sample(outcome) for outcome in ("done", "retry", "dead")}
    for _ in range(3):
        await queue.enqueue("fast")
    first, second, third = await queue.claim("w1", limit=3)
    await queue.complete(first, "w1")
    await queue.fail(second, "w1", "again")
    await queue.fail(third, "w1", "never", permanent=True)
    assert {o: sample(o) - before[o] for o in before} == {"done": 1, "retry": 1, "dead": 1}


def test_policies_of_the_seed() -> None:
    policy = TEST_POLICIES["payment-process"]
    assert (policy.priority, policy.max_attempts, policy.timeout) == (HIGH, 5, 120.0)
    assert TEST_POLICIES["report-generate"].max_attempts == 1
    assert TEST_POLICIES["billing-sweep"].priority < TEST_POLICIES["period-close"].priority

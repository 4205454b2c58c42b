"""The worker on SQLite and PostgreSQL: handlers' outcomes, timeouts, schedules, the run loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from hoodrun.jobs import (
    BurstResult,
    Job,
    JobQueue,
    Permanent,
    Retry,
    Schedule,
    UnknownJobKind,
    Worker,
    every,
    slot_key,
)
from hoodrun.store import Store
from tests._stores import FakeClock
from tests.jobs._helpers import make_queue


@pytest.fixture
def queue(store: Store, clock: FakeClock) -> JobQueue:
    return make_queue(store, clock)


async def _until(condition: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _ok(job: Job) -> Mapping[str, Any]:
    return {"echo": job.payload.get("n")}


async def _broken(job: Job) -> None:
    raise RuntimeError("the provider said no")


async def _refused(job: Job) -> None:
    raise Permanent("invalid tax id")


async def test_burst_runs_what_is_due_and_counts_outcomes(
    queue: JobQueue, clock: FakeClock
) -> None:
    ok = [await queue.enqueue("invoice-generate", {"n": n}) for n in range(3)]
    broken = await queue.enqueue("payment-process")
    refused = await queue.enqueue("refund-process")
    later = await queue.enqueue("invoice-generate", run_at=clock.now + timedelta(hours=1))
    worker = Worker(
        queue,
        {"invoice-generate": _ok, "payment-process": _broken, "refund-process": _refused},
        concurrency=2,
    )
    assert await worker.burst() == BurstResult(done=3, failed=1, dead=1)
    for n, job in enumerate(ok):
        done = await queue.get(job.id)
        assert done is not None and done.status == "done" and done.result == {"echo": n}
    retried = await queue.get(broken.id)
    assert retried is not None and retried.status == "queued" and retried.attempts == 1
    assert retried.last_error == "RuntimeError: the provider said no"
    assert retried.run_at > clock.now  # left for later: the burst does not retry it
    dead = await queue.get(refused.id)
    assert dead is not None and (dead.status, dead.last_error) == ("dead", "invalid tax id")
    waiting = await queue.get(later.id)
    assert waiting is not None and waiting.status == "queued" and waiting.attempts == 0
    assert await worker.burst() == BurstResult()


async def test_a_slow_handler_times_out_as_a_failed_attempt(queue: JobQueue) -> None:
    cancelled = asyncio.Event()

    async def slow(job: Job) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    job = await queue.enqueue("fast")  # 0.3 s timeout, 3 attempts
    before = REGISTRY.get_sample_value("hoodrun_job_duration_seconds_count", {"kind": "fast"})
    assert await Worker(queue, {"fast": slow}).burst() == BurstResult(failed=1)
    assert cancelled.is_set()
    failed = await queue.get(job.id)
    assert failed is not None and failed.last_error == "timed out after 0.3 s"
    after = REGISTRY.get_sample_value("hoodrun_job_duration_seconds_count", {"kind": "fast"})
    assert (after or 0) - (before or 0) == 1


async def test_a_handlers_own_timeout_is_a_plain_failure(queue: JobQueue) -> None:
    async def times_out(job: Job) -> None:
        raise TimeoutError("upstream read timed out")

    job = await queue.enqueue("fast")
    assert await Worker(queue, {"fast": times_out}).burst() == BurstResult(failed=1)
    failed = await queue.get(job.id)
    assert failed is not None and failed.last_error == "TimeoutError: upstream read timed out"


async def test_retry_asks_for_a_delay_and_counts_an_attempt(
    queue: JobQueue, clock: FakeClock
) -> None:
    async def later(job: Job) -> None:
        raise Retry("invoice still pending at the provider", delay=120)

    job = await queue.enqueue("once")  # a single attempt: the Retry exhausts it
    other = await queue.enqueue("fast")
    worker = Worker(queue, {"once": later, "fast": later})
    assert await worker.burst() == BurstResult(failed=1, dead=1)
    retried = await queue.get(other.id)
    assert retried is not None and retried.run_at == clock.now + timedelta(seconds=120)
    assert retried.last_error == "invoice still pending at the provider"
    dead = await queue.get(job.id)
    assert dead is not None and dead.status == "dead"
    clock.advance(timedelta(seconds=120))
    assert await worker.burst() == BurstResult(failed=1)
    retried = await queue.get(other.id)
    assert retried is not None and retried.attempts == 2


async def test_results_that_are_not_json_are_dropped_not_failed(queue: JobQueue) -> None:
    async def odd(job: Job) -> Any:
        return {"at": object()}

    job = await queue.enqueue("fast")
    assert await Worker(queue, {"fast": odd}).burst() == BurstResult(done=1)
    done = await queue.get(job.id)
    assert done is not None and done.status == "done" and done.result is None


async def test_jobs_without_a_handler_stay_queued(queue: JobQueue) -> None:
    job = await queue.enqueue("report-generate")
    assert await Worker(queue, {"fast": _ok}).burst() == BurstResult()
    assert await Worker(queue, {}).burst() == BurstResult()
    waiting = await queue.get(job.id)
    assert waiting is not None and waiting.status == "queued"


async def test_schedules_enqueue_each_slot_once_across_workers(
    database_url: str, clock: FakeClock
) -> None:
    seen: list[str] = []

    async def fetch(job: Job) -> None:
        seen.append(job.payload["slot"])

    schedule = Schedule("fx", "fx-fetch", every(3600))
    async with Store(database_url) as one, Store(database_url) as two:
        workers = [
            Worker(make_queue(store, clock), {"fx-fetch": fetch}, schedules=[schedule])
            for store in (one, two)
        ]
        results = await asyncio.gather(*(worker.burst() for worker in workers))
        assert sum(result.done for result in results) == 1
        clock.advance(timedelta(minutes=59))
        assert [await worker.burst() for worker in workers] == [BurstResult()] * 2
        clock.advance(timedelta(minutes=1))
        results = await asyncio.gather(*(worker.burst() for worker in workers))
        assert sum(result.done for result in results) == 1
        slot = every(3600)(clock.now)
        job = await workers[0].queue.by_key(slot_key("fx", slot))
        assert job is not None and job.run_at == slot and job.status == "done"
    assert seen == [(slot - timedelta(hours=1)).isoformat(), slot.isoformat()]


async def test_the_run_loop_works_until_stopped(queue: JobQueue) -> None:
    in_flight = peak = 0

    async def tracked(job: Job) -> Mapping[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return {"n": job.payload["n"]}

    for n in range(20):
        await queue.enqueue("invoice-generate", {"n": n})
    stop = asyncio.Event()
    worker = Worker(queue, {"invoice-generate": tracked}, concurrency=3, poll_interval=0.05)
    running = asyncio.create_task(worker.run(stop))

    async def all_done() -> bool:
        return (await queue.counts()).get(("invoice-generate", "done"), 0) == 20

    try:
        await _until(all_done)
        late = await queue.enqueue("invoice-generate", {"n": 99})  # picked up by a later poll

        async def late_done() -> bool:
            job = await queue.get(late.id)
            return job is not None and job.status == "done"

        await _until(late_done)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert 1 <= peak <= 3


async def test_stopping_gives_unfinished_jobs_back(queue: JobQueue) -> None:
    started = asyncio.Event()

    async def endless(job: Job) -> None:
        started.set()
        await asyncio.Event().wait()

    job = await queue.enqueue("invoice-generate")
    stop = asyncio.Event()
    worker = Worker(queue, {"invoice-generate": endless}, poll_interval=0.05, grace=0.1)
    running = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(started.wait(), 20)
    stop.set()
    await asyncio.wait_for(running, 20)
    back = await queue.get(job.id)
    assert back is not None and (back.status, back.attempts, back.locked_by) == ("queued", 0, None)


async def test_a_cancelled_job_stops_its_handler(queue: JobQueue) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def endless(job: Job) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.set()
            raise

    job = await queue.enqueue("invoice-generate")
    stop = asyncio.Event()
    worker = Worker(
        queue, {"invoice-generate": endless}, poll_interval=0.05, heartbeat_interval=0.05
    )
    running = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(started.wait(), 20)
        await queue.cancel(job.id)
        await asyncio.wait_for(stopped.wait(), 20)
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
    cancelled = await queue.get(job.id)
    assert cancelled is not None and cancelled.status == "cancelled"


async def test_the_queued_gauge_and_pruning(queue: JobQueue, clock: FakeClock) -> None:
    for _ in range(2):
        await queue.enqueue("ledger-export", run_at=clock.now + timedelta(days=1))
    await queue.enqueue("fast")
    worker = Worker(queue, {"fast": _ok}, keep_done=timedelta(days=30))
    assert await worker.burst() == BurstResult(done=1)
    assert REGISTRY.get_sample_value("hoodrun_jobs_queued", {"kind": "ledger-export"}) == 2
    assert REGISTRY.get_sample_value("hoodrun_jobs_queued", {"kind": "fast"}) == 0
    clock.advance(timedelta(days=31))
    await worker.burst()
    assert [job.kind for job in await queue.list()] == ["ledger-export"] * 2


def test_a_worker_refuses_unknown_kinds(queue: JobQueue) -> None:
    with pytest.raises(UnknownJobKind, match="'nope'"):
        Worker(queue, {"nope": _ok})
    with pytest.raises(UnknownJobKind):
        Worker(queue, {}, schedules=[Schedule("s", "nope", every(60))])
    with pytest.raises(ValueError, match="unique"):
        Worker(queue, {}, schedules=[Schedule("s", "fx-fetch", every(60))] * 2)

"""The worker: claims due jobs, runs their handlers under a timeout and a lease, records outcomes.

``run(stop)`` polls until ``stop`` is set, then finishes the jobs in hand (up to ``grace``
seconds; those still running after it are interrupted and given back to the queue undone).
``burst()`` runs every job due when it starts and returns what happened, for cron-style use and
tests.

A handler is ``async def handler(job) -> Mapping | None``; what it returns is stored as the job's
result (JSON). It steers a failure by what it raises: ``Retry(reason, delay=...)`` asks to run
again later; ``Permanent`` sends the job to the dead letters at once; anything else is a failed
attempt retried with backoff. An attempt that outlives the kind's timeout is cancelled and
counts as failed. While a handler runs, a heartbeat renews the job's lease; if the lease is lost
(the job was cancelled, or the worker stalled so long that another took the job over), the
handler is cancelled and its outcome is not recorded.

Each outcome is logged on one line with the job's kind, id, attempt and error, never its payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError

from hoodrun.jobs.errors import LeaseLost, Permanent, Retry
from hoodrun.jobs.job import QUEUED, Job
from hoodrun.jobs.metrics import DURATION, QUEUED_JOBS
from hoodrun.jobs.queue import JobQueue
from hoodrun.jobs.schedule import Schedule
from hoodrun.store import StoreError

__all__ = ["BurstResult", "Handler", "Worker"]

log = logging.getLogger("hoodrun.jobs")

Handler = Callable[[Job], Awaitable[Mapping[str, Any] | None]]

# What the database may raise while it restarts or a connection drops; the worker waits it out.
_DB_ERRORS = (StoreError, DBAPIError)
_LOG_ERROR = 500  # characters of an error message in a log line
_PRUNE_EVERY = 3600.0  # seconds


@dataclass(frozen=True, slots=True)
class BurstResult:
    """What a burst did: attempts that finished the job, failed (to run again later), or failed
    for good (dead)."""

    done: int = 0
    failed: int = 0
    dead: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.dead


class _TimedOut(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"timed out after {seconds:g} s")


def _default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


def _short(error: str) -> str:
    return error if len(error) <= _LOG_ERROR else error[: _LOG_ERROR - 1] + "…"


class Worker:
    """Runs the jobs of the kinds in ``handlers`` (others stay queued for another worker) and
    enqueues ``schedules``' due slots.

    ``concurrency``: jobs at once. ``poll_interval``: seconds between polls when nothing is due.
    ``heartbeat_interval``: seconds between lease renewals (default: a third of the queue's lease
    margin). ``grace``: seconds to finish the jobs in hand once stopped. ``keep_done``: prune done
    and cancelled jobs older than this (hourly). ``gauge_interval``: seconds between refreshes of
    the queued-jobs gauge.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        schedules: Sequence[Schedule] = (),
        concurrency: int = 4,
        poll_interval: float = 1.0,
        worker_id: str | None = None,
        clock: Callable[[], datetime] | None = None,
        heartbeat_interval: float | None = None,
        grace: float = 30.0,
        keep_done: timedelta | None = None,
        gauge_interval: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("a worker runs at least one job at a time (concurrency >= 1)")
        if poll_interval <= 0 or grace < 0 or gauge_interval <= 0:
            raise ValueError("poll_interval and gauge_interval must be > 0, grace >= 0")
        for kind in handlers:
            queue.policy(kind)  # UnknownJobKind names the known kinds
        names = [schedule.name for schedule in schedules]
        if len(names) != len(set(names)):
            raise ValueError(f"schedule names must be unique: {names}")
        for schedule in schedules:
            queue.policy(schedule.kind)
        self.queue = queue
        self.worker_id = worker_id or _default_worker_id()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval or queue.lease_margin / 3
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0 seconds")
        self.grace = grace
        self.keep_done = keep_done
        self.gauge_interval = gauge_interval
        self._handlers = dict(handlers)
        self._kinds = tuple(self._handlers)
        self._schedules = tuple(schedules)
        self._clock = clock or queue.clock
        self._slots: dict[str, datetime] = {}  # the last slot enqueued, per schedule
        self._next_gauge = 0.0
        self._next_prune = 0.0

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id} kinds={list(self._kinds)}>"

    # --- the loops -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and run jobs until ``stop`` is set; then finish the jobs in hand."""
        running: dict[asyncio.Task[str], Job] = {}
        wake = asyncio.Event()  # a job finished: a slot is free

        def finished(task: asyncio.Task[str]) -> None:
            running.pop(task, None)
            wake.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("job task failed", exc_info=task.exception())

        log.info("job worker %s running %s", self.worker_id, ", ".join(self._kinds) or "no kinds")
        try:
            while not stop.is_set():
                wake.clear()
                free = self.concurrency - len(running)
                batch: list[Job] = []
                try:
                    await self._housekeeping()
                    await self._enqueue_schedules()
                    if free > 0 and self._kinds:
                        batch = await self.queue.claim(
                            self.worker_id, limit=free, kinds=self._kinds
                        )
                except _DB_ERRORS as exc:
                    log.warning(
                        "job queue unavailable, polling again in %g s: %s", self.poll_interval, exc
                    )
                for job in batch:
                    task = asyncio.create_task(self._run_job(job), name=f"job {job.id}")
                    running[task] = job
                    task.add_done_callback(finished)
                if batch and len(batch) == free:
                    continue  # more may be due: claim again once a slot frees up
                await self._pause(stop, wake)
        finally:
            await self._drain(running)

    async def burst(self) -> BurstResult:
        """Enqueue the due schedules, run every job due now (and every job whose lease expired)
        until none is left, and return the outcomes. Jobs that fail wait for their backoff: they
        are not retried within the burst."""
        start = self._clock()
        await self._enqueue_schedules()
        outcomes: Counter[str] = Counter()
        while self._kinds:
            batch = await self.queue.claim(
                self.worker_id, limit=self.concurrency, kinds=self._kinds, due_by=start
            )
            if not batch:
                break
            outcomes.update(await asyncio.gather(*(self._run_job(job) for job in batch)))
        await self._housekeeping(force=True)
        return BurstResult(done=outcomes["done"], failed=outcomes["retry"], dead=outcomes["dead"])

    async def _pause(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
        try:
            await asyncio.wait(
                waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _drain(self, running: dict[asyncio.Task[str], Job]) -> None:
        tasks = set(running)
        if not tasks:
            return
        current = asyncio.current_task()
        grace = 0.0 if current is not None and current.cancelling() else self.grace
        log.info("job worker stopping: finishing %d jobs in hand (up to %g s)", len(tasks), grace)
        late = tasks
        if grace > 0:
            _, late = await asyncio.wait(tasks, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)

    # --- one job ---------------------------------------------------------------------------------

    async def _run_job(self, job: Job) -> str:
        """Run one claimed job; its outcome: done, retry, dead, lost (no longer ours) or error
        (the outcome could not be recorded: the lease will expire and the job run again)."""
        try:
            return await self._execute(job)
        except asyncio.CancelledError:
            # The worker is stopping: give the job back without counting the attempt.
            with contextlib.suppress(LeaseLost, *_DB_ERRORS):
                await self.queue.release(job, self.worker_id)
                log.warning(
                    "job %s (%s) interrupted at attempt %d: given back to the queue",
                    job.id, job.kind, job.attempts,
                )  # fmt: skip
            raise

    async def _execute(self, job: Job) -> str:
        handler = self._handlers[job.kind]
        lost = asyncio.Event()
        started = time.monotonic()
        work = asyncio.create_task(self._call(handler, job))
        keeper = asyncio.create_task(self._keep_lease(job, work, lost))
        try:
            try:
                result = await work
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if lost.is_set() and (current is None or not current.cancelling()):
                log.warning(
                    "job %s (%s) attempt %d stopped: worker %s lost its lease (cancelled, or "
                    "taken over after the lease expired)",
                    job.id, job.kind, job.attempts, self.worker_id,
                )  # fmt: skip
                return "lost"
            raise
        except _TimedOut as exc:
            return await self._failed(job, started, str(exc))
        except Retry as exc:
            return await self._failed(job, started, exc.reason, retry_in=exc.delay)
        except Permanent as exc:
            return await self._failed(job, started, str(exc), permanent=True)
        except Exception as exc:  # noqa: BLE001 (any other error is a failed attempt)
            return await self._failed(job, started, f"{type(exc).__name__}: {exc}")
        return await self._done(job, started, result)

    async def _call(self, handler: Handler, job: Job) -> Mapping[str, Any] | None:
        try:
            async with asyncio.timeout(job.timeout_seconds) as scope:
                return await handler(job)
        except TimeoutError:
            if scope.expired():
                raise _TimedOut(job.timeout_seconds) from None
            raise  # the handler's own timeout: a plain failure

    async def _keep_lease(self, job: Job, work: asyncio.Task[Any], lost: asyncio.Event) -> None:
        # Renewed until: past it, another worker may have taken the job, so this run stops
        # even when the database cannot say (a worker cut off from it must not go on sending).
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                held = await self.queue.heartbeat(job, self.worker_id)
            except _DB_ERRORS as exc:
                log.warning("job %s (%s): heartbeat failed: %s", job.id, job.kind, exc)
                if time.monotonic() - renewed < self.queue.lease_margin:
                    continue
                held = False
            else:
                if held:
                    renewed = time.monotonic()
            if not held:
                lost.set()
                work.cancel()
                return

    async def _done(self, job: Job, started: float, result: Mapping[str, Any] | None) -> str:
        elapsed = time.monotonic() - started
        DURATION.labels(job.kind).observe(elapsed)
        if result is not None and not isinstance(result, Mapping):
            log.error(
                "job %s (%s): the handler returned %s, not a mapping; no result kept",
                job.id, job.kind, type(result).__name__,
            )  # fmt: skip
            result = None
        try:
            try:
                await self.queue.complete(job, self.worker_id, result)
            except ValueError as exc:  # not JSON: the work is done all the same
                log.error("job %s (%s): result not kept: %s", job.id, job.kind, exc)
                await self.queue.complete(job, self.worker_id, None)
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lost"
        except _DB_ERRORS as exc:
            log.error("job %s (%s) done but not recorded: %s", job.id, job.kind, exc)
            return "error"
        log.info(
            "job %s (%s) done: attempt %d of %d in %.3f s",
            job.id, job.kind, job.attempts, job.max_attempts, elapsed,
        )  # fmt: skip
        return "done"

    async def _failed(
        self,
        job: Job,
        started: float,
        error: str,
        *,
        retry_in: float | None = None,
        permanent: bool = False,
    ) -> str:
        DURATION.labels(job.kind).observe(time.monotonic() - started)
        error = error or "failed"
        try:
            failed = await self.queue.fail(
                job, self.worker_id, error, retry_in=retry_in, permanent=permanent
            )
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lost"
        except _DB_ERRORS as exc:
            log.error("job %s (%s) failed but not recorded: %s", job.id, job.kind, exc)
            return "error"
        if failed.status == QUEUED:
            log.warning(
                "job %s (%s) attempt %d of %d failed, next at %s: %s",
                job.id, job.kind, job.attempts, job.max_attempts,
                failed.run_at.isoformat(timespec="seconds"), _short(error),
            )  # fmt: skip
            return "retry"
        log.error(
            "job %s (%s) dead after attempt %d of %d%s: %s",
            job.id, job.kind, job.attempts, job.max_attempts,
            " (permanent failure)" if permanent else "", _short(error),
        )  # fmt: skip
        return "dead"

    # --- schedules and housekeeping --------------------------------------------------------------

    async def _enqueue_schedules(self) -> None:
        now = self._clock()
        for schedule in self._schedules:
            slot = schedule.due(now)
            if slot is None or self._slots.get(schedule.name) == slot:
                continue
            job = await self.queue.enqueue(
                schedule.kind,
                schedule.payload(slot),
                idempotency_key=schedule.key(slot),
                run_at=slot,
            )
            self._slots[schedule.name] = slot
            log.debug("schedule %s: slot %s is job %s", schedule.name, slot.isoformat(), job.id)

    async def _housekeeping(self, *, force: bool = False) -> None:
        tick = time.monotonic()
        if force or tick >= self._next_gauge:
            self._next_gauge = tick + self.gauge_interval
            counts = await self.queue.counts()
            for kind in self.queue.policies:
                QUEUED_JOBS.labels(kind).set(counts.get((kind, QUEUED), 0))
        if self.keep_done is not None and (force or tick >= self._next_prune):
            self._next_prune = tick + _PRUNE_EVERY
            pruned = await self.queue.prune(self._clock() - self.keep_done)
            if pruned:
                log.info("pruned %d finished jobs older than %s", pruned, self.keep_done)

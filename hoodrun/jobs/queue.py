"""The durable job queue, in the business database (SQLite or PostgreSQL).

Built on SQLAlchemy Core rather than a job library: procrastinate and pgqueuer are PostgreSQL
only, and HoodRun runs on SQLite as well, with the same tables and the same tests on both.

Claiming is safe with any number of workers in any number of processes. On PostgreSQL a claim
selects due jobs ``FOR UPDATE SKIP LOCKED`` (two claimers never wait for, nor take, each other's
rows); on SQLite the claim is a write transaction, which starts with ``BEGIN IMMEDIATE`` and so
holds the database's only write lock from its first read. On both, each row is taken by a
conditional ``UPDATE ... WHERE status = <as read>`` whose returned row proves the claim.

A claimed job carries a lease: ``locked_by`` and ``locked_until`` (now + ``lease`` seconds),
renewed by the worker's heartbeat (every third of it) while the handler runs; the job's timeout
is the worker's to enforce. The lease is short (a minute by default) whatever the timeout, so a
worker that dies mid-job (SIGKILL, a lost host) holds its job only until the lease expires: the
next claim takes the job again and counts the lost run as an attempt (a job out of attempts goes
dead instead). A lease written by one host is judged by another's clock: hosts must agree on the
time to well within the lease (NTP does).

Failed attempts wait an exponential backoff with full jitter before the next: a random delay
between 0 and ``min(cap, base * 2 ** (attempts - 1))``, so jobs that failed together (a provider
outage) do not all come back at once. Every time comes from the injected clock.
"""

from __future__ import annotations

import builtins
import json
import logging
import random
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.jobs._ids import new_job_id
from hoodrun.jobs.errors import JobNotFound, JobStateError, LeaseLost, UnknownJobKind
from hoodrun.jobs.job import CANCELLED, DEAD, DONE, QUEUED, RUNNING, Job
from hoodrun.jobs.metrics import OUTCOMES
from hoodrun.jobs.policy import POLICIES, JobPolicy
from hoodrun.store import Store, write_audit
from hoodrun.store.tables import jobs

__all__ = ["JobQueue"]

log = logging.getLogger("hoodrun.jobs")

_MAX_ERROR = 2000  # jobs.last_error is VARCHAR(2000)
_MAX_KEY = 128  # jobs.idempotency_key
_MAX_WORKER_ID = 64  # jobs.locked_by
_ORDER = (jobs.c.priority.desc(), jobs.c.run_at, jobs.c.created_at, jobs.c.id)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _clip(text: str, limit: int = _MAX_ERROR) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    data = dict(value or {})
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON (str, numbers, lists, objects): {exc}") from None
    return data


class JobQueue:
    """Enqueue, claim and settle jobs; inspect and repair them (retry, cancel, prune).

    ``policies`` are the kinds this queue knows (default: HoodRun's). ``rng`` draws the backoff
    jitter (seed one in tests). ``lease_margin``: seconds a lease lasts, renewed by heartbeats.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
        backoff_base: float = 5.0,
        backoff_cap: float = 3600.0,
        lease_margin: float = 60.0,
        policies: Mapping[str, JobPolicy] = POLICIES,
    ) -> None:
        if backoff_base <= 0 or backoff_cap < backoff_base:
            raise ValueError("backoff needs 0 < backoff_base <= backoff_cap")
        if lease_margin <= 0:
            raise ValueError("lease_margin must be > 0 seconds")
        self.store = store
        self.clock = clock
        self.lease_margin = lease_margin
        self.policies = policies
        # Not for security: the jitter only spreads retries out.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._base = backoff_base
        self._cap = backoff_cap

    def __repr__(self) -> str:
        return f"<JobQueue on {self.store.url}>"

    def policy(self, kind: str) -> JobPolicy:
        """The policy of ``kind``; ``UnknownJobKind`` (a ``ValueError``) naming the known ones."""
        try:
            return self.policies[kind]
        except KeyError:
            known = ", ".join(sorted(self.policies))
            raise UnknownJobKind(f"unknown job kind {kind!r}: use one of {known}") from None

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (full jitter)."""
        exponent = min(max(attempts - 1, 0), 62)  # past the cap long before, and no overflow
        return self._rng.uniform(0.0, min(self._cap, self._base * 2.0**exponent))

    # --- enqueueing ------------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        actor: str | None = None,
    ) -> Job:
        """A new job, or the existing one if ``idempotency_key`` is already taken (whatever its
        state: the work it names was asked for once). ``actor``: audit who asked (operators)."""
        stmt = self._insert(kind, payload, idempotency_key, run_at, priority, max_attempts)
        async with self.store.transaction() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:  # the key was taken (by now committed: ON CONFLICT waited for it)
                taken = select(jobs).where(jobs.c.idempotency_key == idempotency_key)
                row = (await conn.execute(taken)).mappings().one()
            elif actor is not None:
                await self._audit(conn, actor, "job.enqueue", row["id"], kind=kind)
        return Job.of(row)

    async def enqueue_in(
        self,
        conn: AsyncConnection,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        run_at: datetime | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
    ) -> Job | None:
        """Enqueue inside the caller's transaction, so the job commits (or not) with the work that
        asked for it. Returns the new job; ``None`` if ``idempotency_key`` was already taken."""
        stmt = self._insert(kind, payload, idempotency_key, run_at, priority, max_attempts)
        row = (await conn.execute(stmt)).mappings().first()
        return Job.of(row) if row is not None else None

    def _insert(
        self,
        kind: str,
        payload: Mapping[str, Any] | None,
        idempotency_key: str | None,
        run_at: datetime | None,
        priority: int | None,
        max_attempts: int | None,
    ) -> Any:
        policy = self.policy(kind)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= _MAX_KEY:
            raise ValueError(f"an idempotency key has 1 to {_MAX_KEY} characters")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        now = self.clock()
        stmt = self.store.insert(jobs).values(
            id=new_job_id(),
            kind=kind,
            priority=policy.priority if priority is None else priority,
            payload=_json_object(payload, "a job's payload"),
            status=QUEUED,
            attempts=0,
            max_attempts=policy.max_attempts if max_attempts is None else max_attempts,
            timeout_seconds=policy.timeout,
            run_at=now if run_at is None else run_at,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
        )
        # ON CONFLICT rather than catching IntegrityError: on PostgreSQL a failed INSERT aborts the
        # whole transaction, which for enqueue_in is the caller's.
        if idempotency_key is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=[jobs.c.idempotency_key])
        return stmt.returning(*jobs.c)

    # --- claiming and settling -------------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        *,
        limit: int = 1,
        kinds: Collection[str] | None = None,
        due_by: datetime | None = None,
    ) -> builtins.list[Job]:
        """Up to ``limit`` due jobs, highest priority first, then the earliest ``run_at``, then the
        oldest; each now running under ``worker_id``'s lease with one more attempt counted.

        Jobs whose lease expired are due again; those of them out of attempts go dead here.
        ``kinds``: only these kinds. ``due_by``: only jobs due by then (a burst's start)."""
        if limit < 1:
            raise ValueError("claim at least one job")
        if not 0 < len(worker_id) <= _MAX_WORKER_ID:
            raise ValueError(f"a worker id has 1 to {_MAX_WORKER_ID} characters")
        if kinds is not None and not kinds:
            return []
        now = self.clock()
        due = now if due_by is None else min(due_by, now)
        kind_filter = jobs.c.kind.in_(list(kinds)) if kinds is not None else None
        async with self.store.transaction() as conn:
            await self._reap(conn, now, kind_filter)
            eligible = or_(
                and_(jobs.c.status == QUEUED, jobs.c.run_at <= due),
                and_(
                    jobs.c.status == RUNNING,
                    jobs.c.locked_until < now,
                    jobs.c.attempts < jobs.c.max_attempts,
                ),
            )
            if kind_filter is not None:
                eligible = and_(eligible, kind_filter)
            stmt = (
                select(
                    jobs.c.id,
                    jobs.c.status,
                    jobs.c.attempts,
                    jobs.c.locked_by,
                    jobs.c.timeout_seconds,
                )
                .where(eligible)
                .order_by(*_ORDER)
                .limit(limit)
            )
            candidates = (await conn.execute(self._locking(stmt))).all()
            claimed = []
            for candidate in candidates:
                values: dict[str, Any] = {
                    "status": RUNNING,
                    "attempts": candidate.attempts + 1,
                    "locked_by": worker_id,
                    "locked_until": now + timedelta(seconds=self.lease_margin),
                    "updated_at": now,
                }
                if candidate.status == RUNNING:
                    values["last_error"] = (
                        f"lease expired: worker {candidate.locked_by} stopped during attempt "
                        f"{candidate.attempts}"
                    )
                stmt_claim = (
                    update(jobs)
                    .where(
                        jobs.c.id == candidate.id,
                        jobs.c.status == candidate.status,
                        jobs.c.attempts == candidate.attempts,
                    )
                    .values(values)
                    .returning(*jobs.c)
                )
                row = (await conn.execute(stmt_claim)).mappings().first()
                if row is None:
                    continue  # the locks above prevent this; the check keeps a claim single
                job = Job.of(row)
                if candidate.status == RUNNING:
                    log.warning(
                        "job %s (%s): the lease of worker %s expired; attempt %d of %d by %s",
                        job.id, job.kind, candidate.locked_by, job.attempts, job.max_attempts,
                        worker_id,
                    )  # fmt: skip
                claimed.append(job)
        return claimed

    async def _reap(
        self, conn: AsyncConnection, now: datetime, kind_filter: ColumnElement[bool] | None
    ) -> None:
        """Dead: running jobs whose lease expired on their last attempt."""
        expired = and_(
            jobs.c.status == RUNNING,
            jobs.c.locked_until < now,
            jobs.c.attempts >= jobs.c.max_attempts,
        )
        if kind_filter is not None:
            expired = and_(expired, kind_filter)
        stmt = select(jobs.c.id, jobs.c.kind, jobs.c.attempts, jobs.c.locked_by).where(expired)
        for row in (await conn.execute(self._locking(stmt))).all():
            error = (
                f"lease expired: worker {row.locked_by} stopped during attempt {row.attempts}, "
                "the last"
            )
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == row.id, jobs.c.status == RUNNING)
                .values(
                    status=DEAD,
                    locked_by=None,
                    locked_until=None,
                    last_error=error,
                    updated_at=now,
                    finished_at=now,
                )
            )
            OUTCOMES.labels(row.kind, "dead").inc()
            log.error("job %s (%s) dead: %s", row.id, row.kind, error)

    def _locking(self, stmt: Any) -> Any:
        # SQLite has no row locks; its write transaction already excludes every other writer.
        if self.store.dialect == "postgresql":
            return stmt.with_for_update(skip_locked=True)
        return stmt

    def _held(self, job: Job, worker_id: str) -> ColumnElement[bool]:
        """The job is still this attempt of this worker's."""
        return and_(
            jobs.c.id == job.id,
            jobs.c.status == RUNNING,
            jobs.c.locked_by == worker_id,
            jobs.c.attempts == job.attempts,
        )

    async def heartbeat(self, job: Job, worker_id: str) -> bool:
        """Renew the lease (now + ``lease_margin``); ``False`` if the worker no longer holds it
        (it expired and another worker took the job, or the job was cancelled)."""
        now = self.clock()
        until = now + timedelta(seconds=self.lease_margin)
        stmt = (
            update(jobs)
            .where(self._held(job, worker_id))
            .values(locked_until=until, updated_at=now)
            .returning(jobs.c.id)
        )
        async with self.store.transaction() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def complete(
        self, job: Job, worker_id: str, result: Mapping[str, Any] | None = None
    ) -> Job:
        """The job is done; ``LeaseLost`` if the worker no longer holds it."""
        now = self.clock()
        values = {
            "status": DONE,
            "result": _json_object(result, "a job's result") if result is not None else None,
            "locked_by": None,
            "locked_until": None,
            "updated_at": now,
            "finished_at": now,
        }
        done = await self._settle(job, worker_id, values)
        OUTCOMES.labels(job.kind, "done").inc()
        return done

    async def fail(
        self,
        job: Job,
        worker_id: str,
        error: str,
        *,
        retry_in: float | None = None,
        permanent: bool = False,
    ) -> Job:
        """The attempt failed: the job runs again after ``retry_in`` seconds (default: the
        backoff), or goes dead when ``permanent`` or out of attempts. ``LeaseLost`` if the worker
        no longer holds it."""
        if retry_in is not None and retry_in < 0:
            raise ValueError("retry_in must be >= 0 seconds")
        now = self.clock()
        values: dict[str, Any] = {
            "last_error": _clip(error or "failed"),
            "locked_by": None,
            "locked_until": None,
            "updated_at": now,
        }
        dead = permanent or job.attempts >= job.max_attempts
        if dead:
            values.update(status=DEAD, finished_at=now)
        else:
            delay = self.backoff(job.attempts) if retry_in is None else retry_in
            values.update(status=QUEUED, run_at=now + timedelta(seconds=delay))
        failed = await self._settle(job, worker_id, values)
        OUTCOMES.labels(job.kind, "dead" if dead else "retry").inc()
        return failed

    async def release(self, job: Job, worker_id: str) -> Job:
        """Give the job back undone, due now, without counting the attempt (the worker stopped
        before it could finish: the job itself did not fail)."""
        now = self.clock()
        values = {
            "status": QUEUED,
            "attempts": job.attempts - 1,
            "run_at": now,
            "locked_by": None,
            "locked_until": None,
            "updated_at": now,
        }
        return await self._settle(job, worker_id, values)

    async def _settle(self, job: Job, worker_id: str, values: Mapping[str, Any]) -> Job:
        stmt = update(jobs).where(self._held(job, worker_id)).values(values).returning(*jobs.c)
        async with self.store.transaction() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise LeaseLost(
                f"job {job.id} ({job.kind}) is no longer held by worker {worker_id} (its lease "
                "expired or it was cancelled): this attempt's outcome is not recorded"
            )
        return Job.of(row)

    # --- inspecting and repairing ----------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with self.store.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        return Job.of(row) if row is not None else None

    async def by_key(self, idempotency_key: str) -> Job | None:
        """The job enqueued with ``idempotency_key``, if any."""
        stmt = select(jobs).where(jobs.c.idempotency_key == idempotency_key)
        async with self.store.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return Job.of(row) if row is not None else None

    async def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by (kind, status)."""
        stmt = select(jobs.c.kind, jobs.c.status, func.count()).group_by(jobs.c.kind, jobs.c.status)
        async with self.store.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return {(kind, status): count for kind, status, count in rows}

    async def retry(self, job_id: str, *, actor: str = "system") -> Job:
        """Run a dead or cancelled job again, now, with all its attempts."""
        return await self._change(
            job_id, (DEAD, CANCELLED), "retried", actor, "job.retry", self._requeue()
        )

    async def retry_dead(self, *, kind: str | None = None, actor: str = "system") -> int:
        """Run every dead job (of ``kind``) again; how many."""
        stmt = update(jobs).where(jobs.c.status == DEAD)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        async with self.store.transaction() as conn:
            rows = (await conn.execute(stmt.values(self._requeue()).returning(jobs.c.id))).all()
            for (job_id,) in rows:
                await self._audit(conn, actor, "job.retry", job_id)
        return len(rows)

    async def cancel(self, job_id: str, *, actor: str = "system") -> Job:
        """Give up a queued, running or dead job. A running one is stopped by its worker at the
        next heartbeat (the handler is cancelled; what it did so far stays done)."""
        now = self.clock()
        values = {"status": CANCELLED, "locked_by": None, "locked_until": None}
        return await self._change(
            job_id,
            (QUEUED, RUNNING, DEAD),
            "cancelled",
            actor,
            "job.cancel",
            {**values, "updated_at": now, "finished_at": now},
        )

    def _requeue(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "status": QUEUED,
            "attempts": 0,
            "run_at": now,
            "locked_by": None,
            "locked_until": None,
            "updated_at": now,
            "finished_at": None,
        }

    async def _change(
        self,
        job_id: str,
        allowed: tuple[str, ...],
        verb: str,
        actor: str,
        action: str,
        values: Mapping[str, Any],
    ) -> Job:
        stmt = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(allowed))
            .values(values)
            .returning(*jobs.c)
        )
        async with self.store.transaction() as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:
                status = (
                    await conn.execute(select(jobs.c.status).where(jobs.c.id == job_id))
                ).scalar()
                if status is None:
                    raise JobNotFound(f"no job {job_id}")
                raise JobStateError(
                    f"job {job_id} is {status}: only {' or '.join(allowed)} jobs can be {verb}"
                )
            await self._audit(conn, actor, action, job_id, kind=row["kind"])
        return Job.of(row)

    async def prune(self, older_than: datetime) -> int:
        """Delete done and cancelled jobs finished before ``older_than``; how many. Dead jobs
        stay until someone retries or cancels them."""
        stmt = delete(jobs).where(
            jobs.c.status.in_((DONE, CANCELLED)), jobs.c.finished_at < older_than
        )
        async with self.store.transaction() as conn:
            return (await conn.execute(stmt)).rowcount

    async def _audit(
        self, conn: AsyncConnection, actor: str, action: str, job_id: str, **details: Any
    ) -> None:
        await write_audit(
            conn,
            at=self.clock(),
            actor=actor,
            action=action,
            target_type="job",
            target_id=job_id,
            details=details,
        )

    # Last, so that ``list`` in the annotations above is the builtin.
    async def list(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> builtins.list[Job]:
        """The newest jobs first, optionally of one status and one kind."""
        stmt = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(jobs.c.status == status)
        if kind is not None:
            stmt = stmt.where(jobs.c.kind == kind)
        async with self.store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Job.of(row) for row in rows]

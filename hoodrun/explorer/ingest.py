"""Application logs in: ``POST /logs/v1`` bodies checked (``hoodrun.explorer.lines``),
enriched and written to the analytics store's ``logs`` table.

Per project, in this order: the rate limits (``per_minute`` and ``per_hour`` requests, in memory
or shared through Redis: 429 ``rate_limited``); the lines' checks (all or nothing: 422 naming
every problem); the daily line quota (``daily_lines`` per UTC day, counted by this process and
seeded at start from the lines the store received today: 429 ``quota_exceeded`` until midnight
UTC); the queue depth (``queue_depth`` lines of the project waiting for their write: 503
``queue_full``). ``logs.plans[plan]`` overrides the limits and the retention (each line's
``expires`` is its arrival plus the retention). Every refusal says when to retry
(``retry_after``, the ``Retry-After`` header) and stores nothing of its request.

Only the lines at ``warn`` or above, or with a stack, get a fingerprint (``hoodrun.explorer.
fingerprint``): errors are what is grouped, and the normalization is most of a line's cost.

Writing is a group commit: a request's lines join the next insert, and the request is answered
once that insert is done, so ``202`` means stored (a crash loses nothing that was answered).
Lines that arrive while an insert runs go together in the next one. When an insert fails, the
lines stay queued and the insert is tried again (after ``flush_interval`` seconds, doubling up to
5 s) until ``write_timeout`` after they arrived; then their requests answer 503
``store_unavailable`` and nothing of them is stored. Meanwhile new lines queue, and once a
project has ``queue_depth`` lines waiting its further requests answer ``queue_full`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hoodrun.explorer.fingerprint import fingerprint
from hoodrun.explorer.lines import (
    BodyTooLarge,
    KeyRequired,
    LogLines,
    LogsClosed,
    LogsError,
    QueueFull,
    QuotaExceeded,
    RateLimited,
    StoreUnavailable,
    TooManyLines,
    body_lines,
    decode_body,
    new_ids,
    parse_logs,
)
from hoodrun.explorer.schema import LOGS_ARROW_SCHEMA, LOGS_TABLE, create_logs_table
from hoodrun.limits import Bucket, Limiter, LimiterUnavailable, MemoryLimiter

if TYPE_CHECKING:
    from hoodrun.api.projects import ProjectScope
    from hoodrun.config import Config
    from hoodrun.explorer.config import LogsConfig
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = [
    "RECEIVED_SINCE",
    "LogIngestor",
    "PlanLimits",
    "open_log_ingestor",
    "plan_limits",
]

log = logging.getLogger("hoodrun.explorer")

MAX_BACKOFF = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# At or above: fingerprinted even without a stack.
_FINGERPRINTED = frozenset({"warn", "error", "fatal"})


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _US


# --- limits ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """The limits and retention of a plan's projects: ``logs.plans[plan]`` over the defaults."""

    per_minute: int
    per_hour: int
    daily_lines: int
    retention_days: int


def plan_limits(config: LogsConfig, plan: str) -> PlanLimits:
    own = config.plans.get(plan)

    def pick(name: str) -> int:
        value = getattr(own, name) if own is not None else None
        return int(value if value is not None else getattr(config, name))

    return PlanLimits(
        pick("per_minute"), pick("per_hour"), pick("daily_lines"), pick("retention_days")
    )


# --- the table ---------------------------------------------------------------------------------

_LINE_COLUMNS = (
    "ts", "id", "level", "service", "message", "fingerprint", "stack", "attributes",
    "trace_id", "span_id",
)  # fmt: skip

# Lines per project received since ``start`` (the quota's day so far), duplicates included.
RECEIVED_SINCE = """
SELECT project_id, count() AS lines
FROM {db}.logs
WHERE received_at >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')
GROUP BY project_id
"""


@dataclass(eq=False, slots=True)
class _Entry:
    """One request's lines, waiting for their insert."""

    lines: LogLines
    project_id: str
    org_id: str
    key_id: str
    received: int  # microseconds
    expires: int  # seconds
    deadline: float  # loop time: give up then
    done: asyncio.Future[None]


def _table(entries: Sequence[_Entry]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in LOGS_ARROW_SCHEMA.names}
    for entry in entries:
        lines, size = entry.lines, len(entry.lines)
        for name in _LINE_COLUMNS:
            columns[name].extend(getattr(lines, name))
        columns["received_at"].extend([entry.received] * size)
        columns["project_id"].extend([entry.project_id] * size)
        columns["org_id"].extend([entry.org_id] * size)
        columns["key_id"].extend([entry.key_id] * size)
        columns["expires"].extend([entry.expires] * size)
    return pa.Table.from_pydict(columns, schema=LOGS_ARROW_SCHEMA)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- the ingestor ------------------------------------------------------------------------------


class LogIngestor:
    """Log lines of projects into the analytics store's ``logs`` table (see the module docstring).

    ``start`` creates the table and seeds the quotas; ``aclose`` refuses new requests and waits
    for the queued lines' writes (at most ``write_timeout``). ``clock`` is now (received times,
    the quota's day); ``limiter`` keeps the rate limits (default: in this process).
    """

    def __init__(
        self,
        store: AnalyticsStore,
        config: Config,
        *,
        clock: Callable[[], datetime] = _utc_now,
        limiter: Limiter | None = None,
        write_timeout: float = 10.0,
        fingerprints: int = 4096,
    ) -> None:
        self.store = store
        self.config: LogsConfig = config.logs
        self._clock = clock
        self._limiter: Limiter = limiter if limiter is not None else MemoryLimiter()
        self._own_limiter = limiter is None
        self._write_timeout = write_timeout
        self._plans: dict[str, PlanLimits] = {}
        self._new_id = new_ids()
        self._queue: deque[_Entry] = deque()
        self._pending: dict[str, int] = {}
        self._day = clock().date()
        self._used: dict[str, int] = {}
        self._table_ready = False
        self._failures = 0
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._state = "new"
        self._fingerprints: dict[tuple[str, str], str] = {}
        self._max_fingerprints = fingerprints

    # -- lifecycle

    async def start(self) -> None:
        """Create the ``logs`` table and count today's lines per project (best effort: with
        the store down, the table is created before the first write and quotas count from 0)."""
        if self._state != "new":
            raise RuntimeError("a LogIngestor starts once")
        try:
            await create_logs_table(self.store)
            self._table_ready = True
            await self._seed(self._clock())
        except Exception as exc:  # noqa: BLE001 (ingestion still starts; say what is missing)
            log.warning("logs: the store is not ready (%s); quotas count from zero", exc)
        self._state = "open"
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def aclose(self) -> None:
        """Refuse new requests, write what is queued (or fail it after ``write_timeout``)."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._own_limiter:
            await self._limiter.aclose()

    async def __aenter__(self) -> LogIngestor:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _seed(self, now: datetime) -> None:
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        rows = await self.store.query(RECEIVED_SINCE, {"start": _micros(start)})
        self._day = now.date()
        self._used = {row["project_id"]: int(row["lines"]) for row in rows}

    # -- what callers see

    def limits(self, plan: str) -> PlanLimits:
        """The limits of ``plan``'s projects."""
        found = self._plans.get(plan)
        if found is None:
            found = self._plans[plan] = plan_limits(self.config, plan)
        return found

    def pending(self, project_id: str) -> int:
        """Lines of the project accepted and not yet written."""
        return self._pending.get(project_id, 0)

    def used_today(self, project_id: str) -> int:
        """Lines of the project counted against today's quota (UTC)."""
        self._roll_day(self._clock())
        return self._used.get(project_id, 0)

    async def ingest(self, scope: ProjectScope, body: bytes, content_type: str) -> int:
        """Check, enrich and store the lines of ``body``; returns how many, once written.
        Raises a ``LogsError`` (nothing of the body stored)."""
        if self._state != "open":
            raise LogsClosed(retry_after=1)
        if scope.admin:
            raise KeyRequired
        config = self.config
        limits = self.limits(scope.plan)
        await self._rate_limit(scope.project_id, limits)
        if len(body) > config.max_body_bytes:
            raise BodyTooLarge(
                f"the body is over {config.max_body_bytes} bytes: send smaller batches"
            )
        items = body_lines(decode_body(body, content_type))
        if len(items) > config.max_batch:
            raise TooManyLines(
                f"{len(items)} lines: at most {config.max_batch} per request, send several"
            )
        now = self._clock()
        lines = parse_logs(
            items,
            now,
            max_message_bytes=config.max_message_bytes,
            retention_days=limits.retention_days,
            new_id=self._new_id,
        )
        count = len(lines)
        if not count:
            return 0
        project = scope.project_id
        self._roll_day(now)
        used = self._used.get(project, 0)
        if used + count > limits.daily_lines:
            tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            raise QuotaExceeded(
                f"{used} of {limits.daily_lines} lines sent today (UTC); {count} more would "
                "exceed the quota",
                retry_after=max(1, math.ceil((tomorrow - now).total_seconds())),
            )
        pending = self._pending.get(project, 0)
        if pending + count > config.queue_depth:
            raise QueueFull(
                f"{pending} lines of this project wait to be written (at most "
                f"{config.queue_depth}); nothing of this request was stored",
                retry_after=self._retry_after(),
            )
        self._fingerprint(lines)
        loop = asyncio.get_running_loop()
        received = _micros(now)
        entry = _Entry(
            lines,
            project,
            scope.org_id,
            scope.key_id,
            received,
            received // 1_000_000 + limits.retention_days * 86_400,
            loop.time() + self._write_timeout,
            loop.create_future(),
        )
        self._used[project] = used + count
        self._pending[project] = pending + count
        self._queue.append(entry)
        self._wake.set()
        # Shielded: a client that goes away leaves its lines to be written.
        await asyncio.shield(entry.done)
        return count

    # -- inside

    async def _rate_limit(self, project: str, limits: PlanLimits) -> None:
        buckets = (
            Bucket.per_window(f"logs:m:{project}", limits.per_minute, 60),
            Bucket.per_window(f"logs:h:{project}", limits.per_hour, 3600),
        )
        try:
            decision = await self._limiter.acquire(buckets)
        except LimiterUnavailable as exc:  # fail open, as the gateway does
            log.warning("logs: rate limits not checked: %s", exc)
            return
        if not decision.allowed:
            window = "minute" if decision.bucket == buckets[0].key else "hour"
            raise RateLimited(
                f"more than {decision.limit} requests per {window} for this project's plan",
                retry_after=max(1, math.ceil(decision.retry_after)),
            )

    def _roll_day(self, now: datetime) -> None:
        if now.date() != self._day:
            self._day = now.date()
            self._used = {}

    def _fingerprint(self, lines: LogLines) -> None:
        """Fingerprints of the lines at warn or above, or with a stack (repeats cached)."""
        cache = self._fingerprints
        prints = lines.fingerprint
        for index, (level, message, stack) in enumerate(
            zip(lines.level, lines.message, lines.stack, strict=True)
        ):
            if not stack and level not in _FINGERPRINTED:
                continue
            key = (message, stack)
            found = cache.get(key)
            if found is None:
                if len(cache) >= self._max_fingerprints:
                    cache.clear()
                found = cache[key] = fingerprint(message, stack)
            prints[index] = found

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._backoff())) if self._failures else 1

    def _backoff(self) -> float:
        delay: float = self.config.flush_interval * 2 ** max(self._failures - 1, 0)
        return min(delay, MAX_BACKOFF)

    def _release(self, entry: _Entry, error: LogsError | None) -> None:
        project, count = entry.project_id, len(entry.lines)
        left = self._pending.get(project, 0) - count
        if left > 0:
            self._pending[project] = left
        else:
            self._pending.pop(project, None)
        if error is not None and self._used.get(project, 0) >= count:
            self._used[project] -= count  # not stored: not counted
        if not entry.done.done():
            if error is None:
                entry.done.set_result(None)
            else:
                entry.done.set_exception(error)
                entry.done.exception()  # retrieved, should its request be gone

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._write_next()
            if self._state == "closed" and not self._queue:
                return

    async def _write_next(self) -> None:
        """One insert of the lines at the head of the queue (up to ``write_batch``)."""
        queue = self._queue
        batch: list[_Entry] = []
        size = 0
        for entry in queue:
            if batch and size + len(entry.lines) > self.config.write_batch:
                break
            batch.append(entry)
            size += len(entry.lines)
        try:
            if not self._table_ready:
                await create_logs_table(self.store)
                self._table_ready = True
            await self.store.insert_into(LOGS_TABLE, _table(batch))
        except Exception as exc:  # noqa: BLE001 (retried; the waiters hear of it at their deadline)
            self._failures += 1
            delay = self._backoff()
            log.warning("logs: writing %d lines failed, retrying in %.2fs: %s", size, delay, exc)
            self._expire(asyncio.get_running_loop().time() + delay)
            if queue:
                await asyncio.sleep(delay)
            return
        self._failures = 0
        for _ in batch:
            self._release(queue.popleft(), None)

    def _expire(self, after: float) -> None:
        """Give up the entries whose deadline comes before the next try, at ``after``."""
        if not any(entry.deadline < after for entry in self._queue):
            return
        kept: deque[_Entry] = deque()
        error = StoreUnavailable(retry_after=self._retry_after())
        for entry in self._queue:
            if entry.deadline < after:
                self._release(entry, error)
            else:
                kept.append(entry)
        self._queue = kept


async def open_log_ingestor(
    config: Config, store: AnalyticsStore, stack: AsyncExitStack
) -> LogIngestor:
    """The api role's ingestor on ``store``, started, and closed by ``stack``: its rate limits in
    Redis when ``redis_url`` is set (shared by the api processes), else in this process."""
    limiter: Limiter | None = None
    if config.redis_url is not None:
        from redis.asyncio import BlockingConnectionPool, Redis

        from hoodrun.limits import RedisLimiter

        pool = BlockingConnectionPool.from_url(
            config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        client = Redis.from_pool(pool)
        stack.push_async_callback(client.aclose)
        limiter = RedisLimiter(client, config.redis_prefix)
        stack.push_async_callback(limiter.aclose)
    ingestor = LogIngestor(store, config, limiter=limiter)
    await ingestor.start()
    stack.push_async_callback(ingestor.aclose)
    return ingestor

"""Usage events: CloudEvents 1.0, checked, de-duplicated and stored in the analytics store.

An event (the JSON format of CloudEvents 1.0, as OpenMeter takes it)::

    {"specversion": "1.0", "id": "e1", "source": "billing-svc", "type": "llm_tokens",
     "subject": "org_acme", "time": "2026-11-01T10:00:00Z", "data": {"tokens": 12}}

``specversion`` ("1.0"), ``id``, ``source``, ``type`` and ``subject`` are required non-empty
strings; ``time`` is RFC 3339 (default: when it arrives); ``datacontenttype`` may only be
``application/json``; ``data`` is a JSON object (or absent). Other attributes (CloudEvents
extensions, ``dataschema``) are accepted and not stored. A batch with one invalid event is refused
whole, with every problem named (``[3].subject: required ...``).

Events go to the ``events`` table (``EVENTS_DDL``), one insert per batch. De-duplication, on
``(source, id)`` as CloudEvents defines it (the same id from another source is another event):

- The table is a ReplacingMergeTree sorted by ``(type, source, id)`` and every read uses ``FINAL``,
  so an event stored twice (a retry, a replay after a restart, two api replicas) counts once for
  as long as the table keeps it, however far apart the copies arrived. The version column keeps
  the *first* copy (OpenMeter drops later duplicates): a retry of an event without ``time`` does
  not move it to the retry's time. The table has no time partition, since ClickHouse replaces rows
  only within a partition. A same-``(source, id)`` event with a *different type* is a different
  row (producers must not do that; each meter counts at most one of them, as meters select by
  type).
- Before the insert, duplicates within the batch and ids stored by this process in the last 24
  hours (up to ``memory`` ids) are dropped, so a retried batch costs no insert at all.

Rows are kept ``retention_days`` (400) after their ``time`` (a ClickHouse TTL; changing it later
needs an ``ALTER TABLE ... MODIFY TTL``): an event older than that is dropped, not counted.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

if TYPE_CHECKING:
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "EVENTS_DDL",
    "EVENTS_TABLE",
    "Event",
    "EventLog",
    "Ingested",
    "InvalidEvent",
    "events_table",
    "parse_events",
    "parse_rfc3339",
]

EVENTS_TABLE = "events"
DEFAULT_RETENTION_DAYS = 400

# ``keep`` is the ReplacingMergeTree's version: the largest wins, so it falls as ingested_at
# grows and the first copy of an event is the one kept.
EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.events (
    time DateTime64(6, 'UTC'),
    id String,
    source String,
    type LowCardinality(String),
    subject String,
    data String,
    ingested_at DateTime64(6, 'UTC'),
    keep UInt64 MATERIALIZED 9223372036854775807 - toUInt64(toUnixTimestamp64Micro(ingested_at))
)
ENGINE = ReplacingMergeTree(keep)
ORDER BY (type, source, id)
TTL time + INTERVAL {retention_days} DAY DELETE
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# Well inside DateTime64's range (1900-2299), and a bound that is easy to state.
_LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_REQUIRED = ("id", "source", "type", "subject")
MAX_PROBLEMS = 10  # named in one refusal; the rest are counted

_SCHEMA = pa.schema(
    [
        ("time", pa.timestamp("us", tz="UTC")),
        ("id", pa.string()),
        ("source", pa.string()),
        ("type", pa.string()),
        ("subject", pa.string()),
        ("data", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)


class InvalidEvent(ValueError):
    """One or more events of a batch are not valid CloudEvents; nothing was stored."""

    def __init__(self, problems: Sequence[str], total: int | None = None) -> None:
        self.problems = list(problems)
        total = len(self.problems) if total is None else total
        more = f" (and {total - len(self.problems)} more)" if total > len(self.problems) else ""
        super().__init__("; ".join(self.problems) + more)


@dataclass(frozen=True, slots=True)
class Event:
    """A checked event, as stored: ``time`` in microseconds since the epoch, ``data`` as JSON."""

    id: str
    source: str
    type: str
    subject: str
    time: int
    data: str


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one ``EventLog.ingest`` did: events received, and those stored (not duplicates)."""

    received: int
    stored: int


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _US


def parse_rfc3339(value: Any) -> datetime:
    """An RFC 3339 date-time (with its offset) as an aware UTC datetime; ``ValueError`` says
    what is wrong. Digits beyond microseconds are dropped."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, like 2026-11-01T10:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.upper())  # fromisoformat wants T and Z
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date-time") from None
    if not _EPOCH <= parsed < _LATEST:
        raise ValueError("must be between 1970 and 2099")
    return parsed.astimezone(UTC)


def _time(value: Any) -> int:
    return _micros(parse_rfc3339(value))


def parse_events(items: Sequence[Any], now: datetime, *, batch: bool = True) -> list[Event]:
    """Check ``items`` (JSON values) as CloudEvents; ``InvalidEvent`` names every problem by
    position (``[3].subject``; without the position when ``batch`` is false)."""
    now_us = _micros(now)
    events: list[Event] = []
    problems: list[str] = []
    found = 0
    for index, item in enumerate(items):
        where = f"[{index}]." if batch else ""
        if not isinstance(item, dict):
            found += 1
            problems.append(
                f"[{index}]: an event is a JSON object" if batch else "an event is a JSON object"
            )
            continue
        wrong: list[str] = []
        version = item.get("specversion")
        if version is None:
            wrong.append(f'{where}specversion: required, "1.0"')
        elif version != "1.0":
            wrong.append(f'{where}specversion: must be "1.0", not {version!r}')
        for name in _REQUIRED:
            value = item.get(name)
            if not isinstance(value, str) or not value:
                wrong.append(f"{where}{name}: required, a non-empty string")
        time = item.get("time")
        stamp = now_us
        if time is not None:
            try:
                stamp = _time(time)
            except ValueError as exc:
                wrong.append(f"{where}time: {exc}")
        kind = item.get("datacontenttype")
        if kind is not None and kind != "application/json":
            wrong.append(f"{where}datacontenttype: only application/json, not {kind!r}")
        if "data_base64" in item:
            wrong.append(f"{where}data_base64: binary data is not accepted; send data as JSON")
        data = item.get("data")
        text = "{}"
        if data is not None:
            if not isinstance(data, dict):
                wrong.append(f"{where}data: must be a JSON object")
            else:
                try:
                    text = orjson.dumps(data).decode()
                except TypeError:  # only through the Python API: JSON bodies always dump
                    wrong.append(f"{where}data: must be JSON")
        if wrong:
            found += len(wrong)
            problems.extend(wrong)
            continue
        events.append(Event(item["id"], item["source"], item["type"], item["subject"], stamp, text))
    if problems:
        raise InvalidEvent(problems[:MAX_PROBLEMS], found)
    return events


def events_table(events: Sequence[Event], ingested_at: datetime) -> pa.Table:
    """The rows of ``events`` as an Arrow table in the ``events`` table's columns."""
    stamp = _micros(ingested_at)
    columns = {
        "time": [event.time for event in events],
        "id": [event.id for event in events],
        "source": [event.source for event in events],
        "type": [event.type for event in events],
        "subject": [event.subject for event in events],
        "data": [event.data for event in events],
        "ingested_at": [stamp] * len(events),
    }
    return pa.Table.from_pydict(columns, schema=_SCHEMA)


@dataclass(eq=False)
class _Batch:
    """Events of one insert, and the future their callers wait on."""

    events: dict[tuple[str, str, str], Event] = field(default_factory=dict)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EventLog:
    """Usage events into the analytics store's ``events`` table (created on first use).

    ``clock`` is now: the default ``time`` and ``ingested_at``, and the age of remembered ids.
    """

    def __init__(
        self,
        store: AnalyticsStore,
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        clock: Callable[[], datetime] = _utc_now,
        window: timedelta = timedelta(hours=24),
        memory: int = 100_000,
    ) -> None:
        if retention_days < 1:
            raise ValueError("retention_days must be at least 1")
        self.store = store
        self.retention_days = retention_days
        self._clock = clock
        self._window = window
        self._memory = memory
        self._recent: OrderedDict[tuple[str, str, str], datetime] = OrderedDict()
        self._created = False
        self._lock = asyncio.Lock()
        self._next: _Batch | None = None  # events waiting for the insert after the running one
        self._writer: asyncio.Task[None] | None = None

    def now(self) -> datetime:
        return self._clock()

    async def setup(self) -> None:
        """Create the database and the ``events`` table if missing (once per process)."""
        if self._created:
            return
        async with self._lock:
            if not self._created:
                await self.store.execute("CREATE DATABASE IF NOT EXISTS {db}")
                ddl = EVENTS_DDL.replace("{retention_days}", str(int(self.retention_days)))
                await self.store.execute(ddl)
                self._created = True

    async def ingest(self, items: Sequence[Any], *, batch: bool = True) -> Ingested:
        """Check ``items`` (``InvalidEvent``: nothing stored) and store the new ones; returns
        once they are stored. ``StoreError`` when the store fails (nothing is remembered: a
        retry writes them).

        One insert at a time: events that arrive while an insert runs wait for it and go
        together in the next one (group commit), so many small requests make few inserts (a
        chDB insert costs milliseconds, whatever its size) and an idle log inserts at once."""
        now = self._clock()
        events = parse_events(items, now, batch=batch)
        self._forget(now)
        fresh: dict[tuple[str, str, str], Event] = {}
        for event in events:
            key = (event.type, event.source, event.id)
            if key not in fresh and key not in self._recent:
                fresh[key] = event
        if fresh:
            await self.setup()
            await self._write(fresh)
        return Ingested(received=len(events), stored=len(fresh))

    async def _write(self, events: dict[tuple[str, str, str], Event]) -> None:
        if self._next is None:
            self._next = _Batch()
        batch = self._next
        for key, event in events.items():
            batch.events.setdefault(key, event)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        # Shielded: a caller that goes away (a client disconnecting) leaves the batch to finish.
        await asyncio.shield(batch.done)

    async def _drain(self) -> None:
        try:
            while self._next is not None:
                batch, self._next = self._next, None
                now = self._clock()
                try:
                    table = events_table(list(batch.events.values()), now)
                    await self.store.insert_into(EVENTS_TABLE, table)
                except Exception as exc:  # noqa: BLE001 (handed to every waiter)
                    batch.done.set_exception(exc)
                    batch.done.exception()  # retrieved here too, should every waiter be gone
                    continue
                for key in batch.events:
                    self._recent[key] = now
                self._forget(now)
                batch.done.set_result(None)
        finally:
            self._writer = None

    def _forget(self, now: datetime) -> None:
        recent, oldest = self._recent, now - self._window
        while recent and (len(recent) > self._memory or next(iter(recent.values())) < oldest):
            recent.popitem(last=False)

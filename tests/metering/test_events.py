"""Usage events: CloudEvents checked field by field, stored in chDB, and every duplicate (same
source and id) counted once: in one batch, across batches, after the process's memory of recent
ids is gone, and across a real process restart. Then the ingest endpoint's content types and
RFC 7807 errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pyarrow as pa
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config
from hoodrun.keys.service import KeyService
from hoodrun.metering.events import (
    Event,
    EventLog,
    InvalidEvent,
    events_table,
    parse_events,
)
from hoodrun.metering.meters import MeterService
from hoodrun.telemetry.store import ChdbStore, ClickHouseStore, StoreError
from tests._stores import FakeClock

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "events-test-token"
NOW = datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp()) * 1_000_000


def micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def event(id: str = "e1", /, **changes: Any) -> dict[str, Any]:
    """A valid event; ``changes`` set (or, with None, remove) attributes."""
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": id,
        "source": "billing",
        "type": "llm",
        "subject": "acme",
        "time": "2026-03-08T10:00:00Z",
        "data": {"tokens": 1},
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


# --- checking -----------------------------------------------------------------------------------


def test_a_valid_event_is_kept_as_stored() -> None:
    full = event(
        time="2026-03-08T13:00:00.123456789+03:00",
        datacontenttype="application/json",
        dataschema="https://example.com/schema",
        traceparent="00-abc-def-01",  # an extension attribute: accepted
        data={"tokens": 12, "model": {"name": "m"}},
    )
    (parsed,) = parse_events([full], NOW)
    assert parsed == Event(
        id="e1",
        source="billing",
        type="llm",
        subject="acme",
        time=micros(datetime(2026, 3, 8, 10, 0, 0, 123456, tzinfo=UTC)),
        data='{"tokens":12,"model":{"name":"m"}}',
    )


def test_time_defaults_to_now_and_data_to_an_empty_object() -> None:
    (parsed,) = parse_events([event(time=None, data=None)], NOW)
    assert (parsed.time, parsed.data) == (NOW_US, "{}")
    (nulls,) = parse_events([{**event(), "time": None, "data": None}], NOW)
    assert (nulls.time, nulls.data) == (NOW_US, "{}")
    (lower,) = parse_events([event(time="2026-03-08t10:00:00z")], NOW)
    assert lower.time == micros(datetime(2026, 3, 8, 10, tzinfo=UTC))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"specversion": None}, 'specversion: required, "1.0"'),
        ({"specversion": "0.3"}, "specversion: must be \"1.0\", not '0.3'"),
        ({"id": None}, "id: required, a non-empty string"),
        ({"id": ""}, "id: required, a non-empty string"),
        ({"id": 7}, "id: required, a non-empty string"),
        ({"source": None}, "source: required, a non-empty string"),
        ({"type": ""}, "type: required, a non-empty string"),
        ({"subject": None}, "subject: required, a non-empty string"),
        ({"time": "2026-03-08"}, "time: must be an RFC 3339 date-time with an offset"),
        ({"time": "2026-03-08T10:00:00"}, "time: must be an RFC 3339 date-time with an offset"),
        ({"time": "yesterday"}, "time: must be an RFC 3339 date-time with an offset"),
        ({"time": 1772964000}, "time: must be an RFC 3339 date-time with an offset"),
        ({"time": "2026-02-30T00:00:00Z"}, "time: '2026-02-30T00:00:00Z' is not a valid date-time"),
        ({"time": "1969-12-31T23:59:59Z"}, "time: must be between 1970 and 2099"),
        (
            {"datacontenttype": "text/plain"},
            "datacontenttype: only application/json, not 'text/plain'",
        ),
        ({"data": [1, 2]}, "data: must be a JSON object"),
        ({"data": "tokens=1"}, "data: must be a JSON object"),
        ({"data_base64": "AAE="}, "data_base64: binary data is not accepted"),
    ],
)
def test_an_invalid_field_is_named(changes: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidEvent) as single:
        parse_events([event(**changes)], NOW, batch=False)
    assert len(single.value.problems) == 1
    assert single.value.problems[0].startswith(problem)
    with pytest.raises(InvalidEvent) as batch:
        parse_events([event("ok"), event("bad", **changes)], NOW)
    assert str(batch.value).startswith(f"[1].{problem}")


def test_every_problem_of_a_batch_is_named_up_to_ten() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_events([event(subject=None, type=None), "not an event", event()], NOW)
    assert caught.value.problems == [
        "[0].type: required, a non-empty string",
        "[0].subject: required, a non-empty string",
        "[1]: an event is a JSON object",
    ]
    with pytest.raises(InvalidEvent) as many:
        parse_events([event(str(i), source=None) for i in range(25)], NOW)
    assert len(many.value.problems) == 10
    assert str(many.value).endswith("(and 15 more)")


def test_the_arrow_table_has_the_events_columns() -> None:
    events = parse_events([event("a"), event("b", subject="globex")], NOW)
    table = events_table(events, NOW)
    assert table.column_names == [
        "time", "id", "source", "type", "subject", "data", "ingested_at",
    ]  # fmt: skip
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert table.column("subject").to_pylist() == ["acme", "globex"]
    assert table.column("ingested_at").to_pylist() == [NOW, NOW]


# --- storing and de-duplication ------------------------------------------------------------------


async def stored(store: ChdbStore) -> list[dict[str, Any]]:
    """The events as every read sees them (FINAL), with the physical row count."""
    return await store.query(
        "SELECT id, source, subject, data, toUnixTimestamp64Micro(time) AS t "
        "FROM {db}.events FINAL ORDER BY source, id"
    )


async def physical_rows(store: ChdbStore) -> int:
    rows = await store.query("SELECT count() AS n FROM {db}.events")
    return int(rows[0]["n"])


async def test_duplicates_in_one_batch_and_across_batches_are_stored_once(
    analytics_store: ChdbStore,
) -> None:
    clock = FakeClock(NOW)
    log = EventLog(analytics_store, clock=clock)
    first = await log.ingest([event("e1"), event("e2"), event("e1", data={"tokens": 99})])
    assert (first.received, first.stored) == (3, 2)
    again = await log.ingest([event("e2"), event("e3")])
    assert (again.received, again.stored) == (2, 1)  # e2 known: not even inserted
    other_source = await log.ingest([event("e1", source="crm")])
    assert other_source.stored == 1  # the same id from another source is another event
    rows = await stored(analytics_store)
    assert [(r["source"], r["id"]) for r in rows] == [
        ("billing", "e1"), ("billing", "e2"), ("billing", "e3"), ("crm", "e1"),
    ]  # fmt: skip
    assert rows[0]["data"] == '{"tokens":1}'  # the first copy
    assert await physical_rows(analytics_store) == 4


async def test_without_the_memory_the_store_still_counts_a_duplicate_once(
    analytics_store: ChdbStore,
) -> None:
    """A new EventLog (as after a restart) or an old id (beyond the 24 hours it remembers)
    writes the duplicate again; the table keeps the first copy and reads see one event."""
    clock = FakeClock(NOW)
    await EventLog(analytics_store, clock=clock).ingest([event("e1"), event("e2", time=None)])
    clock.advance(timedelta(minutes=5))
    fresh = EventLog(analytics_store, clock=clock)
    retry = await fresh.ingest(
        [event("e1", data={"tokens": 50}), event("e2", time=None, subject="globex")]
    )
    assert retry.stored == 2
    assert await physical_rows(analytics_store) == 4
    rows = await stored(analytics_store)
    assert [(r["id"], r["subject"], r["data"]) for r in rows] == [
        ("e1", "acme", '{"tokens":1}'),
        ("e2", "acme", '{"tokens":1}'),
    ]
    assert int(rows[1]["t"]) == NOW_US  # a retry without time does not move the event

    clock.advance(timedelta(hours=25))
    late = await fresh.ingest([event("e3")])
    assert late.stored == 1
    assert (await fresh.ingest([event("e3")])).stored == 0  # remembered
    clock.advance(timedelta(hours=25))
    assert (await fresh.ingest([event("e3")])).stored == 1  # forgotten: written again
    assert [r["id"] for r in await stored(analytics_store)] == ["e1", "e2", "e3"]

    await analytics_store.execute("OPTIMIZE TABLE {db}.events FINAL")
    assert await physical_rows(analytics_store) == 3  # merged: one row each


async def test_memory_is_bounded(analytics_store: ChdbStore) -> None:
    log = EventLog(analytics_store, clock=FakeClock(NOW), memory=2)
    await log.ingest([event("a"), event("b"), event("c")])
    assert (await log.ingest([event("c")])).stored == 0
    assert (await log.ingest([event("a")])).stored == 1  # the oldest id was let go
    assert len(await stored(analytics_store)) == 3


class FlakyStore:
    """An analytics store whose inserts fail while ``down``."""

    def __init__(self, store: ChdbStore) -> None:
        self.store = store
        self.database = store.database
        self.down = True

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        await self.store.execute(sql, params)

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        if self.down:
            raise StoreError("Connection refused")
        await self.store.insert_into(table_name, table)


async def test_a_failed_insert_is_not_remembered(analytics_store: ChdbStore) -> None:
    flaky = FlakyStore(analytics_store)
    log = EventLog(cast(ChdbStore, flaky), clock=FakeClock(NOW))
    with pytest.raises(StoreError):
        await log.ingest([event("e1")])
    flaky.down = False
    assert (await log.ingest([event("e1")])).stored == 1
    assert [r["id"] for r in await stored(analytics_store)] == ["e1"]


class CountingStore(FlakyStore):
    """Counts the inserts, and fails them while ``down``."""

    def __init__(self, store: ChdbStore) -> None:
        super().__init__(store)
        self.down = False
        self.inserts: list[int] = []

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        self.inserts.append(table.num_rows)
        await super().insert_into(table_name, table)


async def test_concurrent_requests_share_inserts(analytics_store: ChdbStore) -> None:
    """Requests that arrive while an insert runs go together into the next one."""
    counting = CountingStore(analytics_store)
    log = EventLog(cast(ChdbStore, counting), clock=FakeClock(NOW))
    await log.setup()
    done = await asyncio.gather(*(log.ingest([event(f"e{i:02d}")]) for i in range(20)))
    assert [d.stored for d in done] == [1] * 20
    assert sum(counting.inserts) == 20
    assert len(counting.inserts) <= 2  # 20 requests, one or two inserts
    assert len(await stored(analytics_store)) == 20
    # Same event from two requests in one insert: one row.
    await asyncio.gather(log.ingest([event("x")]), log.ingest([event("x")]))
    assert len(await stored(analytics_store)) == 21

    counting.down = True
    results = await asyncio.gather(
        *(log.ingest([event(f"f{i}")]) for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StoreError) for r in results)  # every waiter hears of it
    counting.down = False
    assert (await log.ingest([event(f"f{i}") for i in range(5)])).stored == 5  # not remembered
    assert len(await stored(analytics_store)) == 26


async def test_an_invalid_batch_stores_nothing(analytics_store: ChdbStore) -> None:
    log = EventLog(analytics_store, clock=FakeClock(NOW))
    with pytest.raises(InvalidEvent):
        await log.ingest([event("e1"), event("e2", subject="")])
    await log.setup()
    assert await stored(analytics_store) == []


async def test_the_table_keeps_rows_for_the_retention(analytics_store: ChdbStore) -> None:
    await EventLog(analytics_store, retention_days=30).setup()
    rows = await analytics_store.query(
        "SELECT engine, create_table_query AS q FROM system.tables "
        "WHERE database = {db:String} AND name = 'events'",
        {"db": analytics_store.database},
    )
    assert rows[0]["engine"] == "ReplacingMergeTree"
    assert "ORDER BY (type, source, id)" in rows[0]["q"]
    assert "TTL time + toIntervalDay(30)" in rows[0]["q"]
    with pytest.raises(ValueError, match="retention_days"):
        EventLog(analytics_store, retention_days=0)


_RESTART = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from hoodrun.metering.events import EventLog
    from hoodrun.telemetry.store import ChdbStore

    async def main():
        store = ChdbStore(Path(sys.argv[1]), "restart")
        log = EventLog(store)
        done = await log.ingest(json.loads(sys.argv[2]))
        rows = await store.query("SELECT id FROM {db}.events FINAL ORDER BY id")
        raw = await store.query("SELECT count() AS n FROM {db}.events")
        print(json.dumps({"stored": done.stored, "ids": [r["id"] for r in rows],
                          "rows": int(raw[0]["n"])}))
        await store.aclose()

    asyncio.run(main())
    """
)


def _process(path: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _RESTART, str(path), json.dumps(events)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_duplicate_counts_once_across_a_process_restart(tmp_path: Path) -> None:
    """Two processes, one after the other, on one chDB directory (this test process already
    holds another: chDB allows one per process)."""
    path = tmp_path / "analytics"
    first = _process(path, [event("e1"), event("e2")])
    assert first == {"stored": 2, "ids": ["e1", "e2"], "rows": 2}
    second = _process(path, [event("e2", data={"tokens": 5}), event("e3"), event("e1")])
    # The new process remembers nothing, so it writes all three; reads still see one of each.
    assert second == {"stored": 3, "ids": ["e1", "e2", "e3"], "rows": 5}


async def test_the_clickhouse_server_store_inserts_by_column_name() -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    class Driver:
        def insert_arrow(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("insert_arrow", args, kwargs))

        def close(self) -> None:
            pass

    store = ClickHouseStore("http://ch:8123", "metrics", lambda **_: Driver())
    table = events_table(parse_events([event()], NOW), NOW)
    await store.insert_into("events", table)
    assert calls == [
        ("insert_arrow", ("metrics.events", table), {"settings": {"optimize_on_insert": 0}})
    ]
    with pytest.raises(StoreError, match="not a valid table or column name"):
        await store.insert_into("events; DROP TABLE x", table)
    await store.aclose()


async def test_the_chdb_store_refuses_a_bad_column_name(analytics_store: ChdbStore) -> None:
    with pytest.raises(StoreError, match="not a valid table or column name"):
        await analytics_store.insert_into("events", pa.table({"id; --": ["x"]}))


# --- POST /api/v1/events -------------------------------------------------------------------------


class BrokenStore:
    database = "broken"

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise StoreError("Connection refused")

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        raise StoreError("Connection refused")

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        raise StoreError("Connection refused")


def api(service: MeterService, token: str | None = TOKEN) -> httpx.AsyncClient:
    app = create_api_app(Config(), cast(KeyService, None), token=token, meters=service)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def post(client: httpx.AsyncClient, body: Any, content_type: str) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post("/api/v1/events", content=raw, headers={"content-type": content_type})


async def test_the_three_content_types(analytics_store: ChdbStore) -> None:
    service = MeterService(analytics_store, clock=FakeClock(NOW))
    async with api(service) as client:
        one = await post(client, event("e1"), "application/cloudevents+json")
        batch = await post(client, [event("e2"), event("e3")], "application/cloudevents-batch+json")
        plain_one = await post(client, event("e4"), "application/json; charset=utf-8")
        plain_many = await post(client, [event("e5"), event("e1")], "application/json")
        empty = await post(client, [], "application/cloudevents-batch+json")
    for answer in (one, batch, plain_one, plain_many, empty):
        assert answer.status_code == 204, answer.text
        assert answer.content == b""
    assert [r["id"] for r in await stored(analytics_store)] == ["e1", "e2", "e3", "e4", "e5"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "detail"),
    [
        (event(subject=None), "application/cloudevents+json", 400, "subject: required"),
        ([event("a"), event("b", time="soon")], "application/json", 400, "[1].time: must be"),
        ([event()], "application/cloudevents+json", 400, "is one event, a JSON object"),
        (event(), "application/cloudevents-batch+json", 400, "is a JSON array of events"),
        (b'{"id": ', "application/json", 400, "the body is not JSON"),
        ("just text", "application/json", 400, "an event is a JSON object"),
        (event(), "text/plain", 415, "not text/plain"),
        (event(), "application/x-www-form-urlencoded", 415, "send events as"),
    ],
)
async def test_refusals_are_problems(
    analytics_store: ChdbStore, body: Any, content_type: str, status: int, detail: str
) -> None:
    service = MeterService(analytics_store, clock=FakeClock(NOW))
    async with api(service) as client:
        answer = await post(client, body, content_type)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "about:blank" and problem["status"] == status
    assert problem["instance"] == "/api/v1/events"
    assert detail in problem["detail"]
    await service.events.setup()
    assert await stored(analytics_store) == []  # nothing of a refused batch


async def test_a_body_over_the_limit_is_413(
    analytics_store: ChdbStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hoodrun.api.openmeter.MAX_BODY_BYTES", 100)
    body = orjson.dumps([event(str(i)) for i in range(5)])

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the body is read first
        yield body

    async with api(MeterService(analytics_store)) as client:
        declared = await post(client, body, "application/json")
        streamed = await client.post(
            "/api/v1/events", content=chunks(), headers={"content-type": "application/json"}
        )
    for answer in (declared, streamed):
        assert answer.status_code == 413 and "send smaller batches" in answer.json()["detail"]
    assert "content-length" not in streamed.request.headers


async def test_the_admin_token_is_needed_and_refusals_are_problems() -> None:
    service = MeterService(cast(ChdbStore, BrokenStore()))
    async with api(service) as client:
        missing = await client.post("/api/v1/events", json=event(), headers={"Authorization": ""})
        wrong = await client.post(
            "/api/v1/events", json=event(), headers={"Authorization": "Bearer nope"}
        )
        admin = await client.get("/admin/v1/keys", headers={"Authorization": "Bearer nope"})
    for answer in (missing, wrong):
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["title"] == "Unauthorized"
    assert wrong.json()["detail"] == "the admin token is not valid"
    # The other routes keep the admin API's format.
    assert admin.status_code == 401
    assert admin.json() == {
        "error": {"code": "unauthorized", "message": "the admin token is not valid"}
    }
    async with api(service, token=None) as client:
        disabled = await post(client, event(), "application/json")
    assert disabled.status_code == 401 and "no token" in disabled.json()["detail"]


async def test_a_store_that_is_down_is_503() -> None:
    async with api(MeterService(cast(ChdbStore, BrokenStore()))) as client:
        answer = await post(client, [event()], "application/cloudevents-batch+json")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "the analytics store failed: Connection refused"

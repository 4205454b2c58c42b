"""Log lines checked and normalized field by field, and the ingestor's write: group commit on
chDB, retries while the store fails, giving up in the end, daily quotas seeded from the store,
and a close that writes what is queued. Without HTTP (``test_logs_api.py`` has the routes)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack  # type: ignore[import-untyped]
import orjson
import pytest

from hoodrun.api.projects import ProjectScope
from hoodrun.explorer.config import LogPlanLimits
from hoodrun.explorer.ingest import LogIngestor, PlanLimits, plan_limits
from hoodrun.explorer.lines import (
    FieldError,
    InvalidLogs,
    KeyRequired,
    LogsClosed,
    MalformedBody,
    QuotaExceeded,
    StoreUnavailable,
    UnsupportedContentType,
    body_lines,
    decode_body,
    normalize_level,
    parse_logs,
)
from hoodrun.telemetry.store import ChdbStore
from tests._stores import FakeClock

from .conftest import NOW, GatedStore, logs_config, physical_rows, reached, stored

SCOPE = ProjectScope("prj_a", "org_a", "key_a", "free")
NOW_US = int(NOW.timestamp()) * 1_000_000


def parse(items: list[Any], **options: Any) -> Any:
    settings = {"max_message_bytes": 1024, "retention_days": 7} | options
    return parse_logs(items, NOW, **settings)


def problems(items: list[Any], **options: Any) -> list[FieldError]:
    with pytest.raises(InvalidLogs) as refused:
        parse(items, **options)
    return refused.value.errors


def body(items: Any) -> bytes:
    return orjson.dumps(items)


# --- levels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("trace", "trace"), ("DEBUG", "debug"), ("Info", "info"), ("warn", "warn"),
        ("warning", "warn"), ("WARNING", "warn"), ("err", "error"), ("error", "error"),
        ("critical", "fatal"), ("crit", "fatal"), ("panic", "fatal"), ("emergency", "fatal"),
        ("emerg", "fatal"), ("alert", "fatal"), ("fatal", "fatal"), ("notice", "info"),
        ("severe", "error"), ("verbose", "debug"), ("finest", "trace"), (" error ", "error"),
        (0, "fatal"), (1, "fatal"), (2, "fatal"), (3, "error"), (4, "warn"), (5, "info"),
        (6, "info"), (7, "debug"), ("3", "error"),
        (10, "debug"), (20, "info"), (25, "info"), (30, "warn"), (40, "error"), (50, "fatal"),
    ],
)  # fmt: skip
def test_levels_are_normalized(given: Any, level: str) -> None:
    assert normalize_level(given) == level


@pytest.mark.parametrize("given", ["loud", "", "warnings", 8, 9, 60, -1, True, 3.0, "1000", None])
def test_other_levels_are_not_levels(given: Any) -> None:
    assert normalize_level(given) is None


def test_an_unknown_level_names_the_accepted_ones() -> None:
    (problem,) = problems([{"message": "m", "level": "loud"}])
    assert (problem.index, problem.field) == (0, "level")
    assert "'loud' is not a level" in problem.message
    assert "trace, debug, info, warn, error, fatal" in problem.message


# --- lines --------------------------------------------------------------------------------------


def test_a_minimal_line_gets_the_defaults() -> None:
    lines = parse([{"message": "hello"}, {"message": "again"}])
    assert lines.ts == [NOW_US, NOW_US]
    assert lines.level == ["info", "info"]
    assert lines.service == lines.stack == lines.trace_id == lines.span_id == ["", ""]
    assert lines.attributes == [[], []]
    assert len(set(lines.id)) == 2 and all(lines.id)  # generated, distinct


def test_every_field_is_kept() -> None:
    (line,) = [
        {
            "message": "payment failed",
            "level": "ERROR",
            "timestamp": "2026-01-01T10:00:00+02:00",
            "service": "billing",
            "id": "line-1",
            "stack": "Traceback ...",
            "attributes": {"order": 1234, "retry": True, "ratio": 0.5, "who": "bob", "gone": None},
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
        }
    ]
    lines = parse([line], retention_days=10_000)
    assert lines.ts == [int(datetime(2026, 1, 1, 8, tzinfo=UTC).timestamp()) * 1_000_000]
    assert (lines.level, lines.service, lines.id) == (["error"], ["billing"], ["line-1"])
    assert lines.stack == ["Traceback ..."]
    assert lines.attributes == [
        [("order", "1234"), ("retry", "true"), ("ratio", "0.5"), ("who", "bob")]
    ]
    assert (lines.trace_id, lines.span_id) == ([line["trace_id"]], [line["span_id"]])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (NOW.timestamp() - 60, NOW_US - 60_000_000),  # seconds
        (NOW.timestamp() - 60.25, NOW_US - 60_250_000),  # seconds with a fraction
        (int(NOW.timestamp() * 1000) - 5, NOW_US - 5000),  # milliseconds
        (NOW_US - 7, NOW_US - 7),  # microseconds
        ((NOW_US - 7) * 1000, NOW_US - 7),  # nanoseconds
        ((NOW - timedelta(hours=1)).isoformat(), NOW_US - 3_600_000_000),
        ((NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.123456Z"), NOW_US - 3_599_876_544),
    ],
)
def test_timestamps(value: Any, expected: int) -> None:
    assert parse([{"message": "m", "timestamp": value}]).ts == [expected]
    assert parse([{"message": "m", "ts": value}]).ts == [expected]


def test_a_msgpack_timestamp_is_a_time() -> None:
    raw = msgpack.packb([{"message": "m", "ts": NOW - timedelta(seconds=3)}], datetime=True)
    assert parse(decode_body(raw, "application/msgpack")).ts == [NOW_US - 3_000_000]


def test_long_texts_are_cut_and_the_cut_noted() -> None:
    lines = parse(
        [
            {"message": "é" * 600, "stack": "x" * 2000, "attributes": {"a": "y" * 1500}},
            {"message": "fits", "attributes": {"a": "y" * 1000}},
            {"message": "x" * 1025, "attributes": {"_truncated": "mine"}},
        ]
    )
    assert len(lines.message[0].encode()) == 1024 and lines.message[0] == "é" * 512
    assert lines.stack[0] == "x" * 1024
    assert dict(lines.attributes[0]) == {
        "a": "y" * 1024,
        "_truncated": "message,stack,attributes.a",
    }
    assert lines.message[1] == "fits" and dict(lines.attributes[1]) == {"a": "y" * 1000}
    assert lines.attributes[2] == [("_truncated", "message")]


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ({}, "message", "required"),
        ({"message": 5}, "message", "must be a string"),
        ({"message": "m", "level": []}, "level", "is not a level"),
        ({"message": "m", "timestamp": "yesterday"}, "timestamp", "RFC 3339"),
        ({"message": "m", "timestamp": True}, "timestamp", "RFC 3339"),
        ({"message": "m", "ts": "2026-01-01"}, "ts", "RFC 3339"),
        ({"message": "m", "ts": 1.0, "timestamp": 1.0}, "ts", "timestamp or ts, not both"),
        ({"message": "m", "ts": (NOW + timedelta(days=2)).isoformat()}, "ts", "in the future"),
        ({"message": "m", "ts": (NOW - timedelta(days=8)).isoformat()}, "ts", "older than the"),
        ({"message": "m", "id": ""}, "id", "1-128 characters"),
        ({"message": "m", "id": "x" * 129}, "id", "1-128 characters"),
        ({"message": "m", "id": 12}, "id", "1-128 characters"),
        ({"message": "m", "service": 3}, "service", "must be a string"),
        ({"message": "m", "trace_id": "t" * 300}, "trace_id", "at most 256"),
        ({"message": "m", "span_id": ["s"]}, "span_id", "must be a string"),
        ({"message": "m", "stack": {"frames": []}}, "stack", "must be a string"),
        ({"message": "m", "attributes": ["a"]}, "attributes", "an object of scalar values"),
        (
            {"message": "m", "attributes": {"http": {"status": 500}}},
            "attributes.http",
            "not object",
        ),
        ({"message": "m", "attributes": {"ids": [1, 2]}}, "attributes.ids", "not array"),
        (
            {"message": "m", "attributes": {f"k{i}": i for i in range(65)}},
            "attributes",
            "at most 64 keys",
        ),
        ({"message": "m", "project": "prj_other"}, "project", "the project is the API key's"),
        ({"message": "m", "msg": "x"}, "msg", "unknown field"),
    ],
)
def test_an_invalid_field_is_named_with_its_line(
    line: dict[str, Any], field: str, message: str
) -> None:
    found = problems([{"message": "fine"}, {"message": "fine too"}, line])
    assert len(found) == 1
    assert (found[0].index, found[0].field) == (2, field)
    assert message in found[0].message
    assert found[0].as_dict() == {"index": 2, "field": field, "message": found[0].message}


def test_every_problem_is_named_and_the_list_is_bounded() -> None:
    found = problems([{"level": "loud", "color": "red"}, "text", {"message": "ok"}])
    assert [(p.index, p.field) for p in found] == [
        (0, "color"), (0, "message"), (0, "level"), (1, None),
    ]  # fmt: skip
    with pytest.raises(InvalidLogs) as many:
        parse([{"nope": i} for i in range(300)])
    assert len(many.value.errors) == 100
    assert many.value.message.endswith("(and 597 more)")


def test_the_retention_bounds_the_past() -> None:
    old = (NOW - timedelta(days=20)).isoformat()
    assert problems([{"message": "m", "ts": old}], retention_days=7)[0].field == "ts"
    assert parse([{"message": "m", "ts": old}], retention_days=30).ts


# --- bodies -------------------------------------------------------------------------------------


def test_the_three_body_forms() -> None:
    line = {"message": "m"}
    assert body_lines(line) == [line]
    assert body_lines([line, line]) == [line, line]
    assert body_lines({"logs": [line]}) == [line]
    assert body_lines([]) == []


@pytest.mark.parametrize(
    ("value", "field"),
    [({"logs": "m"}, "logs"), ({"logs": [], "service": "x"}, "service"), ("text", None), (3, None)],
)
def test_other_bodies_are_refused(value: Any, field: str | None) -> None:
    with pytest.raises(InvalidLogs) as refused:
        body_lines(value)
    assert refused.value.errors[0].field == field and refused.value.errors[0].index is None


def test_content_types_and_parser_errors() -> None:
    assert decode_body(b'{"message": "m"}', "application/json; charset=utf-8") == {"message": "m"}
    packed = msgpack.packb({"message": "m"})
    assert decode_body(packed, "application/msgpack") == {"message": "m"}
    assert decode_body(packed, "Application/X-MsgPack") == {"message": "m"}
    with pytest.raises(UnsupportedContentType, match="not text/plain"):
        decode_body(b"m", "text/plain")
    with pytest.raises(UnsupportedContentType, match="no content type"):
        decode_body(b"m", "")
    with pytest.raises(MalformedBody, match="not JSON: unexpected end of data"):
        decode_body(b'{"message": ', "application/json")
    with pytest.raises(MalformedBody, match="not MessagePack"):
        decode_body(b"\xc1", "application/msgpack")
    with pytest.raises(MalformedBody, match="not MessagePack"):
        decode_body(packed + b"\x01", "application/msgpack")


def test_plans_override_the_defaults() -> None:
    config = logs_config(
        per_minute=10, plans={"pro": LogPlanLimits(per_minute=100, retention_days=30)}
    ).logs
    assert plan_limits(config, "pro") == PlanLimits(100, 50_000, 5_000_000, 30)
    assert plan_limits(config, "free") == PlanLimits(10, 50_000, 5_000_000, 7)


# --- the ingestor -------------------------------------------------------------------------------


async def test_lines_are_stored_with_their_project_and_expiry(
    logs_store: ChdbStore, clock: FakeClock
) -> None:
    async with LogIngestor(logs_store, logs_config(), clock=clock) as ingestor:
        lines = [
            {"message": "started", "id": "a"},
            {"message": "order 12 failed", "level": "error", "id": "b"},
        ]
        assert await ingestor.ingest(SCOPE, body(lines), "application/json") == 2
        assert ingestor.pending("prj_a") == 0 and ingestor.used_today("prj_a") == 2
    rows = await stored(logs_store)
    assert [(r["id"], r["project_id"], r["org_id"], r["key_id"]) for r in rows] == [
        ("a", "prj_a", "org_a", "key_a"), ("b", "prj_a", "org_a", "key_a"),
    ]  # fmt: skip
    assert {int(r["received_us"]) for r in rows} == {NOW_US}
    assert {int(r["expires_s"]) for r in rows} == {NOW_US // 1_000_000 + 7 * 86_400}
    assert rows[0]["fingerprint"] == ""  # info, no stack: not an error
    assert len(rows[1]["fingerprint"]) == 16


async def test_the_admin_scope_cannot_send_logs(logs_store: ChdbStore) -> None:
    async with LogIngestor(logs_store, logs_config()) as ingestor:
        with pytest.raises(KeyRequired):
            await ingestor.ingest(
                ProjectScope("prj_a", "", "", "", admin=True), body([]), "application/json"
            )


async def test_concurrent_requests_share_inserts(logs_store: ChdbStore) -> None:
    gated = GatedStore(logs_store)
    async with LogIngestor(gated, logs_config()) as ingestor:  # type: ignore[arg-type]
        gated.gate.clear()
        first = asyncio.ensure_future(
            ingestor.ingest(SCOPE, body([{"message": "first"}]), "application/json")
        )
        await reached(gated.waiting)  # the first insert runs (and waits)
        others = [
            asyncio.ensure_future(
                ingestor.ingest(SCOPE, body([{"message": f"m{i}"}] * 2), "application/json")
            )
            for i in range(10)
        ]
        await asyncio.sleep(0)
        assert ingestor.pending("prj_a") == 21  # waiting for their write: the queue's depth
        gated.gate.set()
        assert await first == 1
        assert await asyncio.gather(*others) == [2] * 10
        assert ingestor.pending("prj_a") == 0
    assert gated.inserts == [1, 20]  # ten requests, one insert
    assert len(await stored(logs_store)) == 21


async def test_a_failed_write_is_retried_and_the_request_waits_for_it(
    logs_store: ChdbStore,
) -> None:
    gated = GatedStore(logs_store)
    gated.down = True
    config = logs_config(flush_interval=0.01)
    async with LogIngestor(gated, config) as ingestor:  # type: ignore[arg-type]
        request = asyncio.ensure_future(
            ingestor.ingest(SCOPE, body([{"message": "m", "id": "x"}]), "application/json")
        )
        await reached(gated.failed)
        assert not request.done()  # still waiting: its lines are queued, to be tried again
        assert ingestor.pending("prj_a") == 1
        gated.down = False
        assert await request == 1
    assert gated.attempts >= 2
    assert [r["id"] for r in await stored(logs_store)] == ["x"]
    assert await physical_rows(logs_store) == 1


async def test_a_store_down_past_the_timeout_answers_store_unavailable(
    logs_store: ChdbStore, clock: FakeClock
) -> None:
    gated = GatedStore(logs_store)
    gated.down = True
    config = logs_config(flush_interval=0.01)
    async with LogIngestor(gated, config, clock=clock, write_timeout=0.05) as ingestor:  # type: ignore[arg-type]
        with pytest.raises(StoreUnavailable) as refused:
            await ingestor.ingest(SCOPE, body([{"message": "m"}] * 3), "application/json")
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        assert ingestor.pending("prj_a") == 0
        assert ingestor.used_today("prj_a") == 0  # not stored: not counted
    assert gated.attempts >= 1
    assert await stored(logs_store) == []


async def test_the_quota_is_seeded_from_the_store_and_resets_at_midnight(
    logs_store: ChdbStore, clock: FakeClock
) -> None:
    config = logs_config(daily_lines=5)
    async with LogIngestor(logs_store, config, clock=clock) as first:
        await first.ingest(SCOPE, body([{"message": "m"}] * 3), "application/json")
        other = ProjectScope("prj_b", "org_a", "key_b", "free")
        await first.ingest(other, body([{"message": "m"}]), "application/json")
    async with LogIngestor(logs_store, config, clock=clock) as restarted:
        assert restarted.used_today("prj_a") == 3 and restarted.used_today("prj_b") == 1
        with pytest.raises(QuotaExceeded) as refused:
            await restarted.ingest(SCOPE, body([{"message": "m"}] * 3), "application/json")
        assert refused.value.retry_after == 12 * 3600  # until midnight UTC
        assert await restarted.ingest(SCOPE, body([{"message": "m"}] * 2), "application/json") == 2
        clock.advance(timedelta(hours=12))  # midnight: a new day
        assert restarted.used_today("prj_a") == 0
        assert await restarted.ingest(SCOPE, body([{"message": "m"}] * 5), "application/json") == 5
    clock.advance(timedelta(hours=1))
    async with LogIngestor(logs_store, config, clock=clock) as next_day:
        assert next_day.used_today("prj_a") == 5  # today's lines only


async def test_close_writes_what_is_queued_then_refuses(logs_store: ChdbStore) -> None:
    gated = GatedStore(logs_store)
    ingestor = LogIngestor(gated, logs_config())  # type: ignore[arg-type]
    with pytest.raises(LogsClosed):
        await ingestor.ingest(SCOPE, body([{"message": "m"}]), "application/json")
    await ingestor.start()
    gated.gate.clear()
    requests = [
        asyncio.ensure_future(
            ingestor.ingest(SCOPE, body([{"message": f"m{i}"}]), "application/json")
        )
        for i in range(3)
    ]
    await reached(gated.waiting)
    closing = asyncio.ensure_future(ingestor.aclose())
    await asyncio.sleep(0)
    with pytest.raises(LogsClosed):
        await ingestor.ingest(SCOPE, body([{"message": "late"}]), "application/json")
    gated.gate.set()
    await closing
    assert await asyncio.gather(*requests) == [1, 1, 1]
    assert sorted(r["message"] for r in await stored(logs_store)) == ["m0", "m1", "m2"]


async def test_a_request_that_goes_away_leaves_its_lines_to_be_written(
    logs_store: ChdbStore,
) -> None:
    gated = GatedStore(logs_store)
    async with LogIngestor(gated, logs_config()) as ingestor:  # type: ignore[arg-type]
        gated.gate.clear()
        request = asyncio.ensure_future(
            ingestor.ingest(SCOPE, body([{"message": "m"}]), "application/json")
        )
        await reached(gated.waiting)
        request.cancel()
        gated.gate.set()
    assert [r["message"] for r in await stored(logs_store)] == ["m"]

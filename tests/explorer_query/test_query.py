"""Log queries on chDB: each filter, full-text search, paging, isolation between projects, top
errors, 5-minute windows, volume, daily lines and de-duplication, against rows known exactly."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from hoodrun.explorer.query import (
    LogFilter,
    LogQuery,
    _where,
    decode_cursor,
    encode_cursor,
    iso,
    parse_attributes,
    parse_levels,
    time_range,
)
from hoodrun.explorer.schema import LEVELS
from hoodrun.telemetry.store import ChdbStore
from tests.explorer_query.support import at, insert_lines, line

A, B = "prj_a", "prj_b"


def lines_of(project: str) -> list[dict[str, Any]]:
    """Eight lines on day 1, 10:00-11:00; the same ids and texts in every project."""
    p = {"project": project}
    return [
        line(at(1, 10), "a1", "User login ok", attributes={"env": "prod", "region": "eu"}, **p),
        line(at(1, 10, 1), "a2", "Slow query on db-1 took 900ms", level="warn",
             attributes={"env": "prod"}, **p),
        line(at(1, 10, 2, 30), "a3", "Connection refused by db-1", level="error",
             service="worker", fingerprint="f1", attributes={"env": "staging"}, **p),
        line(at(1, 10, 4, 59.999999), "a4", "connection REFUSED by db-2", level="error",
             fingerprint="f1", **p),
        line(at(1, 10, 5), "a5", "Out of memory", level="fatal", service="worker",
             fingerprint="f2", **p),
        line(at(1, 10, 12), "a6", "cache miss user=42", level="debug", service="worker", **p),
        line(at(1, 10, 13), "a7", "entering handler", level="trace", **p),
        line(at(1, 11), "a8", "Timeout calling upstream", level="error", fingerprint="f3", **p),
    ]  # fmt: skip


@pytest.fixture
async def logs(analytics: ChdbStore) -> LogQuery:
    await insert_lines(analytics, lines_of(A))
    await insert_lines(analytics, lines_of(B)[2:5])  # another project's errors at the same times
    return LogQuery(analytics)


DAY = (at(1), at(2))


async def ids(
    logs: LogQuery, project: str = A, span: tuple[datetime, datetime] = DAY, **filters: Any
) -> list[str]:
    found = await logs.search(
        project, start=span[0], end=span[1], filters=LogFilter.parse(**filters)
    )
    return [row["id"] for row in found["rows"]]


# --- filters ------------------------------------------------------------------------------------


async def test_search_returns_the_lines_newest_first(logs: LogQuery) -> None:
    found = await logs.search(A, start=at(1), end=at(2))
    assert [row["id"] for row in found["rows"]] == ["a8", "a7", "a6", "a5", "a4", "a3", "a2", "a1"]
    assert found["next_cursor"] is None and found["project"] == A
    a4 = found["rows"][4]
    assert a4 == {
        "ts": iso(at(1, 10, 4, 59.999999)),
        "id": "a4",
        "level": "error",
        "service": "api",
        "message": "connection REFUSED by db-2",
        "fingerprint": "f1",
        "stack": "",
        "attributes": {},
        "trace_id": "",
        "span_id": "",
        "key_id": "key_a",
    }
    assert a4["ts"].endswith(".999999Z")
    assert found["rows"][-1]["attributes"] == {"env": "prod", "region": "eu"}


async def test_level_filters(logs: LogQuery) -> None:
    assert await ids(logs, level="error") == ["a8", "a4", "a3"]
    assert await ids(logs, level="warn, fatal") == ["a5", "a2"]
    assert await ids(logs, level=">=warn") == ["a8", "a5", "a4", "a3", "a2"]
    assert await ids(logs, level=">=trace") == await ids(logs)
    assert await ids(logs, level="ERROR") == ["a8", "a4", "a3"]


async def test_service_filter(logs: LogQuery) -> None:
    assert await ids(logs, service="worker") == ["a6", "a5", "a3"]
    assert await ids(logs, service="worker,api", level="fatal") == ["a5"]
    assert await ids(logs, service="nope") == []


async def test_time_range_takes_its_start_and_not_its_end(logs: LogQuery) -> None:
    span = (at(1, 10, 2, 30), at(1, 10, 5))
    assert await ids(logs, span=span) == ["a4", "a3"]
    assert await ids(logs, span=(at(1, 10, 4, 59.999999), at(1, 10, 5, 0.000001))) == ["a5", "a4"]
    assert await ids(logs, span=(at(2), at(3))) == []


async def test_attribute_filters(logs: LogQuery) -> None:
    assert await ids(logs, attributes={"env": "prod"}) == ["a2", "a1"]
    assert await ids(logs, attributes={"env": "prod", "region": "eu"}) == ["a1"]
    assert await ids(logs, attributes={"env": "staging"}, level="error") == ["a3"]
    assert await ids(logs, attributes={"region": ""}) == []  # a missing key is not ''
    assert await ids(logs, attributes={"env": "dev"}) == []


# --- full-text ----------------------------------------------------------------------------------


async def test_words_must_all_appear_as_whole_tokens(logs: LogQuery) -> None:
    assert await ids(logs, q="refused") == ["a4", "a3"]
    assert await ids(logs, q="REFUSED connection") == ["a4", "a3"]
    assert await ids(logs, q="refused memory") == []
    assert await ids(logs, q="refuse") == []  # a token, not a part of one
    assert await ids(logs, q="db") == ["a4", "a3", "a2"]  # db-1 holds the tokens db and 1
    assert await ids(logs, q="refused", level="error", service="worker") == ["a3"]
    assert await ids(logs, q="   ") == await ids(logs)


async def test_phrases_and_punctuated_words_match_as_substrings(logs: LogQuery) -> None:
    assert await ids(logs, q='"refused by db-1"') == ["a3"]
    assert await ids(logs, q='"Connection Refused"') == ["a4", "a3"]
    assert await ids(logs, q='"used by db"') == ["a4", "a3"]  # inside a token too
    assert await ids(logs, q='"connection refused" db-2') == ["a4"]
    assert await ids(logs, q="db-1") == ["a3", "a2"]
    assert await ids(logs, q="user=42") == ["a6"]
    assert await ids(logs, q='"refused by db-3"') == []
    assert await ids(logs, q='refused "out of"') == []


def test_query_terms() -> None:
    words, texts = LogFilter(q='Foo "Bar baz" x-y  foo').terms()
    assert words == ("foo",) and texts == ("Bar baz", "x-y")
    with pytest.raises(ValueError, match="closing quote"):
        LogFilter.parse(q='"unclosed')
    with pytest.raises(ValueError, match="at most 16"):
        LogFilter.parse(q=" ".join(f"w{i}" for i in range(17)))


# --- paging -------------------------------------------------------------------------------------


async def test_pages_have_no_gaps_or_repeats_even_when_lines_arrive(analytics: ChdbStore) -> None:
    # Three lines share each time: the cursor must tell them apart by id.
    first = [line(at(1, 12, 0, i // 3), f"p{(i * 37) % 230:03d}") for i in range(230)]
    await insert_lines(analytics, first)
    logs = LogQuery(analytics)
    seen: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    while True:
        page = await logs.search(A, start=at(1), end=at(2), limit=40, cursor=cursor)
        seen += [(row["ts"], row["id"]) for row in page["rows"]]
        pages += 1
        if pages == 1:  # newer and older lines arrive while the list is read
            newer = [line(at(1, 13, i), f"n{i}") for i in range(5)]
            older = [line(at(1, 11, i), f"o{i}") for i in range(3)]
            await insert_lines(analytics, newer + older)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = sorted(
        [(iso(row["ts"]), row["id"]) for row in first]
        + [(iso(at(1, 11, i)), f"o{i}") for i in range(3)],
        reverse=True,
    )
    assert seen == expected  # newest first, each once; the newer lines come before the cursor
    assert pages == 6 and len(seen) == 233


async def test_a_cursor_is_opaque_and_checked(logs: LogQuery) -> None:
    page = await logs.search(A, start=at(1), end=at(2), limit=3)
    assert [row["id"] for row in page["rows"]] == ["a8", "a7", "a6"]
    cursor = page["next_cursor"]
    assert isinstance(cursor, str) and "a6" not in cursor
    assert decode_cursor("logs", cursor, (int, str))[1] == "a6"
    rest = await logs.search(A, start=at(1), end=at(2), limit=5, cursor=cursor)
    assert [row["id"] for row in rest["rows"]] == ["a5", "a4", "a3", "a2", "a1"]
    assert rest["next_cursor"] is None
    for bad in ("nope", encode_cursor("requests", 1, "x", 0), encode_cursor("logs", "1", "x"), ""):
        with pytest.raises(ValueError, match="cursor"):
            await logs.search(A, start=at(1), end=at(2), cursor=bad)


# --- isolation ----------------------------------------------------------------------------------


async def test_a_project_never_sees_another_projects_lines(logs: LogQuery) -> None:
    assert await ids(logs, B) == ["a5", "a4", "a3"]
    b = await logs.search(B, start=at(1), end=at(2))
    assert {row["key_id"] for row in b["rows"]} == {"key_b"}
    a = await logs.search(A, start=at(1), end=at(2))
    assert {row["key_id"] for row in a["rows"]} == {"key_a"}
    top = await logs.top_errors(A, start=at(1), end=at(2))
    assert sum(row["count"] for row in top["rows"]) == 4
    rate = await logs.error_rate(A, start=at(1, 10), end=at(1, 10, 5))
    assert rate["rows"][0]["total"] == 4
    assert (await logs.volume(B, start=at(1), end=at(2)))["total"] == 3
    assert (await logs.daily(C := "prj_c", start=at(1), end=at(2)))["total"] == 0, C
    with pytest.raises(ValueError, match="project id is required"):
        await logs.search("", start=at(1), end=at(2))


# --- top errors, rate, volume, daily ------------------------------------------------------------


async def test_top_errors_by_fingerprint(logs: LogQuery) -> None:
    top = await logs.top_errors(A, start=at(1), end=at(2))
    rows = top["rows"]
    assert [(r["fingerprint"], r["count"], r["fatal"]) for r in rows] == [
        ("f1", 2, 0),
        ("f2", 1, 1),
        ("f3", 1, 0),
    ]
    f1 = rows[0]
    assert f1["first_seen"] == iso(at(1, 10, 2, 30))
    assert f1["last_seen"] == iso(at(1, 10, 4, 59.999999))
    assert f1["sample"] == "connection REFUSED by db-2"  # the latest
    assert set(f1["services"]) == {"api", "worker"}
    limited = await logs.top_errors(A, start=at(1), end=at(1, 10, 4), limit=1)
    assert [(r["fingerprint"], r["count"]) for r in limited["rows"]] == [("f1", 1)]
    assert limited["rows"][0]["last_seen"] == iso(at(1, 10, 2, 30))
    fatal = await logs.top_errors(A, start=at(1), end=at(2), filters=LogFilter(levels=("fatal",)))
    assert [r["fingerprint"] for r in fatal["rows"]] == ["f2"]
    with pytest.raises(ValueError, match="error and fatal"):
        await logs.top_errors(A, start=at(1), end=at(2), filters=LogFilter(levels=("warn",)))


async def test_error_rate_per_five_minutes(logs: LogQuery) -> None:
    rate = await logs.error_rate(A, start=at(1, 10), end=at(1, 10, 20))
    assert rate["every"] == "5m"
    assert [(r["window"], r["total"], r["errors"], r["rate"]) for r in rate["rows"]] == [
        (iso(at(1, 10)), 4, 2, 0.5),  # 10:04:59.999999 is still the first window
        (iso(at(1, 10, 5)), 1, 1, 1.0),  # fatal counts as an error
        (iso(at(1, 10, 10)), 2, 0, 0.0),
        (iso(at(1, 10, 15)), 0, 0, 0.0),
    ]
    # A range starting inside a window counts that window's part within it.
    cut = await logs.error_rate(A, start=at(1, 10, 2), end=at(1, 10, 6))
    assert [(r["window"], r["total"], r["errors"]) for r in cut["rows"]] == [
        (iso(at(1, 10)), 2, 2),
        (iso(at(1, 10, 5)), 1, 1),
    ]
    worker = await logs.error_rate(
        A, start=at(1, 10), end=at(1, 10, 5), filters=LogFilter(services=("worker",))
    )
    assert [(r["total"], r["errors"]) for r in worker["rows"]] == [(1, 1)]
    with pytest.raises(ValueError, match="every level"):
        await logs.error_rate(A, start=at(1), end=at(2), filters=LogFilter(levels=("error",)))
    with pytest.raises(ValueError, match="at most 10000"):
        await logs.error_rate(A, start=at(-40), end=at(1))


async def test_volume_by_level(logs: LogQuery) -> None:
    volume = await logs.volume(A, start=at(1), end=at(2))
    assert volume["rows"] == [
        {"level": "trace", "lines": 1},
        {"level": "debug", "lines": 1},
        {"level": "info", "lines": 1},
        {"level": "warn", "lines": 1},
        {"level": "error", "lines": 3},
        {"level": "fatal", "lines": 1},
    ]
    assert volume["total"] == 8
    errors = await logs.volume(A, start=at(1), end=at(2), filters=LogFilter.parse(level=">=error"))
    assert errors["rows"] == [{"level": "error", "lines": 3}, {"level": "fatal", "lines": 1}]


async def test_daily_lines(analytics: ChdbStore, logs: LogQuery) -> None:
    await insert_lines(analytics, [line(at(0, 23, 59, 59.5), "d0"), line(at(2, 0), "d2")])
    daily = await logs.daily(A, start=at(0), end=at(3))
    assert daily["rows"] == [
        {"day": at(0).date().isoformat(), "lines": 1},
        {"day": at(1).date().isoformat(), "lines": 8},
        {"day": at(2).date().isoformat(), "lines": 1},
    ]
    assert daily["total"] == 10
    start, end = logs.day_bounds(None, iso(at(3)))
    assert (start, end) == (at(-4), at(3))  # the last 7 UTC days


# --- de-duplication -----------------------------------------------------------------------------


async def test_a_line_sent_twice_counts_once(analytics: ChdbStore, logs: LogQuery) -> None:
    await insert_lines(analytics, lines_of(A))  # the whole batch again (a retry)
    await insert_lines(analytics, lines_of(A)[2:4])  # and part of it a third time
    assert await ids(logs) == ["a8", "a7", "a6", "a5", "a4", "a3", "a2", "a1"]
    top = await logs.top_errors(A, start=at(1), end=at(2))
    assert [r["count"] for r in top["rows"]] == [2, 1, 1]
    assert (await logs.volume(A, start=at(1), end=at(2)))["total"] == 8
    assert (await logs.daily(A, start=at(1), end=at(2)))["total"] == 8
    rate = await logs.error_rate(A, start=at(1, 10), end=at(1, 10, 5))
    assert rate["rows"][0]["total"] == 4


# --- parameters ---------------------------------------------------------------------------------


def test_levels_and_attributes_from_text() -> None:
    assert parse_levels(">=error") == ("error", "fatal")
    assert parse_levels("info,info, warn") == ("info", "warn")
    assert parse_levels(None) == parse_levels("") == ()
    assert parse_levels(">=trace") == LEVELS
    for bad, message in ((">=loud", "'loud' is not a level"), ("info,oops", "'oops'")):
        with pytest.raises(ValueError, match=message):
            parse_levels(bad)
    assert parse_attributes(["env=prod", "a=b=c", "empty="]) == {
        "env": "prod",
        "a": "b=c",
        "empty": "",
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_attributes(["novalue"])


async def test_argument_errors(logs: LogQuery) -> None:
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="limit must be between 1 and 1000"):
            await logs.search(A, start=at(1), end=at(2), limit=limit)
    with pytest.raises(ValueError, match="must be before"):
        await logs.search(A, start=at(2), end=at(1))
    with pytest.raises(ValueError, match="timezone-aware"):
        await logs.volume(A, start=at(1).replace(tzinfo=None), end=at(2))
    now = at(5)
    assert time_range("24h", None, now=now) == (now - timedelta(hours=24), now)
    assert time_range(None, "2026-01-02", now=now)[1].isoformat() == "2026-01-02T00:00:00+00:00"
    with pytest.raises(ValueError, match="is not a time"):
        time_range("yesterday", None, now=now)


async def test_time_ranges_prune_partitions(analytics: ChdbStore) -> None:
    """Lines of three days sit in three partitions; a one-day range reads only its own."""
    await insert_lines(analytics, [line(at(day, 12), f"x{day}") for day in range(3)])
    logs = LogQuery(analytics)
    where, params = _where(A, at(1), at(2), LogFilter())
    plan = await analytics.query(
        f"EXPLAIN indexes = 1 SELECT id FROM {{db}}.logs WHERE {where}",  # noqa: S608
        params,
    )
    text = "\n".join(row["explain"] for row in plan)
    assert "Partition" in text and "Parts: 1/3" in text, text
    assert await ids(logs, span=(at(1), at(2))) == ["x1"]

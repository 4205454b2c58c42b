"""Usage reports on chDB: exact totals, raw rows and rollups in agreement, the API and the CLI.

The rows are dated within the last few days (the raw table's TTL runs on the real clock), and the
reports get an injected clock so each test decides what "now" is.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pyarrow as pa
import pytest
import typer
import yaml
from typer.testing import CliRunner

from hoodrun.api.app import create_api_app
from hoodrun.cli import _root
from hoodrun.cli.usage import usage_command
from hoodrun.config import Config
from hoodrun.keys.service import KeyService
from hoodrun.store import Store
from hoodrun.telemetry.pipeline import hours_of
from hoodrun.telemetry.reporting import Reports, parse_time
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.store import ChdbStore, StoreError
from hoodrun.telemetry.units import ComputeUnits
from tests._stores import sqlite_template  # noqa: F401 (fixture)
from tests.telemetry.support import call_record

_today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
DAY0 = _today - timedelta(days=3)
NOW = DAY0 + timedelta(days=3, hours=12)  # the reports' clock, unless a test moves it
END = DAY0 + timedelta(days=3)
SUMS = ("requests", "compute_units", "errors", "bytes_in", "bytes_out", "cache_hits")
TOKEN = "usage-test-token"


def at(day: int, hour: int, minute: int = 0, second: float = 0) -> float:
    return (DAY0 + timedelta(days=day, hours=hour, minutes=minute, seconds=second)).timestamp()


_FIELDS = {
    "key_id": "key_a",
    "org_id": "org_a",
    "project_id": "prj_a",
    "client_ip": "203.0.113.9",
    "latency": 0.010,
    "upstream": "eth-0",
    "upstream_latency": 0.008,
    "bytes_in": 100,
    "bytes_out": 300,
}


def rec(ts: float, rid: str, method: str = "eth_call", **changes: Any) -> RequestRecord:
    return call_record(rid, ts=ts, method=method, **{**_FIELDS, **changes})


def records(org: str = "org_a", project: str = "prj_a") -> list[RequestRecord]:
    refused = {"status": 429, "reason": "rate_limited", "error_code": -32005}
    b = {"chain": "base", "org_id": "org_b", "project_id": "prj_b", "key_id": "key_b"}
    mine = {"org_id": org, "project_id": project}
    return [
        rec(at(0, 10, 5), "r01", cache_hit=True, **mine),
        rec(at(0, 10, 20), "r02", latency=0.020, **mine),
        rec(at(0, 10, 40), "r03", "eth_getLogs", error_code=-32000, latency=0.030, **mine),
        rec(at(0, 10, 50), "r04", **refused, **mine),
        rec(at(0, 11, 10), "r05", "eth_blockNumber", cache_hit=True, latency=0.005, **b),
        rec(at(0, 11, 59, 59.999), "r06", "eth_blockNumber", bytes_in=50, **b),
        rec(
            at(1, 3, 30),
            "r07",
            "batch",
            methods=("eth_call", "eth_sendRawTransaction", "eth_getBalance"),
            calls=3,
            call_results=((0, None), (-32004, "method_not_allowed"), (0, None)),
            key_id="key_a2",
            latency=0.040,
            **mine,
        ),
        rec(at(1, 23), "r08", "eth_getLogs", error_code=-32000, **mine),
        rec(
            at(2, 0),
            "r09",
            chain="base",
            status=401,
            reason="key_invalid",
            error_code=-32001,
            org_id=None,
            project_id=None,
            key_id=None,
        ),
        rec(at(2, 9, 15), "r10", **mine),
    ]


@dataclass
class Loaded:
    store: ChdbStore
    rows: list[dict[str, Any]]  # what went in, once each

    def reports(self, now: datetime = NOW) -> Reports:
        return Reports(self.store, clock=lambda: now)


async def load(store: ChdbStore, items: list[RequestRecord]) -> list[dict[str, Any]]:
    table: pa.Table = RowBuilder(ComputeUnits()).table(items)
    await store.insert(table)
    await store.insert(table.slice(0, 4))  # written twice: a replay must count once
    rollups = Rollups(store)
    rollups.mark(hours_of(table))
    await rollups.run()
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


@pytest.fixture
async def loaded(analytics_store: ChdbStore) -> Loaded:
    return Loaded(analytics_store, await load(analytics_store, records()))


# --- what the reports should say, from the rows that went in --------------------------------


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def floor(value: datetime, every: str) -> datetime:
    if every == "day":
        return value.replace(hour=0, minute=0, second=0, microsecond=0)
    if every == "hour":
        return value.replace(minute=0, second=0, microsecond=0)
    return value.replace(second=0, microsecond=0)


def expected(
    rows: Iterable[dict[str, Any]],
    by: tuple[str, ...] = (),
    every: str | None = None,
    start: datetime = DAY0,
    end: datetime = END,
    **filters: str,
) -> dict[tuple[Any, ...], Counter[str]]:
    out: dict[tuple[Any, ...], Counter[str]] = {}
    for row in rows:
        if not start <= row["ts"] < end or any(row[c] != v for c, v in filters.items()):
            continue
        group = tuple(row[c] for c in by)
        if every:
            group = (iso(floor(row["ts"], every)), *group)
        sums = out.setdefault(group, Counter())
        sums.update(
            requests=1,
            compute_units=row["compute_units"],
            errors=row["outcome"] != "ok",
            bytes_in=row["bytes_in"],
            bytes_out=row["bytes_out"],
            cache_hits=row["cache_hit"],
        )
    return out


def actual(report: dict[str, Any]) -> dict[tuple[Any, ...], Counter[str]]:
    names = (["window"] if report["every"] else []) + report["by"]
    return {
        tuple(row[n] for n in names): Counter({s: row[s] for s in SUMS if row[s]})
        for row in report["rows"]
    }


# --- totals, groups, windows ----------------------------------------------------------------


async def test_totals_are_exact_and_a_replayed_batch_counts_once(loaded: Loaded) -> None:
    report = await loaded.reports().usage(start=DAY0, end=END)
    assert (report["source"], report["table"], report["by"], report["every"]) == (
        "raw",
        "requests_raw",
        [],
        None,
    )
    assert report["start"] == iso(DAY0) and report["end"] == iso(END)
    [total] = report["rows"]
    assert total["requests"] == 12  # 9 single calls and a batch of 3
    units = ComputeUnits()
    assert total["compute_units"] == (
        4 * units.of("eth", "eth_call")  # r01, r02, the batch's first, r10; refusals weigh 0
        + 2 * units.of("eth", "eth_getLogs")  # the node answered with an error: it still weighs
        + 2 * units.of("base", "eth_blockNumber")
        + units.of("eth", "eth_getBalance")
    )
    assert total["errors"] == 5  # two rpc_error, rate_limited, method_not_allowed, key_invalid
    assert total["error_rate"] == pytest.approx(5 / 12)
    assert total["bytes_in"] == 100 * 9 + 50  # a batch's bytes are on its first call
    assert total["bytes_out"] == 300 * 10
    assert total["cache_hits"] == 2 and total["cache_hit_ratio"] == pytest.approx(2 / 12)
    assert actual(report) == expected(loaded.rows)
    p50, p95, p99 = total["latency_p50_ms"], total["latency_p95_ms"], total["latency_p99_ms"]
    assert 5 <= p50 <= p95 <= p99 <= 40


async def test_an_empty_range_is_one_row_of_zeros(loaded: Loaded) -> None:
    report = await loaded.reports().usage(start=END, end=END + timedelta(hours=1))
    [total] = report["rows"]
    assert total["requests"] == total["compute_units"] == total["errors"] == 0
    assert total["error_rate"] == total["cache_hit_ratio"] == 0.0
    assert total["latency_p50_ms"] is None and total["latency_avg_ms"] is None


@pytest.mark.parametrize(
    "by",
    [
        ("chain", "method"),
        ("outcome", "error_code"),
        ("org_id", "project_id", "key_id"),
        ("method", "chain", "outcome"),
    ],
)
async def test_group_by(loaded: Loaded, by: tuple[str, ...]) -> None:
    report = await loaded.reports().usage(start=DAY0, end=END, by=by)
    assert report["by"] == list(by)
    assert actual(report) == expected(loaded.rows, by)
    requests = [row["requests"] for row in report["rows"]]
    assert requests == sorted(requests, reverse=True)


async def test_group_names_and_comma_lists(loaded: Loaded) -> None:
    reports = loaded.reports()
    short = await reports.usage(start=DAY0, end=END, by="org, key")
    assert short["by"] == ["org_id", "key_id"]
    assert actual(short) == expected(loaded.rows, ("org_id", "key_id"))
    assert {row["org_id"] for row in short["rows"]} == {"org_a", "org_b", ""}


async def test_filters(loaded: Loaded) -> None:
    reports = loaded.reports()
    for filters, columns in (
        ({"org": "org_a"}, {"org_id": "org_a"}),
        ({"org": "org_a", "key": "key_a2"}, {"org_id": "org_a", "key_id": "key_a2"}),
        ({"chain": "base"}, {"chain": "base"}),
        ({"project": "prj_b"}, {"project_id": "prj_b"}),
        ({"org": "org_nobody"}, {"org_id": "org_nobody"}),
    ):
        report = await reports.usage(start=DAY0, end=END, by=("method",), **filters)
        assert actual(report) == expected(loaded.rows, ("method",), **columns), filters


@pytest.mark.parametrize("every", ["minute", "hour", "day"])
async def test_windows_from_raw_rows(loaded: Loaded, every: str) -> None:
    report = await loaded.reports().usage(start=DAY0, end=END, by=("chain",), every=every)
    assert report["every"] == every and report["table"] == "requests_raw"
    assert actual(report) == expected(loaded.rows, ("chain",), every)
    windows = [row["window"] for row in report["rows"]]
    assert windows == sorted(windows)


async def test_a_range_inside_windows_counts_only_its_part(loaded: Loaded) -> None:
    start, end = DAY0 + timedelta(hours=10, minutes=30), DAY0 + timedelta(hours=11, minutes=30)
    report = await loaded.reports().usage(start=start, end=end, every="hour")
    assert actual(report) == expected(loaded.rows, (), "hour", start, end)
    assert [row["window"] for row in report["rows"]] == [
        iso(DAY0 + timedelta(hours=10)),
        iso(DAY0 + timedelta(hours=11)),
    ]
    assert [row["requests"] for row in report["rows"]] == [2, 1]


async def test_the_end_is_excluded_to_the_millisecond(loaded: Loaded) -> None:
    [last] = [row["ts"] for row in loaded.rows if row["request_id"] == "r06"]
    reports = loaded.reports()
    before = await reports.usage(start=DAY0, end=last, chain="base")
    through = await reports.usage(start=DAY0, end=last + timedelta(milliseconds=1), chain="base")
    assert before["rows"][0]["requests"] == 1 and through["rows"][0]["requests"] == 2


# --- raw rows and rollups agree -------------------------------------------------------------


@pytest.mark.parametrize(
    ("by", "every"),
    [
        ((), None),
        ((), "hour"),
        ((), "day"),
        (("chain", "method"), None),
        (("chain", "method"), "hour"),
        (("outcome", "error_code"), "day"),
        (("org_id", "project_id", "key_id", "method"), None),
    ],
)
async def test_raw_and_rollup_agree(loaded: Loaded, by: tuple[str, ...], every: str | None) -> None:
    reports = loaded.reports()
    raw = await reports.usage(start=DAY0, end=END, by=by, every=every, source="raw")
    rollup = await reports.usage(start=DAY0, end=END, by=by, every=every, source="rollup")
    assert rollup["source"] == "rollup"
    assert rollup["table"] == ("usage_hourly" if every == "hour" else "usage_daily")
    assert actual(raw) == actual(rollup) == expected(loaded.rows, by, every)
    for a, b in zip(raw["rows"], rollup["rows"], strict=True):
        for metric in ("latency_avg_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            assert a[metric] == pytest.approx(b[metric], abs=0.01), metric


async def test_hour_aligned_rollup_ranges_read_the_hourly_table(loaded: Loaded) -> None:
    reports = loaded.reports()
    start, end = DAY0 + timedelta(hours=10), DAY0 + timedelta(days=1, hours=4)
    rollup = await reports.usage(start=start, end=end, by=("method",), source="rollup")
    raw = await reports.usage(start=start, end=end, by=("method",), source="raw")
    assert rollup["table"] == "usage_hourly"
    assert actual(rollup) == actual(raw) == expected(loaded.rows, ("method",), None, start, end)


async def test_auto_reads_raw_rows_while_kept_and_rollups_after(loaded: Loaded) -> None:
    recent = await loaded.reports().usage(start=DAY0, end=END, every="day")
    later = loaded.reports(now=DAY0 + timedelta(days=20))
    old = await later.usage(start=DAY0, end=END, every="day")
    old_hours = await later.usage(start=DAY0, end=END, every="hour")
    assert (recent["source"], old["source"], old["table"]) == ("raw", "rollup", "usage_daily")
    assert old_hours["table"] == "usage_hourly"
    assert actual(recent) == actual(old) == expected(loaded.rows, (), "day")
    with pytest.raises(ValueError, match="minute windows come from the raw rows, kept 14 days"):
        await later.usage(start=DAY0, end=END, every="minute")
    with pytest.raises(ValueError, match="on the hour"):
        await later.usage(start=DAY0 + timedelta(minutes=30), end=END)


async def test_older_than_the_hourly_rollup_only_whole_days(loaded: Loaded) -> None:
    much_later = Reports(loaded.store, hourly_days=5, clock=lambda: DAY0 + timedelta(days=30))
    report = await much_later.usage(start=DAY0, end=END, by=("chain",))
    assert report["table"] == "usage_daily"
    assert actual(report) == expected(loaded.rows, ("chain",))
    with pytest.raises(ValueError, match="hourly rollup is kept 5 days"):
        await much_later.usage(start=DAY0, end=END, every="hour")


async def test_series_has_every_window(loaded: Loaded) -> None:
    start = DAY0 + timedelta(hours=9)
    report = await loaded.reports().series(start=start, end=start + timedelta(hours=4))
    assert [(row["window"], row["requests"]) for row in report["rows"]] == [
        (iso(start), 0),
        (iso(start + timedelta(hours=1)), 4),
        (iso(start + timedelta(hours=2)), 2),
        (iso(start + timedelta(hours=3)), 0),
    ]
    assert report["rows"][0]["latency_p50_ms"] is None


# --- top methods and errors -----------------------------------------------------------------


async def test_top_methods(loaded: Loaded) -> None:
    reports = loaded.reports()
    report = await reports.top_methods(start=DAY0, end=END, limit=3)
    top = [(row["method"], row["requests"]) for row in report["rows"]]
    # eth_blockNumber and eth_getLogs tie on 2: by name
    assert top == [("eth_call", 6), ("eth_blockNumber", 2), ("eth_getLogs", 2)]
    assert report["limit"] == 3
    every = await reports.top_methods(start=DAY0, end=END, limit=1000)
    assert actual({**every, "every": None, "by": ["method"]}) == expected(loaded.rows, ("method",))
    rollup = await reports.top_methods(start=DAY0, end=END, limit=3, source="rollup")
    assert [(row["method"], row["requests"]) for row in rollup["rows"]] == top


async def test_top_errors(loaded: Loaded) -> None:
    reports = loaded.reports()
    report = await reports.top_errors(start=DAY0, end=END)
    rows = [(r["outcome"], r["error_code"], r["count"]) for r in report["rows"]]
    assert rows == [
        ("rpc_error", -32000, 2),
        ("key_invalid", -32001, 1),
        ("method_not_allowed", -32004, 1),
        ("rate_limited", -32005, 1),
    ]
    first = report["rows"][0]
    assert first["last_seen"] == iso(DAY0 + timedelta(days=1, hours=23))
    assert first["methods"] == ["eth_getLogs"]
    assert report["rows"][2]["methods"] == ["eth_sendRawTransaction"]

    rollup = await reports.top_errors(start=DAY0, end=END, source="rollup", limit=2)
    assert [(r["outcome"], r["error_code"], r["count"]) for r in rollup["rows"]] == rows[:2]
    key_invalid = rollup["rows"][1]
    assert key_invalid["last_seen"] == iso(DAY0 + timedelta(days=2))  # the rollup knows the day

    only_base = await reports.top_errors(start=DAY0, end=END, chain="base")
    assert [r["outcome"] for r in only_base["rows"]] == ["key_invalid"]


# --- checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start": END, "end": DAY0}, "must be before end"),
        ({"start": DAY0, "end": DAY0}, "must be before end"),
        ({"start": DAY0.replace(tzinfo=None)}, "start must be timezone-aware"),
        ({"by": ("chain", "colour")}, "cannot group by 'colour': use any of chain, method"),
        ({"by": ("org", "org_id")}, "org_id appears twice"),
        ({"by": "chain; DROP TABLE x"}, "cannot group by"),
        ({"every": "week"}, "every must be minute, hour or day"),
        ({"source": "cache"}, "source must be auto, raw or rollup"),
        ({"every": "minute", "end": DAY0 + timedelta(days=8)}, "11520 minute windows"),
        ({"every": "minute", "source": "rollup"}, "minute windows come from the raw rows only"),
        ({"start": DAY0 + timedelta(minutes=1), "source": "rollup"}, "on the hour"),
    ],
)
async def test_usage_checks(loaded: Loaded, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await loaded.reports().usage(**{"start": DAY0, "end": END, **options})


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
async def test_limit_bounds(loaded: Loaded, limit: int) -> None:
    reports = loaded.reports()
    with pytest.raises(ValueError, match="limit must be a whole number from 1 to 1000"):
        await reports.top_methods(start=DAY0, end=END, limit=limit)
    with pytest.raises(ValueError, match="limit must be"):
        await reports.top_errors(start=DAY0, end=END, limit=limit)


def test_parse_time() -> None:
    now = datetime(2026, 11, 2, 12, 30, tzinfo=UTC)
    assert parse_time("2026-11-01", now=now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T10:00:00Z", now=now) == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_time("2026-11-01T12:00+02:00", now=now) == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_time("24h", now=now) == now - timedelta(hours=24)
    assert parse_time("90m", now=now) == now - timedelta(minutes=90)
    assert parse_time("2w", now=now) == now - timedelta(weeks=2)
    with pytest.raises(ValueError, match="from: 'yesterday' is not a time"):
        parse_time("yesterday", now=now, name="from")


def test_bounds_default_and_rollup_friendly() -> None:
    now = datetime(2026, 11, 30, 12, 34, 56, tzinfo=UTC)
    reports = Reports(cast(ChdbStore, BrokenStore()), clock=lambda: now)
    assert reports.bounds(None, None) == (now - timedelta(hours=24), now)
    assert reports.bounds("2026-11-29", "2026-11-30") == (
        datetime(2026, 11, 29, tzinfo=UTC),
        datetime(2026, 11, 30, tzinfo=UTC),
    )
    assert reports.bounds("2h", None) == (now - timedelta(hours=2), now)
    # Older than the raw rows: the rollups answer, so the defaults and spans fall on the hour.
    hour = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert reports.bounds("2026-11-01", None) == (datetime(2026, 11, 1, tzinfo=UTC), hour)
    assert reports.bounds("30d", None) == (hour - timedelta(days=30), hour)
    assert reports.bounds("30d", None, source="raw") == (now - timedelta(days=30), now)
    assert reports.bounds("30d", "1h") == (hour - timedelta(days=30), now - timedelta(hours=1))
    with pytest.raises(ValueError, match="to: 'soon' is not a time"):
        reports.bounds(None, "soon")


# --- the API --------------------------------------------------------------------------------


class BrokenStore:
    database = "broken"

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        raise StoreError("connection refused")


def api(reports: Reports | None, token: str | None = TOKEN) -> httpx.AsyncClient:
    # The admin app as the api role builds it (its handlers render the errors); no key calls.
    app = create_api_app(Config(), cast(KeyService, None), token=token, reports=lambda: reports)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://api", headers=auth)


async def test_api_usage(loaded: Loaded) -> None:
    async with api(loaded.reports()) as client:
        answer = await client.get(
            "/api/v1/usage",
            params={"from": iso(DAY0), "to": iso(END), "by": "chain,method", "every": "day"},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["source"], body["table"], body["every"]) == ("raw", "requests_raw", "day")
        assert body["by"] == ["chain", "method"]
        assert body["start"] == iso(DAY0) and body["end"] == iso(END)
        assert actual(body) == expected(loaded.rows, ("chain", "method"), "day")
        assert body["rows"][0]["outcome"] is None  # not asked for

        # Default range: the 24 hours before the reports' now (day 2 12:00 to day 3 12:00).
        default = (await client.get("/api/v1/usage")).json()
        assert default["end"] == iso(NOW) and default["start"] == iso(NOW - timedelta(hours=24))
        assert default["rows"][0]["requests"] == 0

        ago = await client.get("/api/v1/usage", params={"from": "90m", "source": "rollup"})
        assert ago.status_code == 400 and "on the hour" in ago.json()["error"]["message"]

    # Weeks later only the rollups hold these rows; `to` defaults to the current hour's start.
    later = loaded.reports(now=DAY0 + timedelta(days=20, hours=5, minutes=17))
    async with api(later) as client:
        old = await client.get("/api/v1/usage", params={"from": iso(DAY0), "by": "chain"})
        assert old.status_code == 200, old.text
        body = old.json()
        assert (body["source"], body["table"]) == ("rollup", "usage_hourly")
        assert body["end"] == iso(DAY0 + timedelta(days=20, hours=5))
        assert actual(body) == expected(loaded.rows, ("chain",))


async def test_api_top_methods_and_errors(loaded: Loaded) -> None:
    window = {"from": DAY0.date().isoformat(), "to": iso(END)}
    async with api(loaded.reports()) as client:
        methods = await client.get("/api/v1/usage/top-methods", params={**window, "limit": 1})
        assert methods.status_code == 200, methods.text
        assert [(r["method"], r["requests"]) for r in methods.json()["rows"]] == [("eth_call", 6)]
        errors = await client.get("/api/v1/usage/top-errors", params={**window, "chain": "eth"})
        assert errors.status_code == 200, errors.text
        rows = errors.json()["rows"]
        assert (rows[0]["outcome"], rows[0]["count"]) == ("rpc_error", 2)
        assert rows[0]["last_seen"] == iso(DAY0 + timedelta(days=1, hours=23))


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/v1/usage", {"by": "colour"}, "cannot group by 'colour'"),
        ("/api/v1/usage", {"every": "week"}, "every must be minute, hour or day"),
        ("/api/v1/usage", {"from": "yesterday"}, "from: 'yesterday' is not a time"),
        ("/api/v1/usage", {"from": iso(END), "to": iso(DAY0)}, "must be before end"),
        ("/api/v1/usage/top-methods", {"limit": 5000}, "limit must be a whole number"),
        ("/api/v1/usage/top-errors", {"source": "cache"}, "source must be auto, raw or rollup"),
    ],
)
async def test_api_bad_input_is_400(
    loaded: Loaded, path: str, params: dict[str, Any], message: str
) -> None:
    async with api(loaded.reports()) as client:
        answer = await client.get(path, params=params)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request" and message in error["message"]


async def test_api_malformed_parameter_is_422() -> None:
    async with api(None) as client:
        answer = await client.get("/api/v1/usage/top-methods", params={"limit": "ten"})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_request"


async def test_api_needs_the_admin_token() -> None:
    async with api(None) as client:
        missing = await client.get("/api/v1/usage", headers={"Authorization": ""})
        wrong = await client.get("/api/v1/usage", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    async with api(None, token=None) as client:
        disabled = await client.get("/api/v1/usage")
    assert disabled.status_code == 401 and disabled.json()["error"]["code"] == "admin_disabled"


async def test_api_without_an_analytics_store_is_503() -> None:
    async with api(None) as client:
        closed = await client.get("/api/v1/usage")
    assert closed.status_code == 503
    assert closed.json()["error"] == {
        "code": "analytics_unavailable",
        "message": "the analytics store is not open",
    }
    broken = Reports(cast(ChdbStore, BrokenStore()), clock=lambda: NOW)
    async with api(broken) as client:
        for path in ("/api/v1/usage", "/api/v1/usage/top-methods", "/api/v1/usage/top-errors"):
            failed = await client.get(path)
            assert failed.status_code == 503, path
            assert "connection refused" in failed.json()["error"]["message"]


async def test_api_schema_lists_the_usage_models() -> None:
    async with api(None) as client:
        spec = (await client.get("/admin/openapi.json")).json()
    usage = spec["paths"]["/api/v1/usage"]["get"]
    assert {p["name"] for p in usage["parameters"]} >= {"org", "from", "to", "by", "every"}
    assert usage["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UsageOut"
    }
    assert {"UsageOut", "UsageRowOut", "TopMethodsOut", "TopErrorsOut"} <= set(
        spec["components"]["schemas"]
    )


# --- the CLI --------------------------------------------------------------------------------


@pytest.fixture
async def cli_config(
    analytics_store: ChdbStore,
    chdb_path: Path,
    tmp_path: Path,
    sqlite_template: Path,  # noqa: F811 (the fixture imported above)
) -> Path:
    """A config on this process's chDB directory and the test's database in it, and a SQLite
    business database where the org 'acme' (project 'web') owns the rows of org_a."""
    database = tmp_path / "hoodrun.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    config = Config(database_url=url)
    async with Store(url) as store:
        created = await KeyService(store, config).create(org="acme", project="web", actor="test")
    await load(analytics_store, records(created.record.org_id, created.record.project_id))
    path = tmp_path / "hoodrun.yaml"
    settings = {
        "database_url": url,
        "data_dir": str(chdb_path.parent),  # open_analytics opens data_dir/analytics
        "analytics_database": analytics_store.database,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def cli() -> typer.Typer:
    """The root command (its -c option and config loading) with ``usage`` registered the way
    ``hoodrun.cli`` registers it."""
    app = typer.Typer()
    app.callback()(_root)
    app.command("usage")(usage_command)
    return app


def hoodrun(config: Path, *args: str) -> Any:
    env = {"COLUMNS": "200", "HOODRUN_CONFIG": None}
    return CliRunner().invoke(cli(), ["-c", str(config), "usage", *args], env=env)


def test_cli_usage_table_and_json(cli_config: Path) -> None:
    window = ("--from", DAY0.date().isoformat(), "--to", iso(END))
    text = hoodrun(cli_config, "--org", "acme", *window)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert any("eth_call" in line and " 5 " in f"{line} " for line in lines), text.stdout
    assert "requests_raw" in text.stdout and "base" not in text.stdout  # only acme's rows

    out = hoodrun(cli_config, "--org", "acme", "--project", "web", *window, "--json", "--by", "")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["rows"][0]["requests"] == 9 and report["rows"][0]["errors"] == 4

    hourly = hoodrun(cli_config, *window, "--every", "hour", "--by", "chain", "--json")
    windows = [row["window"] for row in json.loads(hourly.stdout)["rows"]]
    assert iso(DAY0 + timedelta(hours=10)) in windows


def test_cli_usage_errors(cli_config: Path) -> None:
    nobody = hoodrun(cli_config, "--org", "nobody")
    assert nobody.exit_code == 1 and "no org named 'nobody'" in nobody.stderr
    bad = hoodrun(cli_config, "--by", "colour")
    assert bad.exit_code == 1 and "cannot group by 'colour'" in bad.stderr
    empty = hoodrun(cli_config, "--org", "org_nobody")
    assert empty.exit_code == 0 and "No requests in this range." in empty.stderr

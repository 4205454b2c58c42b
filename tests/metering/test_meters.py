"""Meter queries on chDB against hand-computed answers: every aggregation, windows in UTC, in
Europe/Istanbul (UTC+3), in America/New_York across the day DST starts (8 March 2026: 23 hours)
and in Asia/Kolkata (half-hour offset), groups, group filters, subjects, ranges that cut windows;
the built-in meters over the gateway's records; then the query API and its RFC 7807 errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pyarrow as pa
import pytest
from pydantic import ValidationError

from hoodrun.api.app import create_api_app
from hoodrun.config import Config
from hoodrun.keys.service import KeyService
from hoodrun.metering.config import MeterConfig
from hoodrun.metering.events import EventLog
from hoodrun.metering.meters import MeterError, MeterService, UnknownMeter, meter_query
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.store import ChdbStore, StoreError
from hoodrun.telemetry.units import ComputeUnits
from tests._stores import FakeClock
from tests.telemetry.support import call_record

TOKEN = "meters-test-token"
NOW = datetime(2026, 3, 10, tzinfo=UTC)  # the service's clock: after every event
RETENTION = 3650  # the events are from March 2026; the table's TTL runs on the real clock

METERS = (
    MeterConfig(
        slug="tokens",
        event_type="llm",
        aggregation="SUM",
        value_property="$.tokens",
        group_by={"model": "$.model", "region": "$.geo.region"},
    ),
    MeterConfig(
        slug="calls",
        event_type="api_call",
        aggregation="COUNT",
        group_by={"endpoint": "$.endpoint"},
    ),
    MeterConfig(
        slug="users", event_type="api_call", aggregation="UNIQUE_COUNT", value_property="$.user"
    ),
    MeterConfig(
        slug="latency_avg", event_type="api_call", aggregation="AVG", value_property="$.ms"
    ),
    MeterConfig(
        slug="latency_min", event_type="api_call", aggregation="MIN", value_property="$.ms"
    ),
    MeterConfig(
        slug="latency_max", event_type="api_call", aggregation="MAX", value_property="$.ms"
    ),
    MeterConfig(
        slug="balance", event_type="wallet", aggregation="LATEST", value_property="$.balance"
    ),
)


def ev(id: str, type: str, subject: str, time: str, **data: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": id,
        "source": "test",
        "type": type,
        "subject": subject,
        "time": time,
        "data": data,
    }


# tokens (SUM of $.tokens): UTC time; New York (EST until 2026-03-08 07:00Z, then EDT);
# Istanbul (UTC+3).
TOKEN_EVENTS = [
    ev("t1", "llm", "acme", "2026-03-07T23:30:00Z", tokens=10, model="gpt", geo={"region": "eu"}),
    ev("t2", "llm", "acme", "2026-03-08T04:30:00Z", tokens=20, model="gpt", geo={"region": "us"}),
    ev(
        "t3",
        "llm",
        "acme",
        "2026-03-08T05:10:00Z",
        tokens="2.5",
        model="llama",
        geo={"region": "eu"},
    ),
    ev("t4", "llm", "globex", "2026-03-08T21:15:00Z", tokens=7, model="gpt"),  # no region
    ev(
        "t5",
        "llm",
        "globex",
        "2026-03-09T03:59:00Z",
        tokens=100,
        model="llama",
        geo={"region": "us"},
    ),
    ev("t6", "llm", "globex", "2026-03-09T04:00:00Z", tokens=1, model="gpt", geo={"region": "us"}),
    # Not counted: a value that is not a number, no value, another type.
    ev(
        "t7",
        "llm",
        "acme",
        "2026-03-08T12:00:00Z",
        tokens="many",
        model="gpt",
        geo={"region": "eu"},
    ),
    ev("t8", "llm", "acme", "2026-03-08T12:00:30Z", model="gpt", geo={"region": "eu"}),
    ev("o1", "other", "acme", "2026-03-08T12:00:00Z", tokens=1000, model="gpt"),
]
TOKENS_TOTAL = 140.5  # 10 + 20 + 2.5 + 7 + 100 + 1
# Sent again later: same source and id, other data. Counted once, as first sent.
TOKEN_DUPLICATES = [
    ev("t2", "llm", "acme", "2026-03-08T04:30:00Z", tokens=999, model="gpt", geo={"region": "us"}),
    ev("t5", "llm", "globex", "2026-03-09T03:59:00Z", tokens=999, model="gpt"),
]

CALL_EVENTS = [
    ev("c1", "api_call", "acme", "2026-03-08T10:00:05Z", endpoint="/a", user="u1", ms=10),
    ev("c2", "api_call", "acme", "2026-03-08T10:00:40Z", endpoint="/a", user="u2", ms=30),
    ev("c3", "api_call", "acme", "2026-03-08T10:01:10Z", endpoint="/b", user="u1", ms=20),
    ev("c4", "api_call", "globex", "2026-03-08T10:01:50Z", endpoint="/a", user="u3", ms="5"),
    ev("c5", "api_call", "acme", "2026-03-08T10:02:00Z", endpoint="/b"),  # no user, no ms
]

WALLET_EVENTS = [
    ev("w1", "wallet", "acme", "2026-03-08T10:00:00Z", balance=100),
    ev("w2", "wallet", "acme", "2026-03-08T12:00:00Z", balance=80),
    ev("w3", "wallet", "acme", "2026-03-08T11:00:00Z", balance=90),  # later sent, earlier time
    ev("w4", "wallet", "globex", "2026-03-08T09:00:00Z", balance=5),
    ev("w5", "wallet", "acme", "2026-03-09T01:00:00Z", balance=60),
]

WHOLE = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-11T00:00:00Z"}


async def load_events(service: MeterService) -> None:
    await service.events.ingest(TOKEN_EVENTS)
    await service.events.ingest([*CALL_EVENTS, *WALLET_EVENTS])
    await service.events.ingest(TOKEN_DUPLICATES)  # remembered: dropped before the insert
    # A process without that memory writes them: the table must still count them once.
    await EventLog(service.store, retention_days=RETENTION).ingest(TOKEN_DUPLICATES)


@pytest.fixture
async def meters(analytics_store: ChdbStore) -> MeterService:
    service = MeterService(analytics_store, METERS, retention_days=RETENTION, clock=FakeClock(NOW))
    await load_events(service)
    return service


async def run(service: MeterService, slug: str, **options: Any) -> dict[str, Any]:
    return await service.query(slug, meter_query(**options))


def windows(answer: dict[str, Any]) -> list[tuple[str, str, float]]:
    return [(row["windowStart"], row["windowEnd"], row["value"]) for row in answer["data"]]


def groups(answer: dict[str, Any], *names: str) -> dict[tuple[Any, ...], float]:
    return {tuple(row["groupBy"][n] for n in names): row["value"] for row in answer["data"]}


def by_subject(answer: dict[str, Any]) -> dict[str, float]:
    return {row["subject"]: row["value"] for row in answer["data"]}


# --- ranges and windows -------------------------------------------------------------------------


async def test_a_range_is_one_row(meters: MeterService) -> None:
    answer = await run(meters, "tokens", **WHOLE)
    assert answer == {
        "from": "2026-03-01T00:00:00Z",
        "to": "2026-03-11T00:00:00Z",
        "data": [
            {
                "value": TOKENS_TOTAL,
                "windowStart": "2026-03-01T00:00:00Z",
                "windowEnd": "2026-03-11T00:00:00Z",
                "subject": None,
                "groupBy": {},
            }
        ],
    }
    # Without a range: from the first usage's minute to now.
    open_ended = await run(meters, "tokens")
    assert "from" not in open_ended and "to" not in open_ended
    assert windows(open_ended) == [("2026-03-07T23:30:00Z", "2026-03-10T00:00:00Z", TOKENS_TOTAL)]
    # A range without usage has no rows.
    empty = await run(meters, "tokens", start="2026-02-01T00:00:00Z", end="2026-03-01T00:00:00Z")
    assert empty["data"] == []


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (
            "UTC",
            [
                ("2026-03-07T00:00:00Z", "2026-03-08T00:00:00Z", 10.0),
                ("2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z", 29.5),
                ("2026-03-09T00:00:00Z", "2026-03-10T00:00:00Z", 101.0),
            ],
        ),
        (
            "Europe/Istanbul",
            [
                ("2026-03-07T21:00:00Z", "2026-03-08T21:00:00Z", 32.5),
                ("2026-03-08T21:00:00Z", "2026-03-09T21:00:00Z", 108.0),
            ],
        ),
        (
            # 8 March: midnight EST (05:00Z) to midnight EDT (04:00Z), 23 hours.
            "America/New_York",
            [
                ("2026-03-07T05:00:00Z", "2026-03-08T05:00:00Z", 30.0),
                ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", 109.5),
                ("2026-03-09T04:00:00Z", "2026-03-10T04:00:00Z", 1.0),
            ],
        ),
    ],
)
async def test_day_windows_start_at_local_midnight(
    meters: MeterService, zone: str, expected: list[tuple[str, str, float]]
) -> None:
    answer = await run(meters, "tokens", window_size="DAY", window_time_zone=zone, **WHOLE)
    assert answer["windowSize"] == "DAY"
    assert windows(answer) == expected


async def test_hour_windows_in_utc_and_at_a_half_hour_offset(meters: MeterService) -> None:
    utc = await run(meters, "tokens", window_size="HOUR", **WHOLE)
    assert windows(utc) == [
        ("2026-03-07T23:00:00Z", "2026-03-08T00:00:00Z", 10.0),
        ("2026-03-08T04:00:00Z", "2026-03-08T05:00:00Z", 20.0),
        ("2026-03-08T05:00:00Z", "2026-03-08T06:00:00Z", 2.5),
        ("2026-03-08T21:00:00Z", "2026-03-08T22:00:00Z", 7.0),
        ("2026-03-09T03:00:00Z", "2026-03-09T04:00:00Z", 100.0),
        ("2026-03-09T04:00:00Z", "2026-03-09T05:00:00Z", 1.0),
    ]
    kolkata = await run(
        meters, "tokens", window_size="HOUR", window_time_zone="Asia/Kolkata", **WHOLE
    )
    assert windows(kolkata) == [
        ("2026-03-07T23:30:00Z", "2026-03-08T00:30:00Z", 10.0),
        ("2026-03-08T04:30:00Z", "2026-03-08T05:30:00Z", 22.5),
        ("2026-03-08T20:30:00Z", "2026-03-08T21:30:00Z", 7.0),
        ("2026-03-09T03:30:00Z", "2026-03-09T04:30:00Z", 101.0),
    ]


async def test_minute_and_month_windows(meters: MeterService) -> None:
    minutes = await run(meters, "calls", window_size="MINUTE", **WHOLE)
    assert windows(minutes) == [
        ("2026-03-08T10:00:00Z", "2026-03-08T10:01:00Z", 2.0),
        ("2026-03-08T10:01:00Z", "2026-03-08T10:02:00Z", 2.0),
        ("2026-03-08T10:02:00Z", "2026-03-08T10:03:00Z", 1.0),
    ]
    month = await run(meters, "tokens", window_size="MONTH", **WHOLE)
    assert windows(month) == [("2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", TOKENS_TOTAL)]
    istanbul = await run(
        meters, "tokens", window_size="MONTH", window_time_zone="Europe/Istanbul", **WHOLE
    )
    assert windows(istanbul) == [("2026-02-28T21:00:00Z", "2026-03-31T21:00:00Z", TOKENS_TOTAL)]


async def test_a_range_inside_windows_counts_its_part_and_excludes_its_end(
    meters: MeterService,
) -> None:
    answer = await run(
        meters,
        "tokens",
        start="2026-03-08T05:00:00Z",
        end="2026-03-09T04:00:00Z",  # t6 is at exactly 04:00: left out
        window_size="DAY",
    )
    assert windows(answer) == [
        ("2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z", 9.5),  # t3 and t4, not t2
        ("2026-03-09T00:00:00Z", "2026-03-10T00:00:00Z", 100.0),
    ]


# --- groups and subjects ------------------------------------------------------------------------


async def test_group_by(meters: MeterService) -> None:
    model = await run(meters, "tokens", group_by=["model"], **WHOLE)
    assert groups(model, "model") == {("gpt",): 38.0, ("llama",): 102.5}
    both = await run(meters, "tokens", group_by=["model", "region"], **WHOLE)
    assert groups(both, "model", "region") == {
        ("gpt", "eu"): 10.0,
        ("gpt", "us"): 21.0,
        ("gpt", None): 7.0,  # t4 has no region
        ("llama", "eu"): 2.5,
        ("llama", "us"): 100.0,
    }
    assert all(row["subject"] is None for row in both["data"])
    daily = await run(meters, "tokens", group_by=["model"], window_size="DAY", **WHOLE)
    assert [(r["windowStart"][:10], r["groupBy"]["model"], r["value"]) for r in daily["data"]] == [
        ("2026-03-07", "gpt", 10.0),
        ("2026-03-08", "gpt", 27.0),
        ("2026-03-08", "llama", 2.5),
        ("2026-03-09", "gpt", 1.0),
        ("2026-03-09", "llama", 100.0),
    ]


async def test_filter_group_by(meters: MeterService) -> None:
    us = await run(meters, "tokens", filter_group_by={"region": "us"}, **WHOLE)
    assert windows(us)[0][2] == 121.0
    assert us["data"][0]["groupBy"] == {}  # filtered on, not grouped by
    gpt_us = await run(meters, "tokens", filter_group_by={"region": "us", "model": "gpt"}, **WHOLE)
    assert windows(gpt_us)[0][2] == 21.0
    either = await run(
        meters,
        "tokens",
        group_by=["model"],
        filter_group_by={"region": ["us", "eu"]},
        **WHOLE,
    )
    assert groups(either, "model") == {("gpt",): 31.0, ("llama",): 102.5}
    nothing = await run(meters, "tokens", filter_group_by={"region": "asia"}, **WHOLE)
    assert nothing["data"] == []


async def test_subjects(meters: MeterService) -> None:
    acme = await run(meters, "tokens", subjects=["acme"], **WHOLE)
    assert by_subject(acme) == {"acme": 32.5}
    both = await run(meters, "tokens", subjects=["acme", "globex"], **WHOLE)
    assert by_subject(both) == {"acme": 32.5, "globex": 108.0}
    grouped = await run(meters, "tokens", group_by=["subject", "model"], **WHOLE)
    assert {(r["subject"], r["groupBy"]["model"]): r["value"] for r in grouped["data"]} == {
        ("acme", "gpt"): 30.0,
        ("acme", "llama"): 2.5,
        ("globex", "gpt"): 8.0,
        ("globex", "llama"): 100.0,
    }
    assert list(grouped["data"][0]["groupBy"]) == ["model"]  # subject is not a group
    new_york = await run(
        meters,
        "tokens",
        subjects=["globex"],
        window_size="DAY",
        window_time_zone="America/New_York",
        **WHOLE,
    )
    assert [(r["subject"], r["windowStart"], r["value"]) for r in new_york["data"]] == [
        ("globex", "2026-03-08T05:00:00Z", 107.0),
        ("globex", "2026-03-09T04:00:00Z", 1.0),
    ]
    assert await meters.subjects("tokens") == ["acme", "globex"]
    later = datetime(2026, 3, 8, 21, tzinfo=UTC)
    assert await meters.subjects("tokens", later, NOW) == ["globex"]
    assert await meters.subjects("balance") == ["acme", "globex"]


async def test_subjects_and_filters_match_backslashes_tabs_and_newlines_exactly(
    analytics_store: ChdbStore,
) -> None:
    # Query parameters reach ClickHouse as escaped text: a value is matched as sent, not
    # unescaped (a\nb is four characters) nor refused (a real tab or newline).
    service = MeterService(analytics_store, METERS, retention_days=RETENTION, clock=FakeClock(NOW))
    odd = ["org\\acme", "tab\there", "new\nline", "\\N"]
    await service.events.ingest(
        [
            ev(f"x{n}", "llm", subject, "2026-03-08T10:00:00Z", tokens=n + 1, model=subject)
            for n, subject in enumerate(odd)
        ]
    )
    assert await service.subjects("tokens") == sorted(odd)
    for n, value in enumerate(odd):
        one = await run(service, "tokens", subjects=[value], **WHOLE)
        assert by_subject(one) == {value: n + 1}, value
        filtered = await run(service, "tokens", filter_group_by={"model": value}, **WHOLE)
        assert windows(filtered)[0][2] == n + 1, value
    escaped = await run(service, "tokens", subjects=["new\\nline"], **WHOLE)
    assert escaped["data"] == []  # a backslash and an n, not the newline of "new\nline"


# --- aggregations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "total", "acme", "globex"),
    [
        ("calls", 5.0, 4.0, 1.0),
        ("users", 3.0, 2.0, 1.0),  # u1 twice; c5 has no user
        ("latency_avg", 16.25, 20.0, 5.0),  # (10 + 30 + 20 + "5") / 4; c5 has no ms
        ("latency_min", 5.0, 10.0, 5.0),
        ("latency_max", 30.0, 30.0, 5.0),
        ("balance", 60.0, 60.0, 5.0),  # the latest by time, not by arrival
    ],
)
async def test_aggregations(
    meters: MeterService, slug: str, total: float, acme: float, globex: float
) -> None:
    assert windows(await run(meters, slug, **WHOLE))[0][2] == total
    per_subject = await run(meters, slug, subjects=["acme", "globex"], **WHOLE)
    assert by_subject(per_subject) == {"acme": acme, "globex": globex}


async def test_count_per_group_and_latest_per_window(meters: MeterService) -> None:
    calls = await run(meters, "calls", group_by=["endpoint"], **WHOLE)
    assert groups(calls, "endpoint") == {("/a",): 3.0, ("/b",): 2.0}
    balance = await run(meters, "balance", subjects=["acme"], window_size="DAY", **WHOLE)
    assert windows(balance) == [
        ("2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z", 80.0),
        ("2026-03-09T00:00:00Z", "2026-03-10T00:00:00Z", 60.0),
    ]


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "options", "message"),
    [
        ("tokens", {"group_by": ["colour"]}, "groupBy: tokens has no group 'colour'; it has model"),
        ("users", {"group_by": ["model"]}, "groupBy: users has no group 'model'; it has no groups"),
        ("tokens", {"filter_group_by": {"colour": "red"}}, "filterGroupBy: tokens has no group"),
        ("tokens", {"start": "2026-03-11T00:00:00Z"}, "from must be before to (which defaults"),
    ],
)
async def test_query_refusals(
    meters: MeterService, slug: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(MeterError) as caught:
        await run(meters, slug, **options)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start": "2026-03-08"}, "from: must be an RFC 3339 date-time"),
        ({"end": "soon"}, "to: must be an RFC 3339 date-time"),
        (
            {"start": "2026-03-09T00:00:00Z", "end": "2026-03-08T00:00:00Z"},
            "from must be before to",
        ),
        ({"window_size": "WEEK"}, "windowSize must be one of MINUTE, HOUR, DAY, MONTH, not 'WEEK'"),
        ({"window_time_zone": "Mars/Olympus"}, "windowTimeZone: 'Mars/Olympus' is not an IANA"),
        ({"filter_group_by": {"model": [1]}}, "filterGroupBy[model]: a string or a list"),
    ],
)
def test_parameter_refusals(options: dict[str, Any], message: str) -> None:
    with pytest.raises(MeterError) as caught:
        meter_query(**options)
    assert str(caught.value).startswith(message)


async def test_an_unknown_meter_and_too_many_rows(
    meters: MeterService, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UnknownMeter):
        await run(meters, "nope")
    with pytest.raises(UnknownMeter):
        await meters.subjects("nope")
    monkeypatch.setattr("hoodrun.metering.meters.MAX_ROWS", 2)
    with pytest.raises(MeterError, match="more than 2 rows"):
        await run(meters, "tokens", window_size="HOUR", **WHOLE)
    assert len((await run(meters, "tokens", group_by=["model"], **WHOLE))["data"]) == 2


@pytest.mark.parametrize(
    "config",
    [
        {"value_property": "$.items[0]"},
        {"value_property": "$..tokens"},
        {"value_property": "$.a", "group_by": {"g": "$.a.*"}},
    ],
)
def test_unsupported_json_paths_are_refused_with_the_config(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="no arrays, wildcards or filters"):
        MeterConfig(slug="bad", event_type="x", aggregation="SUM", **config)


# --- built-in meters over the gateway's records -------------------------------------------------

# requests_raw's TTL runs on the real clock: these rows are from yesterday.
_DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)


def at(hour: int, minute: int = 0) -> datetime:
    return _DAY + timedelta(hours=hour, minutes=minute)


def gateway_records() -> list[RequestRecord]:
    refused = {"status": 429, "reason": "rate_limited", "error_code": -32005}
    b = {"org_id": "org_b", "project_id": "prj_b", "key_id": "key_b"}
    return [
        call_record("r1", ts=at(10, 5).timestamp(), org_id="org_a"),  # eth_call: 26
        call_record("r2", ts=at(10, 30).timestamp(), org_id="org_a", cache_hit=True),  # 26
        call_record(
            "r3", ts=at(11, 0).timestamp(), method="eth_blockNumber", chain="base", org_id="org_a"
        ),  # 10
        call_record(
            "r4", ts=at(11, 15).timestamp(), method="eth_getLogs", error_code=-32000, org_id="org_a"
        ),  # 75, outcome rpc_error
        call_record("r5", ts=at(11, 20).timestamp(), org_id="org_a", **refused),  # 0
        call_record("r6", ts=at(12, 0).timestamp(), **b),  # 26
    ]


@pytest.fixture
async def gateway_meters(analytics_store: ChdbStore) -> MeterService:
    table: pa.Table = RowBuilder(ComputeUnits()).table(gateway_records())
    await analytics_store.insert(table)
    await analytics_store.insert(table.slice(0, 3))  # a replayed batch counts once
    return MeterService(analytics_store, clock=lambda: _DAY + timedelta(days=1))


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def test_builtin_requests_and_compute_units(gateway_meters: MeterService) -> None:
    day = {"start": iso(_DAY), "end": iso(_DAY + timedelta(days=1))}
    # requests counts billable calls: r5, refused, is not one.
    requests = await run(gateway_meters, "requests", group_by=["subject"], **day)
    assert by_subject(requests) == {"org_a": 4.0, "org_b": 1.0}
    units = await run(gateway_meters, "compute_units", group_by=["subject"], **day)
    assert by_subject(units) == {"org_a": 137.0, "org_b": 26.0}
    chains = await run(gateway_meters, "requests", subjects=["org_a"], group_by=["chain"], **day)
    assert groups(chains, "chain") == {("eth",): 3.0, ("base",): 1.0}
    outcomes = await run(gateway_meters, "requests", group_by=["outcome"], **day)
    assert groups(outcomes, "outcome") == {("ok",): 4.0, ("rpc_error",): 1.0}
    eth = await run(gateway_meters, "compute_units", filter_group_by={"chain": "eth"}, **day)
    assert windows(eth)[0][2] == 153.0  # 26 + 26 + 75 + 0 + 26
    hourly = await run(
        gateway_meters, "compute_units", subjects=["org_a"], window_size="HOUR", **day
    )
    assert windows(hourly) == [
        (iso(at(10)), iso(at(11)), 52.0),
        (iso(at(11)), iso(at(12)), 85.0),
    ]
    methods = await run(
        gateway_meters, "requests", group_by=["method", "key_id", "project_id"], **day
    )
    assert groups(methods, "method", "key_id", "project_id") == {
        ("eth_call", "key_1", "prj_1"): 2.0,
        ("eth_blockNumber", "key_1", "prj_1"): 1.0,
        ("eth_getLogs", "key_1", "prj_1"): 1.0,
        ("eth_call", "key_b", "prj_b"): 1.0,
    }
    assert await gateway_meters.subjects("requests") == ["org_a", "org_b"]
    with pytest.raises(MeterError, match="requests has no group 'model'; it has chain, method"):
        await run(gateway_meters, "requests", group_by=["model"])


# --- the API ------------------------------------------------------------------------------------


class BrokenStore:
    database = "broken"

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        raise StoreError("Connection refused")

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        raise StoreError("Connection refused")


def api(service: MeterService) -> httpx.AsyncClient:
    app = create_api_app(Config(), cast(KeyService, None), token=TOKEN, meters=service)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


WHOLE_PARAMS = {"from": WHOLE["start"], "to": WHOLE["end"]}


async def test_api_lists_and_gets_meters(meters: MeterService) -> None:
    async with api(meters) as client:
        listed = await client.get("/api/v1/meters")
        page = await client.get("/api/v1/meters", params={"page": 2, "pageSize": 3})
        one = await client.get("/api/v1/meters/tokens")
        builtin = await client.get("/api/v1/meters/requests")
        missing = await client.get("/api/v1/meters/nope")
    assert listed.status_code == 200
    slugs = [meter["slug"] for meter in listed.json()]
    assert slugs == sorted(["requests", "compute_units", *(m.slug for m in METERS)])
    assert [meter["slug"] for meter in page.json()] == slugs[3:6]
    assert one.json() == {
        "id": "tokens",
        "slug": "tokens",
        "name": "tokens",
        "aggregation": "SUM",
        "eventType": "llm",
        "valueProperty": "$.tokens",
        "groupBy": {"model": "$.model", "region": "$.geo.region"},
        "createdAt": "2026-03-10T00:00:00Z",
        "updatedAt": "2026-03-10T00:00:00Z",
    }
    assert builtin.json()["aggregation"] == "COUNT"
    assert builtin.json()["groupBy"]["chain"] == "$.chain"
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["detail"] == "no meter 'nope': GET /api/v1/meters lists them"


async def test_api_query_get_and_post(meters: MeterService) -> None:
    async with api(meters) as client:
        daily = await client.get(
            "/api/v1/meters/tokens/query",
            params={
                **WHOLE_PARAMS,
                "windowSize": "DAY",
                "windowTimeZone": "America/New_York",
                "subject": ["acme", "globex"],
                "groupBy": "model",
            },
        )
        posted = await client.post(
            "/api/v1/meters/tokens/query",
            json={
                **WHOLE_PARAMS,
                "windowSize": "DAY",
                "windowTimeZone": "America/New_York",
                "subject": ["acme", "globex"],
                "groupBy": ["model"],
            },
        )
    assert daily.status_code == 200, daily.text
    assert posted.json() == daily.json()
    body = daily.json()
    assert (body["from"], body["to"], body["windowSize"]) == (
        "2026-03-01T00:00:00Z", "2026-03-11T00:00:00Z", "DAY",
    )  # fmt: skip
    rows = [
        (r["windowStart"], r["subject"], r["groupBy"]["model"], r["value"]) for r in body["data"]
    ]
    assert rows == [
        ("2026-03-07T05:00:00Z", "acme", "gpt", 30.0),
        ("2026-03-08T05:00:00Z", "acme", "llama", 2.5),
        ("2026-03-08T05:00:00Z", "globex", "gpt", 7.0),
        ("2026-03-08T05:00:00Z", "globex", "llama", 100.0),
        ("2026-03-09T04:00:00Z", "globex", "gpt", 1.0),
    ]
    assert body["data"][1]["windowEnd"] == "2026-03-09T04:00:00Z"  # the 23-hour day


@pytest.mark.parametrize(
    "params",
    [
        {"filterGroupBy[region]": "us"},  # OpenAPI deepObject
        {"filterGroupBy": "{'region': 'us'}"},  # the official client's Python dict text
        {"filterGroupBy": '{"region": "us"}'},  # JSON
        {"filterGroupBy": '{"region": ["us"]}'},
    ],
)
async def test_api_filter_group_by_forms(meters: MeterService, params: dict[str, str]) -> None:
    async with api(meters) as client:
        answer = await client.get(
            "/api/v1/meters/tokens/query", params={**WHOLE_PARAMS, "groupBy": "model", **params}
        )
    assert answer.status_code == 200, answer.text
    assert groups(answer.json(), "model") == {("gpt",): 21.0, ("llama",): 100.0}


async def test_api_filter_group_by_with_several_values(meters: MeterService) -> None:
    async with api(meters) as client:
        deep = await client.get(
            "/api/v1/meters/tokens/query",
            params=[("filterGroupBy[model]", "gpt"), ("filterGroupBy[model]", "llama")],
        )
        posted = await client.post(
            "/api/v1/meters/tokens/query",
            json={"filterGroupBy": {"model": ["llama"], "region": "eu"}},
        )
    assert windows(deep.json())[0][2] == TOKENS_TOTAL
    assert windows(posted.json())[0][2] == 2.5


async def test_api_subjects(meters: MeterService) -> None:
    async with api(meters) as client:
        every = await client.get("/api/v1/meters/tokens/subjects")
        later = await client.get(
            "/api/v1/meters/tokens/subjects", params={"from": "2026-03-08T21:00:00Z"}
        )
    assert every.json() == ["acme", "globex"]
    assert later.json() == ["globex"]


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "detail"),
    [
        ("GET", "/api/v1/meters/tokens/query", {"groupBy": "colour"}, 400, "no group 'colour'"),
        ("GET", "/api/v1/meters/tokens/query", {"windowSize": "WEEK"}, 400, "windowSize must be"),
        ("GET", "/api/v1/meters/tokens/query", {"from": "yesterday"}, 400, "from: must be"),
        (
            "GET",
            "/api/v1/meters/tokens/query",
            {"filterGroupBy": "region=us"},
            400,
            "filterGroupBy: use",
        ),
        (
            "GET",
            "/api/v1/meters/tokens/query",
            {"filterGroupBy": "{['region']: 'us'}"},  # a literal, but no dict (unhashable key)
            400,
            "filterGroupBy: use",
        ),
        ("GET", "/api/v1/meters/tokens/query", {"filterCustomerId": "c1"}, 400, "no customers"),
        ("GET", "/api/v1/meters/nope/query", {}, 404, "no meter 'nope'"),
        ("GET", "/api/v1/meters/nope/subjects", {}, 404, "no meter 'nope'"),
        (
            "POST",
            "/api/v1/meters/tokens/query",
            {"windowSize": 3},
            400,
            "windowSize: Input should be",
        ),
        ("POST", "/api/v1/meters/tokens/query", {"colour": "red"}, 400, "colour: Extra inputs"),
        ("POST", "/api/v1/meters/tokens/query", {"groupBy": ["colour"]}, 400, "no group 'colour'"),
    ],
)
async def test_api_refusals_are_problems(
    meters: MeterService, method: str, path: str, params: dict[str, Any], status: int, detail: str
) -> None:
    async with api(meters) as client:
        if method == "GET":
            answer = await client.get(path, params=params)
        else:
            answer = await client.post(path, json=params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status and problem["instance"] == path
    assert detail in problem["detail"]


async def test_api_store_down_is_503() -> None:
    service = MeterService(cast(ChdbStore, BrokenStore()), METERS)
    async with api(service) as client:
        for path in ("/api/v1/meters/tokens/query", "/api/v1/meters/requests/query"):
            answer = await client.get(path)
            assert answer.status_code == 503, path
            assert answer.json()["detail"] == "the analytics store failed: Connection refused"
        listed = await client.get("/api/v1/meters")  # the config answers without the store
    assert listed.status_code == 200


async def test_api_schema_documents_the_openmeter_routes(meters: MeterService) -> None:
    async with api(meters) as client:
        spec = (await client.get("/admin/openapi.json")).json()
    paths = spec["paths"]
    assert set(paths["/api/v1/meters/{meterIdOrSlug}/query"]) == {"get", "post"}
    ingest = paths["/api/v1/events"]["post"]
    assert set(ingest["requestBody"]["content"]) == {
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json",
    }
    assert ingest["responses"]["400"]["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/ProblemOut"
    }
    query = paths["/api/v1/meters/{meterIdOrSlug}/query"]["get"]
    assert {p["name"] for p in query["parameters"]} >= {
        "from", "to", "windowSize", "windowTimeZone", "subject", "groupBy", "filterGroupBy",
    }  # fmt: skip
    assert {"MeterOut", "MeterQueryResultOut", "ProblemOut"} <= set(spec["components"]["schemas"])

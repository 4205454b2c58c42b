"""The period close over real chDB usage and contracts on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from sqlalchemy import insert, select

from hoodrun.billing.close import (
    CloseResult,
    InvalidPeriod,
    PeriodCloser,
    PeriodNotEnded,
    Snapshot,
    parse_period,
    previous_period,
    snapshot_hash,
    verify_snapshot,
)
from hoodrun.config import Config, PlanConfig, RateConfig, RetentionConfig, TelemetryConfig
from hoodrun.metering.config import MeterConfig, PriceConfig, TaxRule, TierConfig
from hoodrun.metering.money import Money
from hoodrun.metering.rating import ContractTerms, prorate
from hoodrun.metering.store import ContractBook
from hoodrun.store import Store, read_audit
from hoodrun.store.tables import closing_snapshots, contracts, orgs
from hoodrun.telemetry.pipeline import hours_of
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.store import ChdbStore
from hoodrun.telemetry.units import ComputeUnits
from tests._stores import FakeClock
from tests.telemetry.support import call_record

ROOT = Path(__file__).resolve().parents[2]
# Rows of 2026 stay put whenever the suite runs: TTLs count from the real clock.
RETENTION = RetentionConfig(raw_days=3650, hourly_days=3650)

BASIC = PriceConfig(type="FIXED", fee=D("49"))
METERED = PriceConfig(
    type="METERED",
    meter="requests",
    tiers=(TierConfig(up_to=D(1000), unit_price=D("0.01")), TierConfig(unit_price=D("0.005"))),
)
HYBRID = PriceConfig(
    type="HYBRID",
    fee=D("100"),
    included=D(10_000),
    tiers=(TierConfig(unit_price=D("10")),),
    per=D(1_000_000),
    multipliers={"trace": D(2)},
)
CONFIG = Config(
    plans=(
        PlanConfig(name="free", rate=RateConfig(rps=10)),
        PlanConfig(name="basic", rate=RateConfig(rps=10), price=BASIC),
        PlanConfig(name="metered", rate=RateConfig(rps=10), price=METERED),
        PlanConfig(name="hybrid", rate=RateConfig(rps=10), price=HYBRID),
        PlanConfig(
            name="tokens",
            rate=RateConfig(rps=10),
            price=PriceConfig(type="METERED", meter="tokens", tiers=(TierConfig(),)),
        ),
    ),
    meters=(MeterConfig(slug="tokens", event_type="llm", aggregation="COUNT"),),
    taxes={
        "TR": TaxRule(name="KDV", rate=D("0.20")),
        "DE": TaxRule(name="VAT", rate=D("0.19"), reverse_charge_b2b=True),
    },
    telemetry=TelemetryConfig(retention=RETENTION),
)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)
OCT = datetime(2026, 10, 1, tzinfo=UTC)
NOV = datetime(2026, 11, 1, tzinfo=UTC)
DEC = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
async def analytics(chdb_path: Path) -> AsyncIterator[ChdbStore]:
    store = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    await store.setup(RETENTION)
    yield store
    await store.drop()
    await store.aclose()


def usd(amount: str) -> Money:
    return Money.of(amount, "USD")


async def add_org(store: Store, org_id: str, plan: str | None = None) -> str:
    async with store.transaction() as conn:
        await conn.execute(insert(orgs).values(id=org_id, name=org_id, plan=plan, created_at=SINCE))
    return org_id


async def hourly(analytics: ChdbStore, rows: Iterable[tuple[Any, ...]]) -> None:
    """Rollup rows: (hour, org, chain, method, outcome, requests, compute units)."""
    rows = list(rows)
    table = pa.table(
        {
            "hour": pa.array([r[0] for r in rows], pa.timestamp("s", tz="UTC")),
            "org_id": [r[1] for r in rows],
            "project_id": ["prj_1"] * len(rows),
            "key_id": [f"key_{i}" for i in range(len(rows))],
            "chain": [r[2] for r in rows],
            "method": [r[3] for r in rows],
            "outcome": [r[4] for r in rows],
            "requests": pa.array([r[5] for r in rows], pa.uint64()),
            "compute_units": pa.array([r[6] for r in rows], pa.uint64()),
            "version": pa.array([datetime.now(UTC)] * len(rows), pa.timestamp("us", tz="UTC")),
        }
    )
    await analytics.insert_into("usage_hourly", table)


async def raw_calls(analytics: ChdbStore, org: str, at: datetime, n: int, tag: str) -> None:
    """``n`` eth_call calls (26 compute units each) of ``org`` at ``at``, rolled up."""
    records = [call_record(f"{tag}-{org}-{i}", ts=at.timestamp() + i, org_id=org) for i in range(n)]
    table = RowBuilder(ComputeUnits()).table(records)
    await analytics.insert(table)
    rollups = Rollups(analytics)
    rollups.mark(hours_of(table))
    await rollups.run()


def closer(store: Store, analytics: ChdbStore, now: datetime) -> PeriodCloser:
    return PeriodCloser(store, analytics, CONFIG, clock=FakeClock(now))


def by_org(result: CloseResult) -> dict[str, Snapshot]:
    return {snapshot.org_id: snapshot for snapshot in result.closed}


def amounts(snapshot: Snapshot) -> list[tuple[str, str]]:
    return [(line.kind, str(line.amount.amount)) for line in snapshot.lines]


def test_periods() -> None:
    assert parse_period("2026-11") == (NOV, DEC)
    assert parse_period("2026-12") == (DEC, datetime(2027, 1, 1, tzinfo=UTC))
    assert previous_period("2026-01", 2) == "2025-11"
    for bad in ("2026-13", "2026-1", "26-11", "2026-11-01", ""):
        with pytest.raises(InvalidPeriod, match="YYYY-MM"):
            parse_period(bad)


async def test_plans_taxes_and_what_is_billable(store: Store, analytics: ChdbStore) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    for org, plan, terms in [
        ("org_tr", "basic", {"country": "TR"}),
        ("org_us", "metered", {"country": "US"}),
        ("org_de", "hybrid", {"country": "DE", "business": True, "tax_id": "DE123"}),
        ("org_de_person", "basic", {"country": "DE"}),
    ]:
        await add_org(store, org)
        await book.create(org, plan, starts_at=SINCE, **terms)  # type: ignore[arg-type]
    await add_org(store, "org_free")
    await add_org(store, "org_unsigned", plan="basic")
    hour = OCT + timedelta(days=3, hours=5)
    await hourly(
        analytics,
        [
            (hour, "org_us", "eth", "eth_call", "ok", 1500, 39_000),
            (hour, "org_us", "eth", "eth_call", "rpc_error", 100, 2_600),
            # Refused and failed calls count nothing, whatever their row says.
            (hour, "org_us", "eth", "eth_call", "upstream_error", 50, 999),
            (hour, "org_us", "eth", "eth_call", "rate_limited", 70, 0),
            # Notifications: compute units, never requests.
            (hour, "org_us", "eth", "eth_subscription", "ok", 40, 160),
            (hour, "org_de", "eth", "eth_call", "ok", 1000, 26_000),
            (hour, "org_de", "base", "debug_traceTransaction", "ok", 100, 30_900),
            (hour, "org_free", "eth", "eth_call", "ok", 10, 260),
            (hour, "org_unsigned", "eth", "eth_call", "ok", 5, 130),
            (NOV, "org_us", "eth", "eth_call", "ok", 9_999, 0),  # the next month
            (OCT - timedelta(hours=1), "org_us", "eth", "eth_call", "ok", 9_999, 0),
        ],
    )
    ticks: list[tuple[int, int]] = []
    closed_at = NOV + timedelta(hours=2)
    result = await closer(store, analytics, closed_at).close(
        "2026-10", progress=lambda done, total: ticks.append((done, total))
    )
    assert result.ok and not result.warnings and result.skipped == ()
    snaps = by_org(result)
    assert set(snaps) == {"org_tr", "org_us", "org_de", "org_de_person"}
    assert ticks[-1] == (6, 6) and len(ticks) == 6

    tr = snaps["org_tr"]
    assert amounts(tr) == [("fee", "49.00"), ("tax", "9.80")]
    assert (tr.subtotal, tr.tax, tr.total) == (usd("49.00"), usd("9.80"), usd("58.80"))
    assert (tr.tax_name, tr.reverse_charge, tr.credits) == ("KDV", False, usd("0"))
    assert (tr.period_start, tr.period_end, tr.closed_at) == (OCT, NOV, closed_at)

    us = snaps["org_us"]  # 1,600 billable requests: 1,000 at 0.01 and 600 at 0.005; no tax
    assert amounts(us) == [("usage", "10.00"), ("usage", "3.00")]
    assert [line.quantity for line in us.lines] == [D(1000), D(600)]
    assert us.total == usd("13.00") and us.tax_name is None
    assert [dict(row) for row in us.usage] == [
        {"contract": us.contract_id, "chain": "eth", "kind": "plain", "method": "eth_call",
         "requests": 1600, "compute_units": 41_600},
        {"contract": us.contract_id, "chain": "eth", "kind": "plain",
         "method": "eth_subscription", "requests": 0, "compute_units": 160},
    ]  # fmt: skip

    de = snaps["org_de"]  # 26,000 + 2 x 30,900 = 87,800 units; 77,800 above the 10,000 included
    assert [(line.kind, line.quantity) for line in de.lines][:3] == [
        ("fee", D(1)),
        ("included", D(10_000)),
        ("usage", D(77_800)),
    ]
    assert amounts(de) == [("fee", "100.00"), ("included", "0.00"), ("usage", "0.78"),
                           ("tax", "0.00")]  # fmt: skip
    assert (
        de.reverse_charge and de.tax_name == "VAT" and "reverse charge" in de.lines[-1].description
    )
    assert de.total == usd("100.78") and de.tax == usd("0")
    assert {row["method"]: row["kind"] for row in de.usage} == {
        "eth_call": "plain",
        "debug_traceTransaction": "trace",
    }
    person = snaps["org_de_person"]  # no tax id: VAT is charged
    assert amounts(person) == [("fee", "49.00"), ("tax", "9.31")] and person.total == usd("58.31")

    assert result.no_contract == ("org_free", "org_unsigned")
    unbilled = {item.org_id: item for item in result.unbilled}
    assert (unbilled["org_free"].plan, unbilled["org_free"].priced) == ("free", False)
    assert (unbilled["org_unsigned"].plan, unbilled["org_unsigned"].priced) == ("basic", True)
    assert (unbilled["org_unsigned"].requests, unbilled["org_unsigned"].compute_units) == (5, 130)
    assert result.totals == {"USD": usd("230.89")}

    stored = await closer(store, analytics, closed_at).snapshots("2026-10")
    assert sorted(s.org_id for s in stored) == sorted(snaps)
    for snapshot in stored:
        assert snapshot == snaps[snapshot.org_id] and snapshot.verify()
    async with store.connect() as conn:
        audit = [e for e in await read_audit(conn) if e.action == "billing.close"]
    assert len(audit) == 1 and audit[0].target_id == "2026-10"
    assert audit[0].details["closed"] == 4 and audit[0].details["no_contract"] == 2
    assert audit[0].details["totals"] == {"USD": "230.89"}


async def test_the_content_hash_covers_every_column(store: Store, analytics: ChdbStore) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    await add_org(store, "org_a")
    await book.create("org_a", "metered", country="TR", starts_at=SINCE)
    await hourly(analytics, [(OCT, "org_a", "eth", "eth_call", "ok", 1200, 0)])
    await closer(store, analytics, NOV).close("2026-10")
    async with store.connect() as conn:
        row = dict((await conn.execute(select(closing_snapshots))).mappings().one())
    assert verify_snapshot(row) and snapshot_hash(row) == row["content_hash"]
    snapshot = Snapshot.from_row(row)
    assert snapshot.row() == row and snapshot.verify()
    changes: dict[str, Any] = {
        "id": "snap_other",
        "org_id": "org_b",
        "period": "2026-09",
        "period_start": OCT + timedelta(seconds=1),
        "period_end": NOV - timedelta(microseconds=1),
        "contract_id": "ctr_other",
        "plan": "basic",
        "currency": "EUR",
        "usage": [{**row["usage"][0], "requests": 1199}],
        "late_usage": [{"period": "2026-09"}],
        "lines": [{**row["lines"][0], "amount": "9.99"}, *row["lines"][1:]],
        "subtotal": row["subtotal"] + D("0.01"),
        "tax": row["tax"] - D("0.01"),
        "credits": D("1"),
        "total": row["total"] + D("0.01"),
        "closed_at": NOV + timedelta(microseconds=1),
    }
    assert set(changes) == {c.name for c in closing_snapshots.columns} - {"content_hash"}
    for name, value in changes.items():
        assert not verify_snapshot({**row, name: value}), name
    # The same values written differently hash the same: 12.5 is 12.500000.
    assert verify_snapshot({**row, "total": D(f"{row['total']:.6f}")})
    tax_line = next(line for line in row["lines"] if line["kind"] == "tax")
    assert tax_line["tax_name"] == "KDV" and tax_line["reverse_charge"] is False


async def test_closing_again_changes_nothing(store: Store, analytics: ChdbStore) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    for org in ("org_a", "org_b"):
        await add_org(store, org)
        await book.create(org, "basic", starts_at=SINCE)
    first = await closer(store, analytics, NOV).close("2026-10", orgs=["org_a", "org_nobody"])
    assert [s.org_id for s in first.closed] == ["org_a"]
    assert first.errors == {"org_nobody": "no org with this id"} and not first.ok
    second = await closer(store, analytics, NOV + timedelta(days=1)).close("2026-10")
    assert [s.org_id for s in second.closed] == ["org_b"] and second.skipped == ("org_a",)
    third = await closer(store, analytics, NOV + timedelta(days=2)).close("2026-10")
    assert third.closed == () and third.skipped == ("org_a", "org_b") and third.ok
    stored = {s.org_id: s for s in await closer(store, analytics, NOV).snapshots("2026-10")}
    assert stored["org_a"] == first.closed[0] and stored["org_b"] == second.closed[0]
    one = await closer(store, analytics, NOV).snapshot("org_a", "2026-10")
    assert one == first.closed[0]
    assert await closer(store, analytics, NOV).snapshot("org_a", "2026-09") is None
    async with store.connect() as conn:
        audit = [e for e in await read_audit(conn) if e.action == "billing.close"]
    assert [(e.details["closed"], e.details["skipped"]) for e in reversed(audit)] == [
        (1, 0),
        (1, 1),
        (0, 2),
    ]


async def test_two_closes_at_once_write_one_snapshot_per_org(
    store: Store, analytics: ChdbStore
) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    orgs_ = [f"org_{i}" for i in range(30)]
    for org in orgs_:
        await add_org(store, org)
        await book.create(org, "basic", starts_at=SINCE)
    one, two = await asyncio.gather(
        closer(store, analytics, NOV).close("2026-10"),
        closer(store, analytics, NOV).close("2026-10"),
    )
    assert len(one.closed) + len(two.closed) == 30
    for org in orgs_:
        closed_by = [r for r in (one, two) if org in {s.org_id for s in r.closed}]
        skipped_by = [r for r in (one, two) if org in r.skipped]
        assert len(closed_by) == 1 and len(skipped_by) == 1, org
    assert len(await closer(store, analytics, NOV).snapshots("2026-10")) == 30


async def test_late_usage_is_billed_in_the_next_period_once(
    store: Store, analytics: ChdbStore
) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    for org in ("org_busy", "org_quiet"):
        await add_org(store, org)
        await book.create(org, "metered", starts_at=SINCE)
    await add_org(store, "org_gone")
    await book.create("org_gone", "metered", starts_at=SINCE, ends_at=NOV)
    last_hour = NOV - timedelta(minutes=30)
    for org in ("org_busy", "org_quiet", "org_gone"):
        await raw_calls(analytics, org, OCT + timedelta(days=1), 100, "oct")
    october = await closer(store, analytics, NOV).close("2026-10")
    assert {s.org_id: s.lines[0].quantity for s in october.closed} == dict.fromkeys(
        ("org_busy", "org_quiet", "org_gone"), D(100)
    )

    # After October's close: 7 calls of October's last hour arrive (a replayed spool), and
    # November's own usage.
    for org in ("org_busy", "org_quiet", "org_gone"):
        await raw_calls(analytics, org, last_hour, 7, "late1")
    await raw_calls(analytics, "org_busy", NOV + timedelta(days=2), 50, "nov")
    november = await closer(store, analytics, DEC).close("2026-11")
    snaps = by_org(november)
    assert set(snaps) == {"org_busy", "org_quiet"}
    late_row = {"period": "2026-10", "chain": "eth", "kind": "plain", "method": "eth_call",
                "requests": 7, "compute_units": 7 * 26}  # fmt: skip
    assert [dict(r) for r in snaps["org_busy"].late_usage] == [late_row]
    assert snaps["org_busy"].lines[0].quantity == D(57)  # November's 50 and October's late 7
    assert sum(r["requests"] for r in snaps["org_busy"].usage) == 50
    # No usage of its own in November: a snapshot all the same, for the late usage.
    assert [dict(r) for r in snaps["org_quiet"].late_usage] == [late_row]
    assert snaps["org_quiet"].usage == () and snaps["org_quiet"].total == usd("0.07")
    # No contract in November: reported, not dropped.
    assert november.no_contract == ("org_gone",)
    assert [(u.org_id, u.period, u.requests, u.reason) for u in november.unbilled] == [
        ("org_gone", "2026-10", 7, "late usage; no contract in 2026-11")
    ]

    # Later still: 3 more of October, and 2 of November's last hour. December bills each once;
    # the 7 already carried by November are not billed again.
    await raw_calls(analytics, "org_busy", last_hour + timedelta(minutes=10), 3, "late2")
    await raw_calls(analytics, "org_busy", DEC - timedelta(minutes=5), 2, "late3")
    december = await closer(store, analytics, datetime(2027, 1, 1, tzinfo=UTC)).close("2026-12")
    busy = by_org(december)["org_busy"]
    assert sorted((r["period"], r["requests"]) for r in busy.late_usage) == [
        ("2026-10", 3),
        ("2026-11", 2),
    ]
    assert busy.lines[0].quantity == D(5) and busy.usage == ()
    assert not by_org(december)["org_quiet"].late_usage
    # A recount of an earlier month stays within LATE_PERIODS: January reaches back to November.
    await raw_calls(analytics, "org_busy", OCT + timedelta(days=5), 11, "too-late")
    january = await closer(store, analytics, datetime(2027, 2, 1, tzinfo=UTC)).close("2027-01")
    assert not by_org(january)["org_busy"].late_usage


async def test_a_recount_below_what_was_billed_is_named_not_credited(
    store: Store, analytics: ChdbStore
) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    await add_org(store, "org_a")
    await book.create("org_a", "metered", starts_at=SINCE)
    await hourly(analytics, [(OCT, "org_a", "eth", "eth_call", "ok", 100, 2_600)])
    await closer(store, analytics, NOV).close("2026-10")
    # The same rollup row rebuilt lower (a newer version replaces it), and November's usage.
    await hourly(analytics, [(OCT, "org_a", "eth", "eth_call", "ok", 90, 2_340)])
    await hourly(analytics, [(NOV, "org_a", "eth", "eth_call", "ok", 20, 520)])
    november = await closer(store, analytics, DEC).close("2026-11")
    snapshot = by_org(november)["org_a"]
    assert snapshot.late_usage == () and snapshot.lines[0].quantity == D(20)
    assert november.warnings == (
        "org org_a, 2026-10: the recount finds less than was billed for eth eth_call; not "
        "credited by the close of 2026-11",
    )


async def test_a_plan_change_prorates_split_by_hour(store: Store, analytics: ChdbStore) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    await add_org(store, "org_up")
    old = await book.create("org_up", "metered", country="TR", starts_at=SINCE)
    change_at = OCT + timedelta(days=15, hours=10, minutes=30)
    new = await book.change_plan("org_up", "hybrid", change_at=change_at)
    ten = change_at.replace(minute=0)
    await hourly(
        analytics,
        [
            (OCT, "org_up", "eth", "eth_call", "ok", 1000, 26_000),
            (ten, "org_up", "eth", "eth_call", "ok", 200, 5_200),  # its start is before the change
            (ten + timedelta(hours=1), "org_up", "eth", "eth_call", "ok", 3000, 78_000),
            (ten + timedelta(hours=2), "org_up", "base", "trace_block", "ok", 10, 5_000),
        ],
    )
    result = await closer(store, analytics, NOV).close("2026-10")
    snapshot = by_org(result)["org_up"]
    expected = prorate(
        METERED, HYBRID, change_at, OCT, NOV, D(1200), D(78_000 + 2 * 5_000),
        contract=ContractTerms(currency="USD", plan="metered", country="TR"),
        new_contract=ContractTerms(currency="USD", plan="hybrid", country="TR"),
        taxes=CONFIG.taxes,
    )  # fmt: skip
    assert snapshot.lines == expected.lines and snapshot.total == expected.gross
    assert "until 2026-10-16T10:30:00+00:00" in snapshot.lines[0].description
    assert (snapshot.contract_id, snapshot.plan) == (new.id, "hybrid")
    assert sorted((r["contract"] == old.id, r["requests"]) for r in snapshot.usage) == [
        (False, 10),
        (False, 3000),
        (True, 1200),
    ]


async def test_a_contract_starting_inside_the_period(store: Store, analytics: ChdbStore) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    await add_org(store, "org_new")
    starts = OCT + timedelta(days=19)  # 12 of October's 31 days left
    await book.create("org_new", "basic", starts_at=starts)
    await hourly(
        analytics,
        [
            (OCT + timedelta(days=4), "org_new", "eth", "eth_call", "ok", 40, 1_040),
            (starts + timedelta(hours=1), "org_new", "eth", "eth_call", "ok", 60, 1_560),
        ],
    )
    result = await closer(store, analytics, NOV).close("2026-10")
    snapshot = by_org(result)["org_new"]
    assert amounts(snapshot) == [("fee", "18.97")]  # 49 x 12/31
    assert snapshot.total == usd("18.97")
    assert [(r["contract"], r["requests"]) for r in snapshot.usage] == [
        (None, 40),
        (snapshot.contract_id, 60),
    ]
    assert [(u.org_id, u.requests, u.compute_units) for u in result.unbilled] == [
        ("org_new", 40, 1_040)
    ]
    assert "outside its contracts (2026-10-01 00:00 to 2026-10-20 00:00 UTC)" in (
        result.unbilled[0].reason
    )


async def test_problems_are_per_org(store: Store, analytics: ChdbStore) -> None:
    book = ContractBook(store, CONFIG, FakeClock(SINCE))
    for org in ("org_ok", "org_gone_plan", "org_tokens", "org_twice"):
        await add_org(store, org)
    await book.create("org_ok", "basic", starts_at=SINCE)
    await book.create("org_tokens", "tokens", starts_at=SINCE)
    await book.create("org_twice", "basic", starts_at=SINCE)
    await book.change_plan("org_twice", "hybrid", change_at=OCT + timedelta(days=5))
    await book.change_plan("org_twice", "metered", change_at=OCT + timedelta(days=20))
    async with store.transaction() as conn:  # a plan since removed from the config
        await conn.execute(
            insert(contracts).values(
                id="ctr_gone", org_id="org_gone_plan", plan="legacy", currency="USD",
                country=None, tax_id=None, business=False, discount_percent=D(0),
                minimum_override=None, starts_at=SINCE, ends_at=None, created_at=SINCE,
            )
        )  # fmt: skip
    result = await closer(store, analytics, NOV).close("2026-10")
    assert [s.org_id for s in result.closed] == ["org_ok"]
    assert set(result.errors) == {"org_gone_plan", "org_tokens", "org_twice"}
    assert "plan 'legacy', which the config no longer has" in result.errors["org_gone_plan"]
    assert "event meter 'tokens'" in result.errors["org_tokens"]
    assert "splits in 3 parts" in result.errors["org_twice"]
    async with store.connect() as conn:
        audit = [e for e in await read_audit(conn) if e.action == "billing.close"]
    assert audit[0].details["errors"] == 3


async def test_a_period_not_ended_is_refused(store: Store, analytics: ChdbStore) -> None:
    with pytest.raises(PeriodNotEnded, match="ends at 2026-12-01T00:00:00"):
        await closer(store, analytics, DEC - timedelta(seconds=1)).close("2026-11")
    async with store.connect() as conn:
        assert (await conn.execute(select(closing_snapshots))).first() is None


# --- the command line ----------------------------------------------------------------------------


def _hoodrun(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "hoodrun", "-c", str(config), *args],
        capture_output=True, text=True, env=env, cwd=config.parent, timeout=120, check=False,
    )  # fmt: skip


async def test_the_command_closes_and_reports(tmp_path: Path) -> None:
    config_file = tmp_path / "hoodrun.yaml"
    database_url = f"sqlite:///{tmp_path}/hoodrun.db"
    config_file.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "database_url": database_url,
                "telemetry": {"retention": {"raw_days": 3650, "hourly_days": 3650}},
                "taxes": {"TR": {"name": "KDV", "rate": "0.20"}},
                "plans": [
                    {"name": "free", "rate": {"rps": 10}},
                    {
                        "name": "basic",
                        "rate": {"rps": 10},
                        "price": {"type": "FIXED", "fee": "49.00"},
                    },
                ],
            }
        )
    )
    upgraded = _hoodrun(config_file, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    config = Config.model_validate(yaml.safe_load(config_file.read_text()))
    async with Store(database_url) as store:
        book = ContractBook(store, config, FakeClock(SINCE))
        for org in ("org_ok", "org_bad"):
            await add_org(store, org)
        await book.create("org_ok", "basic", country="TR", starts_at=SINCE)
        async with store.transaction() as conn:
            await conn.execute(
                insert(contracts).values(
                    id="ctr_gone", org_id="org_bad", plan="legacy", currency="USD",
                    country=None, tax_id=None, business=False, discount_percent=D(0),
                    minimum_override=None, starts_at=SINCE, ends_at=None, created_at=SINCE,
                )
            )  # fmt: skip

    first = _hoodrun(config_file, "billing", "close", "--period", "2026-10", "--json")
    assert first.returncode == 1, first.stderr
    summary = json.loads(first.stdout)
    assert (summary["closed"], summary["totals"]) == (1, {"USD": "58.80"})
    assert summary["snapshots"][0]["org_id"] == "org_ok"
    assert list(summary["errors"]) == ["org_bad"]

    again = _hoodrun(config_file, "billing", "close", "--period", "2026-10")
    assert again.returncode == 1
    assert re.search(r"already closed \(skipped\)\s+1", again.stdout)
    assert re.search(r"^\s*closed\s+0", again.stdout, re.MULTILINE)
    assert "error: org org_bad: contract ctr_gone is on plan 'legacy'" in again.stderr

    early = _hoodrun(config_file, "billing", "close", "--period", "2099-01")
    assert early.returncode == 1 and "period 2099-01 ends at 2099-02-01" in early.stderr
    async with Store(database_url) as store:
        snapshots = await PeriodCloser(store, None, config).snapshots()  # type: ignore[arg-type]
    assert [(s.org_id, s.total) for s in snapshots] == [("org_ok", usd("58.80"))]
    assert snapshots[0].verify()

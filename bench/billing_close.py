"""Period close: 1M usage rows over 1,000 customers closed into snapshots.

    .venv/bin/python bench/billing_close.py [--rows 1000000] [--orgs 1000] [--pg]

Setup (not timed): chDB in a temporary directory. ``--rows`` calls of November 2026 go into
``requests_raw`` (built as Arrow columns: 3 chains, 10 methods with their compute units, 3% JSON-RPC
errors, 2% refused, a few notifications) and are rolled up into ``usage_hourly`` by the rollup
statement the platform runs, since that is the path usage takes and the close reads the rollups.
October gets a quarter as many and is closed first, so November's close also recounts October for
late usage, as every close does. ``--orgs`` orgs: 96% with a contract (metered, hybrid or fixed
plans; TR, DE business, DE and US customers; one in 25 changes plan mid-month, which takes the
hourly split and proration), 4% without. The business database is SQLite, and with ``--pg`` also
a scratch PostgreSQL database (dropped afterwards).

Timed: ``PeriodCloser.close("2026-11")``, and closing it again (every org skipped). The reference,
in the same run: the close's own aggregate query alone on the rollups, and the same aggregate over
the raw rows (what reading them instead would cost). Goal from the issue: <= 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pyarrow as pa

from hoodrun.billing.close import USAGE_BY_METHOD, PeriodCloser, parse_period
from hoodrun.config import Config, PlanConfig, RateConfig, RetentionConfig, TelemetryConfig
from hoodrun.metering.config import PriceConfig, TaxRule, TierConfig
from hoodrun.store import Store, new_id, upgrade
from hoodrun.store.tables import contracts, orgs
from hoodrun.telemetry.rows import SCHEMA
from hoodrun.telemetry.schema import ROLLUP_HOURLY
from hoodrun.telemetry.store import ChdbStore
from hoodrun.telemetry.units import ComputeUnits

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RETENTION = RetentionConfig(raw_days=3650, hourly_days=3650)
CHAINS = ("eth", "base", "arb")
METHODS = (
    "eth_call", "eth_blockNumber", "eth_getLogs", "eth_getBalance", "eth_chainId",
    "eth_getTransactionReceipt", "eth_getBlockByNumber", "debug_traceTransaction",
    "trace_block", "eth_subscription",
)  # fmt: skip
WEIGHTS = np.array([30, 20, 10, 10, 5, 10, 8, 3, 2, 2], dtype=float)
CONFIG = Config(
    plans=(
        PlanConfig(name="free", rate=RateConfig(rps=10)),
        PlanConfig(
            name="metered",
            rate=RateConfig(rps=100),
            price=PriceConfig(
                type="METERED",
                meter="requests",
                per=D(1000),
                tiers=(
                    TierConfig(up_to=D(100_000), unit_price=D("0.4")),
                    TierConfig(up_to=D(1_000_000), unit_price=D("0.3")),
                    TierConfig(unit_price=D("0.2")),
                ),
            ),
        ),
        PlanConfig(
            name="hybrid",
            rate=RateConfig(rps=100),
            price=PriceConfig(
                type="HYBRID",
                fee=D(49),
                included=D(1_000_000),
                per=D(1_000_000),
                tiers=(TierConfig(unit_price=D(12)),),
                multipliers={"trace": D(2)},
            ),
        ),
        PlanConfig(
            name="fixed", rate=RateConfig(rps=100), price=PriceConfig(type="FIXED", fee=D(199))
        ),
    ),
    taxes={
        "TR": TaxRule(name="KDV", rate=D("0.20")),
        "DE": TaxRule(name="VAT", rate=D("0.19"), reverse_charge_b2b=True),
    },
    telemetry=TelemetryConfig(retention=RETENTION),
)
PLANS = ("metered", "hybrid", "fixed")
SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def raw_rows(rows: int, org_ids: list[str], period: str, seed: int) -> pa.Table:
    """``rows`` calls spread over the month, as the gateway's writer would store them."""
    rng = np.random.default_rng(seed)
    start, end = parse_period(period)
    ms = rng.integers(int(start.timestamp() * 1000), int(end.timestamp() * 1000), rows)
    org = rng.integers(0, len(org_ids), rows)
    chain = rng.integers(0, len(CHAINS), rows)
    method = rng.choice(len(METHODS), rows, p=WEIGHTS / WEIGHTS.sum())
    roll = rng.random(rows)
    outcome = np.where(roll < 0.02, "rate_limited", np.where(roll < 0.05, "rpc_error", "ok"))
    units = ComputeUnits()
    cost = np.array([units.of("eth", m) for m in METHODS], dtype=np.uint32)[method]
    cost = np.where(outcome == "rate_limited", 0, cost)
    columns = {
        "ts": pa.array(ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "request_id": pa.array([f"{seed}-{i}" for i in range(rows)]),
        "call_index": pa.array(np.zeros(rows, np.uint16)),
        "batch_size": pa.array(np.ones(rows, np.uint16)),
        "org_id": pa.array(np.array(org_ids, dtype=object)[org]),
        "project_id": pa.array(np.array(org_ids, dtype=object)[org]),
        "key_id": pa.array(np.array(org_ids, dtype=object)[org]),
        "chain": pa.array(np.array(CHAINS, dtype=object)[chain]),
        "method": pa.array(np.array(METHODS, dtype=object)[method]),
        "outcome": pa.array(outcome.astype(object)),
        "error_code": pa.array(np.where(outcome == "rpc_error", -32000, 0).astype(np.int32)),
        "status": pa.array(np.where(outcome == "rate_limited", 429, 200).astype(np.uint16)),
        "latency_ms": pa.array(rng.random(rows) * 20),
        "upstream_latency_ms": pa.array(rng.random(rows) * 15),
        "upstream": pa.array(np.array(CHAINS, dtype=object)[chain]),
        "attempts": pa.array(np.ones(rows, np.uint8)),
        "cache_hit": pa.array((rng.random(rows) < 0.1).astype(np.uint8)),
        "bytes_in": pa.array(np.full(rows, 90, np.uint32)),
        "bytes_out": pa.array(np.full(rows, 300, np.uint32)),
        "compute_units": pa.array(cost.astype(np.uint32)),
        "client_ip": pa.array(np.full(rows, "203.0.113.0", dtype=object)),
        "params_excerpt": pa.repeat(pa.scalar("", pa.string()), rows),
        "response_excerpt": pa.repeat(pa.scalar("", pa.string()), rows),
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)


async def load_usage(analytics: ChdbStore, org_ids: list[str], rows: int) -> int:
    for period, count, seed in (("2026-10", rows // 4, 1), ("2026-11", rows, 2)):
        table = raw_rows(count, org_ids, period, seed)
        for offset in range(0, table.num_rows, 250_000):
            await analytics.insert(table.slice(offset, 250_000))
        start, end = parse_period(period)
        params = {"start": int(start.timestamp() * 1000), "end": int(end.timestamp() * 1000)}
        await analytics.execute(ROLLUP_HOURLY, params)
    start, end = parse_period("2026-11")
    found = await analytics.query(
        "SELECT count() AS n FROM {db}.usage_hourly FINAL WHERE hour >= toDateTime({s:Int64}) "
        "AND hour < toDateTime({e:Int64})",
        {"s": int(start.timestamp()), "e": int(end.timestamp())},
    )
    return int(found[0]["n"])


async def load_contracts(store: Store, org_ids: list[str]) -> None:
    change_at = datetime(2026, 11, 15, 12, 30, tzinfo=UTC)
    org_rows, contract_rows = [], []
    countries = (
        ("TR", None, False),
        ("DE", "DE811", True),
        ("DE", None, False),
        ("US", None, False),
    )
    for index, org in enumerate(org_ids):
        org_rows.append({"id": org, "name": org, "plan": None, "created_at": SINCE})
        if index % 25 == 24:
            continue  # no contract
        country, tax_id, business = countries[index % 4]
        base = {
            "org_id": org, "currency": "USD", "country": country, "tax_id": tax_id,
            "business": business, "discount_percent": D(5 if index % 10 == 0 else 0),
            "minimum_override": None, "created_at": SINCE,
        }  # fmt: skip
        plan = PLANS[index % 3]
        changes = index % 25 == 7
        contract_rows.append(
            {**base, "id": new_id("ctr"), "plan": plan, "starts_at": SINCE,
             "ends_at": change_at if changes else None}
        )  # fmt: skip
        if changes:
            contract_rows.append(
                {**base, "id": new_id("ctr"), "plan": PLANS[(index + 1) % 3],
                 "starts_at": change_at, "ends_at": None}
            )  # fmt: skip
    async with store.transaction() as conn:
        await conn.execute(orgs.insert(), org_rows)
        await conn.execute(contracts.insert(), contract_rows)


async def reference(analytics: ChdbStore) -> tuple[float, float]:
    start, end = parse_period("2026-11")
    params = {"start": int(start.timestamp()), "end": int(end.timestamp())}
    began = time.perf_counter()
    await analytics.query(USAGE_BY_METHOD, params)
    rollups = time.perf_counter() - began
    raw = (
        "SELECT org_id, chain, method, countIf(outcome IN ('ok', 'rpc_error')) AS requests, "
        "sumIf(compute_units, outcome IN ('ok', 'rpc_error')) AS compute_units "
        "FROM {db}.requests_raw FINAL WHERE ts >= fromUnixTimestamp64Milli({start:Int64}) "
        "AND ts < fromUnixTimestamp64Milli({end:Int64}) GROUP BY org_id, chain, method"
    )
    ms = {"start": params["start"] * 1000, "end": params["end"] * 1000}
    began = time.perf_counter()
    await analytics.query(raw, ms)
    return rollups, time.perf_counter() - began


async def close_case(
    name: str, url: str, analytics: ChdbStore, org_ids: list[str], rows: int
) -> float:
    await upgrade(url)
    async with Store(url) as store:
        await load_contracts(store, org_ids)
        october = PeriodCloser(
            store, analytics, CONFIG, clock=lambda: datetime(2026, 11, 2, tzinfo=UTC)
        )
        await october.close("2026-10")
        closer = PeriodCloser(
            store, analytics, CONFIG, clock=lambda: datetime(2026, 12, 1, 2, tzinfo=UTC)
        )
        began = time.perf_counter()
        result = await closer.close("2026-11")
        seconds = time.perf_counter() - began
        began = time.perf_counter()
        again = await closer.close("2026-11")
        skip = time.perf_counter() - began
    assert result.ok and len(again.skipped) == len(result.closed), (result.errors, again.skipped)
    totals = ", ".join(str(amount) for amount in result.totals.values())
    print(
        f"{seconds:8.3f} s  close 2026-11 on {name}: {len(result.closed)} snapshots, "
        f"{len(result.no_contract)} without contract, {rows / seconds:,.0f} usage rows/s, "
        f"{len(result.closed) / seconds:,.0f} orgs/s (total {totals})"
    )
    print(f"{skip:8.3f} s  close 2026-11 again on {name} (every org skipped)")
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--pg", action="store_true", help="also on a scratch PostgreSQL database")
    args = parser.parse_args()
    import asyncpg

    with tempfile.TemporaryDirectory() as tmp:
        analytics = ChdbStore(Path(tmp) / "analytics", "bench")
        await analytics.setup(RETENTION)
        org_ids = [f"org_{i:05d}" for i in range(args.orgs)]
        began = time.perf_counter()
        hourly = await load_usage(analytics, org_ids, args.rows)
        print(
            f"setup: {args.rows:,} raw rows of 2026-11 (and {args.rows // 4:,} of 2026-10) rolled "
            f"up into {hourly:,} hourly rows in {time.perf_counter() - began:.1f} s"
        )
        on_rollups, on_raw = await reference(analytics)
        print(f"{on_rollups:8.3f} s  reference: the close's aggregate query alone (usage_hourly)")
        print(f"{on_raw:8.3f} s  reference: the same aggregate over requests_raw")
        worst = await close_case(
            "SQLite", f"sqlite:///{tmp}/hoodrun.db", analytics, org_ids, args.rows
        )
        if args.pg:
            name = f"hoodrun_bench_{uuid.uuid4().hex[:12]}"
            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
                worst = max(
                    worst, await close_case("PostgreSQL", url, analytics, org_ids, args.rows)
                )
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
        goal = "(goal <= 10 s)"
        print(f"period close, {args.rows:,} rows over {args.orgs:,} orgs: {worst:.2f} s   {goal}")
        await analytics.aclose()


if __name__ == "__main__":
    asyncio.run(main())

"""Contracts and credits in the business database, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import StatementError

from hoodrun.config import Config, PlanConfig, RateConfig
from hoodrun.metering.config import PriceConfig
from hoodrun.metering.credits import LowBalance
from hoodrun.metering.money import CurrencyMismatch, Money, MoneyError, total
from hoodrun.metering.rating import prorate
from hoodrun.metering.store import (
    ContractBook,
    ContractOverlap,
    CreditBook,
    NoContractInForce,
    OrgNotFound,
    UnknownPlan,
)
from hoodrun.store import Store, read_audit
from hoodrun.store.tables import credit_grants, orgs
from tests._stores import FakeClock

PRO = PriceConfig(type="FIXED", fee=D("31"))
SCALE = PriceConfig(type="FIXED", fee=D("62"))
CONFIG = Config(
    plans=(
        PlanConfig(name="free", rate=RateConfig(rps=10)),
        PlanConfig(name="pro", rate=RateConfig(rps=100), price=PRO),
        PlanConfig(name="scale", rate=RateConfig(rps=1000), price=SCALE),
        PlanConfig(
            name="lira",
            rate=RateConfig(rps=100),
            price=PriceConfig(type="FIXED", fee=D("1000"), currency="TRY"),
        ),
    ),
    default_plan="free",
)


def usd(amount: str | int) -> Money:
    return Money.of(amount, "USD")


async def make_org(store: Store, org_id: str, clock: FakeClock) -> str:
    async with store.transaction() as conn:
        await conn.execute(insert(orgs).values(id=org_id, name=org_id, created_at=clock.now))
    return org_id


async def test_a_plan_change_keeps_history_and_one_contract_in_force(
    store: Store, clock: FakeClock
) -> None:
    org = await make_org(store, "org_acme", clock)
    book = ContractBook(store, CONFIG, clock)
    start = clock.now
    first = await book.create(org, "pro", country="TR", discount_percent=D("10"), tax_id="123")
    assert first.currency == "USD" and first.starts_at == start and first.ends_at is None
    assert await book.in_force(org) == first

    change_at = clock.advance(timedelta(days=10))
    second = await book.change_plan(org, "scale", actor="portal")
    history = await book.history(org)
    assert [c.id for c in history] == [first.id, second.id]
    assert history[0].ends_at == change_at and history[0].plan == "pro"
    assert (second.plan, second.starts_at, second.ends_at) == ("scale", change_at, None)
    # The terms carry over to the new contract.
    assert (second.country, second.tax_id, second.discount_percent) == ("TR", "123", D("10"))
    assert history[1] == second

    # One contract in force at every instant around the change.
    for at in (
        start,
        change_at - timedelta(microseconds=1),
        change_at,
        change_at + timedelta(days=99),
    ):
        in_force = [c for c in history if c.in_force(at)]
        assert len(in_force) == 1
        assert await book.in_force(org, at) == in_force[0]
    assert await book.in_force(org, start - timedelta(seconds=1)) is None
    assert (await book.in_force(org, change_at - timedelta(seconds=1))).plan == "pro"  # type: ignore[union-attr]

    with pytest.raises(ContractOverlap):
        await book.create(org, "pro", starts_at=change_at + timedelta(days=1))
    with pytest.raises(ContractOverlap):
        await book.create(
            org, "pro", starts_at=start - timedelta(days=1), ends_at=start + timedelta(seconds=1)
        )
    # A contract that ends when the first one starts fits before it.
    earlier = await book.create(org, "free", starts_at=start - timedelta(days=5), ends_at=start)
    assert await book.in_force(org, start - timedelta(days=1)) == earlier
    assert await book.in_force(org, start) == history[0]

    async with store.connect() as conn:
        audit = list(reversed(await read_audit(conn, target_id=org)))
    assert [(e.action, e.actor) for e in audit] == [
        ("contract.create", "cli"),
        ("contract.change", "portal"),
        ("contract.create", "cli"),
    ]
    assert audit[1].details["ended"] == first.id and audit[1].details["plan"] == "scale"

    # The history rates the month of the change: 10/31 of 31 and 21/31 of 62.
    month_end = start + timedelta(days=31)
    rated = prorate(
        PRO,
        SCALE,
        change_at,
        start,
        month_end,
        D(0),
        D(0),
        contract=history[0].terms,
        new_contract=second.terms,
    )
    assert [str(line.amount.amount) for line in rated.lines if line.kind == "fee"] == [
        "10.00",
        "42.00",
    ]
    assert rated.subtotal == usd("46.80")  # 10% off


async def test_contract_changes_are_checked(store: Store, clock: FakeClock) -> None:
    org = await make_org(store, "org_b", clock)
    book = ContractBook(store, CONFIG, clock)
    with pytest.raises(NoContractInForce):
        await book.change_plan(org, "pro")
    with pytest.raises(UnknownPlan):
        await book.create(org, "platinum")
    with pytest.raises(OrgNotFound):
        await book.create("org_missing", "pro")
    with pytest.raises(CurrencyMismatch):
        await book.create(org, "lira", currency="USD")
    lira = await book.create(org, "lira", country="TR")
    assert lira.currency == "TRY"
    changed = await book.change_plan(org, "pro", change_at=clock.now + timedelta(days=3))
    assert changed.currency == "USD"
    with pytest.raises(ContractOverlap):  # a change is scheduled after this one
        await book.change_plan(org, "scale", change_at=clock.now + timedelta(days=1))
    assert [c.plan for c in await book.history(org)] == ["lira", "pro"]


async def test_amounts_round_trip_exactly(store: Store, clock: FakeClock) -> None:
    org = await make_org(store, "org_exact", clock)
    contract = await ContractBook(store, CONFIG, clock).create(
        org, "pro", discount_percent=D("12.345678"), minimum_override=D("99999999999999.999999")
    )
    (stored,) = await ContractBook(store, CONFIG, clock).history(org)
    assert stored == contract
    assert stored.minimum_override == D("99999999999999.999999")  # 20 digits: a float keeps 15-17

    credits = CreditBook(store, clock)
    await credits.grant(org, "prepaid", usd("12345678901234.57"))
    assert await credits.balance(org, "USD") == usd("12345678901234.57")
    spent = await credits.consume(org, usd("0.01"))
    assert spent.balance_after == usd("12345678901234.56")
    (grant,) = await credits.grants(org)
    assert grant.remaining == usd("12345678901234.56")

    with pytest.raises(StatementError, match="more than 6 digits"):
        await ContractBook(store, CONFIG, clock).create(
            await make_org(store, "org_fine", clock), "pro", discount_percent=D("1.0000001")
        )


async def test_credits_are_spent_in_order_with_a_ledger(store: Store, clock: FakeClock) -> None:
    org = await make_org(store, "org_c", clock)
    credits = CreditBook(store, clock)
    t0 = clock.now
    prepaid = await credits.grant(org, "prepaid", usd(100), note="invoice 7")
    promo = await credits.grant(org, "promotional", usd(20), expires_at=t0 + timedelta(days=30))
    expiring = await credits.grant(org, "prepaid", usd(50), expires_at=t0 + timedelta(days=5))
    await credits.grant(org, "prepaid", Money.of(999, "EUR"))  # another currency: not touched
    clock.advance(timedelta(days=1))

    spend = await credits.consume(org, usd(80), reference="inv_1", low_balance_below=usd(100))
    assert [(a.grant_id, a.amount) for a in spend.applied] == [
        (promo.id, usd(20)),
        (expiring.id, usd(50)),
        (prepaid.id, usd(10)),
    ]
    assert spend.remaining == usd(0)
    assert (spend.balance_before, spend.balance_after, spend.spent) == (usd(170), usd(90), usd(80))
    assert spend.low_balance == LowBalance(org, usd(90), usd(100))
    assert await credits.balance(org, "USD") == usd(90)
    assert await credits.balance(org, "EUR") == Money.of(999, "EUR")

    # After the 5th day nothing expired is spent; what the credits cannot cover is returned.
    clock.advance(timedelta(days=40))
    later = await credits.consume(org, usd(100), reference="inv_2", low_balance_below=usd(100))
    assert [(a.grant_id, a.amount) for a in later.applied] == [(prepaid.id, usd(90))]
    assert later.remaining == usd(10)
    assert later.low_balance is None  # already below the threshold before this spend
    assert await credits.balance(org, "USD") == usd(0)
    nothing = await credits.consume(org, usd(5))
    assert nothing.applied == () and nothing.remaining == usd(5)

    ledger = await credits.ledger(org)
    spends = [e for e in ledger if e.reason == "charge"]
    assert [(e.grant_id, e.amount, e.reference) for e in spends] == [
        (promo.id, usd(-20), "inv_1"),
        (expiring.id, usd(-50), "inv_1"),
        (prepaid.id, usd(-10), "inv_1"),
        (prepaid.id, usd(-90), "inv_2"),
    ]
    assert -total((e.amount for e in spends), "USD") == spend.spent + later.spent == usd(170)
    for grant in await credits.grants(org):
        entries = [e.amount for e in ledger if e.grant_id == grant.id]
        assert (
            total(entries, grant.currency) == grant.remaining
        )  # the ledger explains every balance

    async with store.connect() as conn:
        audit = await read_audit(conn, target_id=org)
    assert [e.action for e in audit] == ["credits.grant"] * 4


async def test_grants_are_checked(store: Store, clock: FakeClock) -> None:
    org = await make_org(store, "org_d", clock)
    credits = CreditBook(store, clock)
    with pytest.raises(MoneyError, match="positive"):
        await credits.grant(org, "prepaid", usd(0))
    with pytest.raises(MoneyError, match="smallest unit"):
        await credits.grant(org, "prepaid", usd("1.001"))
    with pytest.raises(MoneyError, match="smallest unit"):
        await credits.consume(org, usd("1.001"))
    with pytest.raises(ValueError, match="prepaid or promotional"):
        await credits.grant(org, "gift", usd(1))  # type: ignore[arg-type]
    with pytest.raises(OrgNotFound):
        await credits.grant("org_missing", "prepaid", usd(1))
    with pytest.raises(CurrencyMismatch):
        await credits.consume(org, usd(1), low_balance_below=Money.of(1, "EUR"))
    assert await credits.grants(org) == []


async def test_concurrent_spenders_never_overspend(store: Store, clock: FakeClock) -> None:
    org = await make_org(store, "org_race", clock)
    credits = CreditBook(store, clock)
    await credits.grant(org, "promotional", usd(30))
    await credits.grant(org, "prepaid", usd(30))
    await credits.grant(org, "prepaid", usd(40), expires_at=clock.now + timedelta(days=9))

    # Eight spenders of 17 each at once, every one on its own connection: 136 asked, 100 held.
    spends = await asyncio.gather(
        *(credits.consume(org, usd(17), reference=f"r{i}") for i in range(8))
    )

    for spend in spends:
        assert total((a.amount for a in spend.applied), "USD") + spend.remaining == usd(17)
    applied = total((a.amount for s in spends for a in s.applied), "USD")
    assert applied == usd(100)
    assert total((s.remaining for s in spends), "USD") == usd(36)
    assert await credits.balance(org, "USD") == usd(0)
    async with store.connect() as conn:
        remaining = (await conn.execute(select(credit_grants.c.remaining))).scalars().all()
    assert sorted(remaining) == [0, 0, 0]
    ledger = [e for e in await credits.ledger(org) if e.reason == "charge"]
    assert -total((e.amount for e in ledger), "USD") == applied
    # Each spender saw the balance the one before it left.
    befores = sorted((s.balance_before for s in spends), reverse=True)
    assert befores[0] == usd(100)
    assert all(s.balance_after == s.balance_before - s.spent for s in spends)
    assert sorted(s.balance_after for s in spends)[-1] == usd(83)


async def test_times_are_the_clocks(store: Store) -> None:
    clock = FakeClock(datetime(2031, 6, 1, 9, 30, tzinfo=UTC))
    org = await make_org(store, "org_t", clock)
    grant = await CreditBook(store, clock).grant(org, "prepaid", usd(1))
    contract = await ContractBook(store, CONFIG, clock).create(org, "pro")
    assert grant.granted_at == contract.starts_at == contract.created_at == clock.now
    (entry,) = await CreditBook(store, clock).ledger(org)
    assert (entry.at, entry.reason, entry.amount) == (clock.now, "grant", usd(1))

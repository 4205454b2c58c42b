"""Credit pools: the order grants are spent in, expiry, partial spends, balances, low balance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoodrun.metering.credits import (
    CreditGrant,
    LowBalance,
    apply_credits,
    balance,
    consumption_order,
    low_balance,
)
from hoodrun.metering.money import CurrencyMismatch, Money, MoneyError, total

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)


def usd(amount: str | int) -> Money:
    return Money.of(amount, "USD")


def grant(
    gid: str,
    amount: str | int,
    *,
    kind: Any = "prepaid",
    granted: int = 0,
    expires: int | None = None,
    remaining: str | int | None = None,
    currency: str = "USD",
) -> CreditGrant:
    """A grant made ``granted`` days after T0, expiring ``expires`` days after T0."""
    return CreditGrant(
        id=gid,
        org_id="org_a",
        kind=kind,
        amount=Money.of(amount, currency),
        remaining=Money.of(amount if remaining is None else remaining, currency),
        granted_at=T0 + timedelta(days=granted),
        expires_at=None if expires is None else T0 + timedelta(days=expires),
    )


def test_promotional_then_soonest_expiring_then_oldest() -> None:
    grants = [
        grant("prepaid_old", 10, granted=0),
        grant("prepaid_new", 10, granted=5),
        grant("prepaid_expiring", 10, granted=8, expires=40),
        grant("promo_open", 10, kind="promotional", granted=1),
        grant("promo_expiring", 10, kind="promotional", granted=2, expires=30),
    ]
    assert [g.id for g in consumption_order(grants, NOW)] == [
        "promo_expiring",
        "promo_open",
        "prepaid_expiring",
        "prepaid_old",
        "prepaid_new",
    ]
    applied, remaining, _ = apply_credits(grants, usd(35), NOW)
    assert [(a.grant_id, a.amount) for a in applied] == [
        ("promo_expiring", usd(10)),
        ("promo_open", usd(10)),
        ("prepaid_expiring", usd(10)),
        ("prepaid_old", usd(5)),
    ]
    assert remaining == usd(0)


def test_expired_and_future_grants_are_skipped() -> None:
    grants = [
        grant("expired", 10, kind="promotional", expires=10),  # expires exactly at NOW
        grant("future", 10, granted=11),
        grant("live", 10, expires=11),
    ]
    assert [g.id for g in consumption_order(grants, NOW)] == ["live"]
    applied, remaining, balances = apply_credits(grants, usd(15), NOW)
    assert [a.grant_id for a in applied] == ["live"]
    assert remaining == usd(5)
    assert [g.remaining for g in balances] == [usd(10), usd(10), usd(0)]
    assert balance(grants, NOW) == usd(10)
    assert balance(grants, NOW - timedelta(microseconds=1)) == usd(20)  # expired not yet


def test_partial_consumption_leaves_the_rest() -> None:
    grants = [grant("a", "10.00"), grant("b", "5.00", granted=1)]
    applied, remaining, balances = apply_credits(grants, usd("4.25"), NOW)
    assert [(a.grant_id, a.amount) for a in applied] == [("a", usd("4.25"))]
    assert remaining == usd(0)
    assert balances[0].remaining == usd("5.75") and balances[0].amount == usd("10.00")
    assert balances[1] is grants[1]
    # More than there is: both spent to zero, the rest is left to pay.
    applied, remaining, balances = apply_credits(balances, usd(20), NOW)
    assert [a.amount for a in applied] == [usd("5.75"), usd("5.00")]
    assert remaining == usd("9.25")
    assert [g.remaining for g in balances] == [usd(0), usd(0)]
    # Spent grants are skipped; nothing applies to zero.
    assert apply_credits(balances, usd(1), NOW).applied == ()
    assert apply_credits(grants, usd(0), NOW).applied == ()


def test_currency_mismatch_is_refused() -> None:
    grants = [grant("a", 10), grant("b", 10, currency="EUR")]
    with pytest.raises(CurrencyMismatch, match="grant b is in EUR"):
        apply_credits(grants, usd(5), NOW)
    with pytest.raises(CurrencyMismatch):
        balance(grants, NOW)
    with pytest.raises(CurrencyMismatch):
        balance([grant("a", 10)], NOW, "TRY")


def test_bad_amounts_and_grants_are_refused() -> None:
    with pytest.raises(MoneyError, match="negative"):
        apply_credits([grant("a", 10)], usd(-1), NOW)
    with pytest.raises(MoneyError, match="exceeds"):
        grant("a", 10, remaining=11)
    with pytest.raises(MoneyError, match="negative"):
        grant("a", 10, remaining=-1)
    with pytest.raises(ValueError, match="expires_at must be after"):
        grant("a", 10, granted=5, expires=5)
    with pytest.raises(ValueError, match="timezone-aware"):
        CreditGrant("a", "o", "prepaid", usd(1), usd(1), datetime(2030, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="prepaid or promotional"):
        grant("a", 10, kind="gift")


def test_balance_needs_a_currency_without_grants() -> None:
    assert balance([], NOW, "USD") == usd(0)
    with pytest.raises(ValueError, match="currency"):
        balance([], NOW)


def test_low_balance_signals_when_crossing_the_threshold() -> None:
    threshold = usd(10)
    event = low_balance("org_a", usd(12), usd("9.99"), threshold)
    assert event == LowBalance("org_a", usd("9.99"), threshold)
    assert low_balance("org_a", usd(10), usd("9.99"), threshold) is not None
    assert low_balance("org_a", usd(12), usd(10), threshold) is None  # not below
    assert low_balance("org_a", usd(9), usd(5), threshold) is None  # already below: said once
    assert low_balance("org_a", usd(12), usd(0), None) is None


_amounts = st.decimals(min_value=0, max_value=10_000, places=2)


@st.composite
def grants_at(draw: st.DrawFn) -> list[CreditGrant]:
    result = []
    for number in range(draw(st.integers(0, 6))):
        amount = draw(_amounts)
        remaining = draw(st.decimals(min_value=0, max_value=amount, places=2))
        granted = draw(st.integers(0, 20))
        expires = draw(st.none() | st.integers(granted + 1, 40))
        kind = draw(st.sampled_from(["prepaid", "promotional"]))
        result.append(
            grant(
                f"g{number}",
                amount,
                kind=kind,
                granted=granted,
                expires=expires,
                remaining=remaining,
            )
        )
    return result


@given(grants_at(), _amounts)
def test_applied_plus_remaining_is_the_amount_and_no_balance_goes_negative(
    grants: list[CreditGrant], amount: D
) -> None:
    due = usd(amount)
    applied, remaining, balances = apply_credits(grants, due, NOW)
    spent = total((a.amount for a in applied), "USD")
    assert spent + remaining == due
    assert remaining.amount >= 0
    assert all(a.amount.amount > 0 for a in applied)
    assert [g.id for g in balances] == [g.id for g in grants]
    for before, after in zip(grants, balances, strict=True):
        assert after.remaining.amount >= 0
        assert before.remaining - after.remaining == total(
            (a.amount for a in applied if a.grant_id == before.id), "USD"
        )
    # The balance falls by exactly what was spent; what is left over means it is all gone.
    assert balance(grants, NOW, "USD") - balance(balances, NOW, "USD") == spent
    if remaining.amount > 0:
        assert balance(balances, NOW, "USD") == usd(0)
    # Spent in order: each grant used up before the next is touched.
    order = [g.id for g in consumption_order(grants, NOW)]
    used = [a.grant_id for a in applied]
    assert used == order[: len(used)]
    by_id = {g.id: g for g in balances}
    assert all(by_id[gid].remaining.amount == 0 for gid in used[:-1])

"""Money and the rating engine: hand-computed bills for each rule, and properties of every bill."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hoodrun.metering.config import PriceConfig, TaxRule
from hoodrun.metering.credits import CreditGrant
from hoodrun.metering.money import (
    CurrencyMismatch,
    Money,
    MoneyError,
    minor_units,
    round_line,
    total,
)
from hoodrun.metering.rating import (
    ContractTerms,
    RatedPeriod,
    UsageRow,
    multiplier,
    period_fraction,
    preview_change,
    prorate,
    rate_period,
    weigh,
)

START = datetime(2030, 1, 1, tzinfo=UTC)
END = datetime(2030, 2, 1, tzinfo=UTC)  # 31 days
TAXES = {
    "TR": TaxRule(name="KDV", rate=D("0.20")),
    "DE": TaxRule(name="VAT", rate=D("0.19"), reverse_charge_b2b=True),
}
USD = ContractTerms("USD")


def price(**fields: Any) -> PriceConfig:
    return PriceConfig.model_validate(fields)


def rate(p: PriceConfig, usage: str | int, terms: ContractTerms = USD, **kw: Any) -> RatedPeriod:
    return rate_period(
        p, D(usage), period_start=START, period_end=END, contract=terms, taxes=TAXES, **kw
    )


def amounts(rated: RatedPeriod) -> list[tuple[str, str]]:
    return [(line.kind, str(line.amount.amount)) for line in rated.lines]


def usd(amount: str) -> Money:
    return Money.of(amount, "USD")


# --- money ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        ("0.125", "USD", "0.12"),
        ("0.135", "USD", "0.14"),
        ("-0.125", "EUR", "-0.12"),
        ("2.675", "TRY", "2.68"),
        ("12.5", "JPY", "12"),
        ("13.5", "JPY", "14"),
        ("1.0005", "KWD", "1.000"),
        ("1.0015", "BHD", "1.002"),
        ("7.005", "XYZ", "7.00"),  # unknown currencies have 2 minor units
    ],
)
def test_round_line_is_half_even_to_the_minor_unit(
    amount: str, currency: str, rounded: str
) -> None:
    result = round_line(D(amount), currency)
    assert str(result) == rounded


def test_minor_units_table() -> None:
    assert [minor_units(c) for c in ("USD", "EUR", "GBP", "TRY", "JPY", "KWD", "BHD", "ZZZ")] == [
        2,
        2,
        2,
        2,
        0,
        3,
        3,
        2,
    ]


def test_money_stays_in_one_currency() -> None:
    assert usd("1.10") + usd("2.205") == usd("3.305")
    assert (usd("1.10") - usd("2.20")).amount == D("-1.10")
    assert usd("0.125").rounded() == usd("0.12")
    assert usd("2") * 3 == usd("6")
    assert total([usd("1"), usd("2")], "USD") == usd("3")
    with pytest.raises(CurrencyMismatch, match="USD with EUR"):
        usd("1") + Money.of("1", "EUR")
    with pytest.raises(CurrencyMismatch):
        assert usd("1") < Money.of("2", "EUR")
    with pytest.raises(MoneyError, match="never float"):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(MoneyError, match="never float"):
        Money.of(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(MoneyError, match="ISO 4217"):
        Money.of("1", "usd")
    with pytest.raises(MoneyError, match="finite"):
        Money(D("NaN"), "USD")


_cents = st.decimals(
    min_value=-(10**12), max_value=10**12, places=6, allow_nan=False, allow_infinity=False
)


@given(_cents, _cents, _cents)
def test_money_arithmetic_is_exact(a: D, b: D, c: D) -> None:
    x, y, z = Money(a, "EUR"), Money(b, "EUR"), Money(c, "EUR")
    assert (x + y) - y == x
    assert (x + y) + z == x + (y + z)
    assert x + y == y + x
    assert (-x) + x == Money.zero("EUR")
    assert (x <= y) == (a <= b)


# --- usage ---------------------------------------------------------------------------------------


def test_multipliers_multiply_chain_and_kind() -> None:
    p = price(
        type="METERED",
        tiers=[{"unit_price": "1"}],
        multipliers={"chain:eth": "2", "archive": "3", "trace": "5"},
    )
    assert multiplier(p, "eth", "archive") == 6
    assert multiplier(p, "eth", "plain") == 2
    assert multiplier(p, "base", "trace") == 5
    assert multiplier(p, "base", "plain") == 1
    rows = [
        ("eth", "plain", D(100)),  # 200
        ("eth", "archive", D(10)),  # 60
        UsageRow("base", "trace", D(4)),  # 20
        ("base", "plain", D(7)),  # 7
    ]
    assert weigh(rows, p) == D(287)
    assert rate(p, weigh(rows, p)).total == usd("287.00")
    with pytest.raises(ValueError, match="method kind"):
        weigh([("eth", "debug", D(1))], p)
    with pytest.raises(ValueError, match="negative"):
        weigh([("eth", "plain", D(-1))], p)
    with pytest.raises(TypeError, match="never float"):
        weigh([("eth", "plain", 1.5)], p)  # type: ignore[list-item]


# --- each plan type ------------------------------------------------------------------------------


def test_fixed_charges_the_fee_whatever_the_usage() -> None:
    p = price(type="FIXED", fee="49")
    for usage in (0, 10**9):
        rated = rate(p, usage, ContractTerms("USD", plan="pro"))
        assert amounts(rated) == [("fee", "49.00")]
        assert rated.lines[0].description == "plan fee (pro)"
        assert rated.total == usd("49.00")


def test_metered_prices_usage_above_the_included_units() -> None:
    p = price(
        type="METERED",
        included="1000",
        per="1000",
        tiers=[{"up_to": "10000", "unit_price": "2"}, {"unit_price": "1"}],
    )
    rated = rate(p, 25_000)
    # 24,000 billable: 10,000 at 2.00 per 1,000 and 14,000 at 1.00 per 1,000.
    assert amounts(rated) == [("included", "0.00"), ("usage", "20.00"), ("usage", "14.00")]
    assert [line.quantity for line in rated.lines] == [1000, 10000, 14000]
    assert rated.total == usd("34.00")


def test_hybrid_is_a_fee_with_included_units_then_the_overage() -> None:
    p = price(
        type="HYBRID",
        fee="49",
        included="1000000",
        per="1000000",
        tiers=[{"unit_price": "2"}],
    )
    rated = rate(p, 3_500_000)
    assert amounts(rated) == [("fee", "49.00"), ("included", "0.00"), ("usage", "5.00")]
    assert rated.total == usd("54.00")
    within = rate(p, 400_000)
    assert amounts(within) == [("fee", "49.00"), ("included", "0.00")]
    assert within.lines[1].quantity == 400_000


def test_free_allowance() -> None:
    p = price(type="METERED", included="1000", tiers=[{"unit_price": "0.01"}])
    assert rate(p, 999).total == usd("0")
    assert rate(p, 999).lines[0].quantity == 999
    assert rate(p, 1000).total == usd("0")
    assert rate(p, 1001).total == usd("0.01")
    assert amounts(rate(p, 1100)) == [("included", "0.00"), ("usage", "1.00")]


# --- tiers ---------------------------------------------------------------------------------------

TIERS = [
    {"up_to": "100", "unit_price": "1"},
    {"up_to": "1000", "unit_price": "0.5", "flat_price": "10"},
    {"unit_price": "0.25"},
]


def test_graduated_and_volume_on_the_same_tiers() -> None:
    graduated = price(type="METERED", tiers=TIERS)
    volume = price(type="METERED", tiers=TIERS, tier_mode="volume")
    # Graduated: 100 x 1 + 400 x 0.5 + tier 2's flat 10.
    assert amounts(rate(graduated, 500)) == [
        ("usage", "100.00"),
        ("usage", "200.00"),
        ("flat", "10.00"),
    ]
    assert rate(graduated, 500).total == usd("310.00")
    # Volume: every unit at the tier 500 falls in (0.5), plus that tier's flat price.
    assert amounts(rate(volume, 500)) == [("usage", "250.00"), ("flat", "10.00")]
    assert rate(volume, 500).total == usd("260.00")
    # Beyond tier 2: graduated 100 + 450 + 10 + 1000 x 0.25; volume 2000 x 0.25 only.
    assert rate(graduated, 2000).total == usd("810.00")
    assert rate(volume, 2000).total == usd("500.00")


def test_tier_boundaries_are_exact() -> None:
    graduated = price(type="METERED", tiers=TIERS)
    volume = price(type="METERED", tiers=TIERS, tier_mode="volume")
    # Exactly at up_to: that tier, and the next one (and its flat price) not reached.
    assert amounts(rate(graduated, 100)) == [("usage", "100.00")]
    assert amounts(rate(volume, 100)) == [("usage", "100.00")]
    assert "tier 1 " in rate(volume, 100).lines[0].description
    assert amounts(rate(volume, 1000)) == [("usage", "500.00"), ("flat", "10.00")]
    # A hair above: the next tier.
    assert amounts(rate(graduated, "100.02")) == [
        ("usage", "100.00"),
        ("usage", "0.01"),
        ("flat", "10.00"),
    ]
    assert amounts(rate(volume, "100.02")) == [("usage", "50.01"), ("flat", "10.00")]
    assert "tier 3 " in rate(volume, "1000.5").lines[0].description


def test_usage_above_the_last_tier_is_priced_by_it() -> None:
    p = price(
        type="METERED",
        tiers=[{"up_to": "10", "unit_price": "1"}, {"up_to": "20", "unit_price": "2"}],
    )
    assert rate(p, 30).total == usd("50.00")  # 10 x 1 + 20 x 2
    assert rate(p.model_copy(update={"tier_mode": "volume"}), 30).total == usd("60.00")


def test_rounding_is_per_line_half_even() -> None:
    p = price(
        type="METERED",
        tiers=[
            {"up_to": "1", "unit_price": "0.005"},
            {"up_to": "2", "unit_price": "0.015"},
            {"unit_price": "0.005"},
        ],
    )
    # Each line on its own, half-even: 0.005 -> 0.00, 0.015 -> 0.02.
    assert amounts(rate(p, 3)) == [("usage", "0.00"), ("usage", "0.02"), ("usage", "0.00")]
    # Two lines of 0.005 each are 0.00 + 0.00; their exact sum, 0.01, is never billed.
    two = rate(p.model_copy(update={"tiers": (p.tiers[0], p.tiers[2])}), 2)
    assert amounts(two) == [("usage", "0.00"), ("usage", "0.00")]
    assert two.total == usd("0.00")


def test_per_applies_to_unit_prices_only() -> None:
    p = price(type="METERED", per="1000000", tiers=[{"unit_price": "0.4", "flat_price": "3"}])
    assert amounts(rate(p, 2_500_000)) == [("usage", "1.00"), ("flat", "3.00")]


def test_zero_usage_reaches_no_tier() -> None:
    p = price(type="METERED", tiers=[{"unit_price": "1", "flat_price": "5"}])
    assert rate(p, 0).lines == ()
    assert rate(p, 0).total == usd("0")


# --- minimum, discount, taxes --------------------------------------------------------------------


def test_minimum_commitment_tops_up() -> None:
    p = price(type="METERED", minimum="100", tiers=[{"unit_price": "0.01"}])
    rated = rate(p, 500)
    assert amounts(rated) == [("usage", "5.00"), ("minimum", "95.00")]
    assert rated.total == usd("100.00")
    overridden = rate(p, 500, ContractTerms("USD", minimum_override=D("50")))
    assert amounts(overridden) == [("usage", "5.00"), ("minimum", "45.00")]
    above = rate(p, 20_000)
    assert amounts(above) == [("usage", "200.00")]


def test_discount_then_minimum() -> None:
    p = price(type="HYBRID", fee="49", per="1000", tiers=[{"unit_price": "1"}])
    terms = ContractTerms("USD", discount_percent=D("10"))
    rated = rate(p, 5000, terms)
    assert amounts(rated) == [("fee", "49.00"), ("usage", "5.00"), ("discount", "5.40")]
    assert rated.lines[-1].deduction and rated.lines[-1].signed == usd("-5.40")
    assert rated.subtotal == usd("48.60")
    assert rated.total == usd("48.60")
    # A commitment of 50 is what is spent after the discount: the top-up is 1.40.
    committed = rate(p.model_copy(update={"minimum": D(50)}), 5000, terms)
    assert amounts(committed)[-1] == ("minimum", "1.40")
    assert committed.total == usd("50.00")
    # 12.5% of 49.00 = 6.125 -> 6.12 (half-even).
    assert amounts(rate(p, 0, ContractTerms("USD", discount_percent=D("12.5"))))[-1] == (
        "discount",
        "6.12",
    )


def test_kdv_for_a_turkish_customer() -> None:
    p = price(type="FIXED", fee="49", currency="TRY")
    rated = rate(p, 0, ContractTerms("TRY", country="TR"))
    assert amounts(rated) == [("fee", "49.00"), ("tax", "9.80")]
    assert rated.lines[-1].description == "KDV 20%"
    assert (rated.tax, rated.total) == (Money.of("9.80", "TRY"), Money.of("58.80", "TRY"))
    assert not rated.reverse_charge


def test_reverse_charge_for_an_eu_business_with_a_tax_id() -> None:
    p = price(type="FIXED", fee="49", currency="EUR")
    b2b = rate(p, 0, ContractTerms("EUR", country="DE", business=True, tax_id="DE123456789"))
    assert b2b.reverse_charge
    assert b2b.tax == Money.of("0", "EUR")
    assert amounts(b2b) == [("fee", "49.00"), ("tax", "0.00")]
    assert "reverse charge" in b2b.lines[-1].description
    assert b2b.total == Money.of("49.00", "EUR")
    # Without a tax id, or as a consumer, the 19% is due: 9.31.
    for terms in (
        ContractTerms("EUR", country="DE", business=True),
        ContractTerms("EUR", country="DE", tax_id="DE123456789"),
    ):
        due = rate(p, 0, terms)
        assert not due.reverse_charge
        assert due.tax == Money.of("9.31", "EUR")


def test_no_tax_for_a_us_customer() -> None:
    p = price(type="FIXED", fee="49")
    for terms in (ContractTerms("USD", country="US", business=True, tax_id="12-3456789"), USD):
        rated = rate(p, 0, terms)
        assert [line.kind for line in rated.lines] == ["fee"]
        assert rated.tax == usd("0")
        assert rated.total == usd("49.00")


def test_the_contract_is_rated_in_its_plans_currency() -> None:
    with pytest.raises(CurrencyMismatch):
        rate(price(type="FIXED", fee="1", currency="EUR"), 0)


# --- credits in a bill ---------------------------------------------------------------------------


def _grant(gid: str, kind: Any, amount: str, **kw: Any) -> CreditGrant:
    return CreditGrant(
        gid, "org_a", kind, usd(amount), usd(amount), START - timedelta(days=1), **kw
    )


def test_credits_pay_the_total_with_tax_and_stop_at_zero() -> None:
    p = price(type="FIXED", fee="100")
    grants = [_grant("g1", "prepaid", "500"), _grant("g2", "promotional", "30")]
    rated = rate(p, 0, ContractTerms("USD", country="TR"), credits=grants)
    assert rated.gross == usd("120.00")
    assert amounts(rated) == [
        ("fee", "100.00"),
        ("tax", "20.00"),
        ("credit", "30.00"),
        ("credit", "90.00"),
    ]
    assert rated.credits == usd("120.00")
    assert rated.total == usd("0.00")
    assert rated.credit_application is not None
    assert [g.remaining for g in rated.credit_application.balances] == [usd("410.00"), usd("0.00")]
    # A grant that expired at the end of the period does not pay for it.
    late = rate(p, 0, credits=[_grant("g3", "prepaid", "500", expires_at=END)])
    assert late.credits == usd("0") and late.total == usd("100.00")


# --- a plan change within the period -------------------------------------------------------------

OLD = price(
    type="HYBRID",
    fee="31",
    included="3100",
    tiers=[{"up_to": "31000", "unit_price": "0.01"}, {"unit_price": "0.005"}],
)
NEW = price(type="HYBRID", fee="62", included="6200", tiers=[{"unit_price": "0.002"}])
CHANGE = datetime(2030, 1, 11, tzinfo=UTC)  # 10 of 31 days on OLD, 21 on NEW


def test_period_fraction_counts_seconds() -> None:
    assert period_fraction(START, CHANGE, (START, END)) == D(10) / D(31)
    half = START + (END - START) / 2
    assert period_fraction(START, half, (START, END)) == D("0.5")
    tick = START + timedelta(microseconds=1)
    assert period_fraction(START, tick, (START, END)) == D("0.000001") / D(31 * 86400)


def test_mid_period_upgrade_is_prorated() -> None:
    rated = prorate(OLD, NEW, CHANGE, START, END, D(5000), D(10200), contract=USD)
    by_kind = [(line.kind, str(line.amount.amount)) for line in rated.lines]
    # Before: 10/31 of the fee (10.00), of the included units (1,000) and of the tier bound
    # (10,000); 4,000 billable at 0.01. After: 21/31 of 62 (42.00), 4,200 included, 6,000 at 0.002.
    assert by_kind == [
        ("fee", "10.00"),
        ("included", "0.00"),
        ("usage", "40.00"),
        ("fee", "42.00"),
        ("included", "0.00"),
        ("usage", "12.00"),
    ]
    assert rated.total == usd("104.00")
    assert rated.usage == D(15200)
    assert rated.lines[0].description.startswith("old plan until 2030-01-11")
    # The old plan's tier bound shrinks with its share: 15,000 billable crosses it at 10,000.
    crossing = prorate(OLD, NEW, CHANGE, START, END, D(16000), D(0), contract=USD)
    assert [str(line.amount.amount) for line in crossing.lines if line.kind == "usage"] == [
        "100.00",
        "25.00",
    ]
    assert round(crossing.lines[2].quantity) == 10000


def test_prorate_with_tax_discount_and_credits_follows_the_new_terms() -> None:
    old_terms = ContractTerms("USD", plan="basic", discount_percent=D(50))
    new_terms = ContractTerms("USD", plan="pro", country="TR")
    grants = [_grant("g1", "prepaid", "10")]
    rated = prorate(
        OLD,
        NEW,
        CHANGE,
        START,
        END,
        D(0),
        D(0),
        contract=old_terms,
        new_contract=new_terms,
        taxes=TAXES,
        credits=grants,
    )
    # basic: 10.00 less 50%; pro: 42.00; KDV 20% of 47.00; 10.00 of credit.
    assert [(line.kind, str(line.amount.amount)) for line in rated.lines] == [
        ("fee", "10.00"),
        ("included", "0.00"),
        ("discount", "5.00"),
        ("fee", "42.00"),
        ("included", "0.00"),
        ("tax", "9.40"),
        ("credit", "10.00"),
    ]
    assert rated.total == usd("46.40")


def test_a_change_at_the_edges_is_one_plan() -> None:
    at_start = prorate(OLD, NEW, START, START, END, D(0), D(9000), contract=USD)
    assert at_start.total == rate(NEW, 9000).total == usd("67.60")
    at_end = prorate(OLD, NEW, END, START, END, D(9000), D(0), contract=USD)
    assert at_end.total == rate(OLD, 9000).total
    with pytest.raises(ValueError, match="within the period"):
        prorate(OLD, NEW, END + timedelta(seconds=1), START, END, D(0), D(0), contract=USD)
    with pytest.raises(ValueError, match="usage before"):
        prorate(OLD, NEW, START, START, END, D(1), D(0), contract=USD)


def test_preview_shows_staying_and_changing() -> None:
    preview = preview_change(
        OLD,
        NEW,
        change_at=CHANGE,
        period_start=START,
        period_end=END,
        usage_so_far=[("eth", "plain", D(5000))],
        contract=USD,
    )
    # 10 days used 5,000: the remaining 21 are expected to use 10,500.
    assert preview.usage_after == D(10500)
    # Staying: 31 + (15,500 - 3,100) x 0.01 = 155.00.
    assert preview.stay.total == usd("155.00")
    # Changing: 10.00 + 40.00 before; 42.00 + (10,500 - 4,200) x 0.002 = 54.60 after.
    assert preview.change.total == usd("104.60")
    assert preview.difference == usd("-50.40")
    expected = preview_change(
        OLD,
        NEW,
        change_at=CHANGE,
        period_start=START,
        period_end=END,
        usage_so_far=[("eth", "plain", D(5000))],
        contract=USD,
        expected_usage_after=[("eth", "plain", D(0))],
    )
    assert expected.change.total == usd("92.00")  # 10.00 + 40.00 + 42.00


# --- properties ----------------------------------------------------------------------------------

_money = st.decimals(min_value=0, max_value=1000, places=2)
_usage = st.decimals(min_value=0, max_value=10**9, places=3)


@st.composite
def prices(draw: st.DrawFn, *, mode: str | None = None, currency: str = "USD") -> PriceConfig:
    kind = draw(st.sampled_from(["FIXED", "METERED", "HYBRID"]))
    if kind == "FIXED":
        return price(type="FIXED", currency=currency, fee=draw(_money), minimum=draw(_money))
    bounds = sorted(draw(st.sets(st.integers(1, 10**8), min_size=0, max_size=3)))
    tiers = [
        {
            "up_to": bound,
            "unit_price": draw(_money),
            "flat_price": draw(st.sampled_from([0, draw(_money)])),
        }
        for bound in bounds
    ]
    tiers.append({"unit_price": draw(_money), "flat_price": draw(_money)})
    return price(
        type=kind,
        currency=currency,
        fee=draw(_money) if kind == "HYBRID" else 0,
        included=draw(st.sampled_from([0, draw(st.integers(0, 10**7))])),
        per=draw(st.sampled_from([1, 1000, 1_000_000])),
        tiers=tiers,
        tier_mode=mode or draw(st.sampled_from(["graduated", "volume"])),
        minimum=draw(st.sampled_from([0, draw(_money)])),
    )


@st.composite
def terms(draw: st.DrawFn, currency: str = "USD") -> ContractTerms:
    return ContractTerms(
        currency,
        country=draw(st.sampled_from([None, "TR", "DE", "US"])),
        tax_id=draw(st.sampled_from([None, "X1"])),
        business=draw(st.booleans()),
        discount_percent=draw(st.decimals(min_value=0, max_value=100, places=2)),
        minimum_override=draw(st.sampled_from([None, draw(_money)])),
    )


@st.composite
def grant_lists(draw: st.DrawFn, currency: str = "USD") -> list[CreditGrant]:
    grants = []
    for number in range(draw(st.integers(0, 4))):
        amount = Money(round_line(draw(_money), currency), currency)
        spent = round_line(
            draw(st.decimals(min_value=0, max_value=amount.amount, places=2)), currency
        )
        spent = min(spent, amount.amount)
        expires = draw(st.sampled_from([None, END, END + timedelta(days=30)]))
        kind = draw(st.sampled_from(["prepaid", "promotional"]))
        grants.append(
            CreditGrant(
                f"g{number}", "org", kind, amount, amount - Money(spent, currency), START, expires
            )
        )
    return grants


def _check_bill(rated: RatedPeriod) -> None:
    currency = rated.currency
    assert rated.total == total((line.signed for line in rated.lines), currency)
    assert rated.gross == rated.subtotal + rated.tax
    assert rated.total == rated.gross - rated.credits
    charges = [line for line in rated.lines if line.kind not in ("tax", "credit")]
    assert rated.subtotal == total((line.signed for line in charges), currency)
    for line in rated.lines:
        assert line.amount.amount >= 0, line
        assert line.amount.is_rounded(), line
        assert line.amount.amount == round_line(
            line.quantity * line.unit_price.amount / line.per, currency
        )
    for money in (rated.subtotal, rated.tax, rated.gross, rated.credits, rated.total):
        assert money.amount >= 0
        assert money.is_rounded()  # sums of rounded lines need no rounding of their own


@settings(deadline=None)
@given(prices(), _usage, terms(), grant_lists())
def test_every_bill_adds_up(
    p: PriceConfig, usage: D, t: ContractTerms, grants: list[CreditGrant]
) -> None:
    rated = rate(p, usage, t, credits=grants)
    _check_bill(rated)
    assert rated.credits <= rated.gross
    assert rated.credit_application is not None or not grants
    if rated.credit_application is not None:
        assert all(g.remaining.amount >= 0 for g in rated.credit_application.balances)
        spent = total((a.amount for a in rated.credit_application.applied), "USD")
        assert spent == rated.credits


@settings(deadline=None)
@given(st.sampled_from(["JPY", "KWD"]), st.data())
def test_bills_round_to_each_currencys_minor_unit(currency: str, data: st.DataObject) -> None:
    rated = rate(
        data.draw(prices(currency=currency)),
        data.draw(_usage),
        data.draw(terms(currency)),
        credits=data.draw(grant_lists(currency)),
    )
    _check_bill(rated)
    exponent = -minor_units(currency)
    assert all(line.amount.amount.as_tuple().exponent == exponent for line in rated.lines)


@settings(deadline=None)
@given(prices(mode="graduated"), _usage, _usage, terms())
def test_graduated_amounts_never_fall_as_usage_grows(
    p: PriceConfig, a: D, b: D, t: ContractTerms
) -> None:
    low, high = sorted((a, b))
    cheaper, dearer = rate(p, low, t), rate(p, high, t)
    assert cheaper.subtotal <= dearer.subtotal
    assert cheaper.gross <= dearer.gross


@settings(deadline=None)
@given(prices(), st.data())
def test_usage_exactly_at_a_bound_lands_in_that_tier(p: PriceConfig, data: st.DataObject) -> None:
    finite = [i for i, tier in enumerate(p.tiers[:-1]) if tier.up_to is not None]
    assume(finite)
    index = data.draw(st.sampled_from(finite))
    bound = p.tiers[index].up_to
    assert bound is not None
    rated = rate(p, p.included + bound)
    usage_lines = [line for line in rated.lines if line.kind == "usage"]
    # The last usage line is the bound's tier; no later tier (or its flat price) is reached.
    assert f"tier {index + 1} (" in usage_lines[-1].description
    assert not any(f"tier {index + 2} (" in line.description for line in rated.lines)
    if p.tier_mode == "volume":
        assert usage_lines == [usage_lines[-1]] and usage_lines[-1].quantity == bound


@settings(deadline=None)
@given(prices(), prices(), _usage, _usage, st.integers(0, 31 * 86400), terms())
def test_prorated_bills_add_up(
    old: PriceConfig, new: PriceConfig, before: D, after: D, seconds: int, t: ContractTerms
) -> None:
    change = START + timedelta(seconds=seconds)
    before = before if change > START else D(0)
    after = after if change < END else D(0)
    rated = prorate(old, new, change, START, END, before, after, contract=t, taxes=TAXES)
    _check_bill(rated)
    fees = [line for line in rated.lines if line.kind == "fee"]
    exact = sum((line.quantity for line in fees), D(0))
    assert exact <= 1
    if old.type != "METERED" and new.type != "METERED" and START < change < END:
        assert exact == 1  # the two parts of the fee cover the period exactly once

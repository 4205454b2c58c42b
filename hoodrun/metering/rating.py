"""Rating: what a period of usage costs under a plan's price, line by line.

Pure functions over ``Decimal`` (never float) and ``Money``; no I/O, no clock.

Usage
    Usage rows ``(chain, method_kind, quantity)`` (``method_kind``: plain, archive or trace) are
    weighed by the price's ``multipliers`` (``weigh``): a row counts ``quantity x chain factor x
    kind factor``, the factors multiplying (an archive call on ``chain:eth`` at 2 and
    ``archive`` at 3 weighs 6). A missing factor is 1; plain calls have no kind factor.

Lines of a period (``rate_period``), in this order
    1. the fee: FIXED and HYBRID prices charge ``fee`` once per period (a METERED price has no
       fee: one set on it is not charged);
    2. included units (METERED and HYBRID): the first ``included`` units are free, shown as a
       zero-priced line; the tiers price only the units above them (the overage);
    3. the tiers, on the overage. Graduated: each tier prices the units that fall in it, one line
       per tier reached. Volume: the tier the overage falls in prices every unit, one line. A tier
       covers ``(previous up_to, up_to]``, so usage exactly at ``up_to`` is in that tier; usage
       above the last tier's ``up_to`` is priced by the last tier. A tier is reached when at
       least some usage falls in it; its ``flat_price`` is then charged once, on a line of its
       own. Unit prices are per ``price.per`` units;
    4. the contract's percentage discount on the charges above (volume discounts are the tiers);
    5. the minimum commitment (the contract's ``minimum_override``, else ``price.minimum``): when
       the charges after the discount are below it, a top-up line brings them to it. It comes
       after the discount because a commitment is what the customer spends, discounts included;
    6. tax by the customer's country (``Config.taxes``): ``rate x`` the subtotal of the lines
       above. A rule with ``reverse_charge_b2b`` charges nothing to a business customer with a tax
       id: a zero line says "reverse charge" and ``RatedPeriod.reverse_charge`` is set. A country
       without a rule (or no country) has no tax line;
    7. credits (``hoodrun.metering.credits``), spent on the total with tax, one line per grant.

Amounts and rounding
    Every line's amount is ``round_line(quantity x unit price / per)``: half-even to the
    currency's minor unit, on that line only. Subtotal, tax base and total are exact sums of
    rounded lines and are never rounded again. No line amount is negative: a discount or credit
    line holds a positive amount and is a deduction (``Line.signed`` is negative); the total is
    the sum of the signed amounts, and it is never negative.

A plan change within a period (``prorate``)
    The period splits at ``change_at`` into two parts, each rated under the plan in force then,
    on the usage that happened then. A part covering a fraction ``f`` of the period's seconds
    (exact ``Decimal``) is rated like a period of its own under its plan shrunk to ``f``: the
    fee, the included units, every tier's ``up_to`` and ``flat_price`` and the minimum are
    multiplied by ``f``; unit prices are not. So a plan's allowances and volume breaks are
    neither granted twice nor lost by a change, and tier counting starts again in each part.
    Each part gets its own discount and minimum; tax and credits apply once, to the sum of the
    parts, under the terms in force at the end of the period. ``preview_change`` shows the
    portal what staying and changing would cost.

Currencies: the contract is rated in its plan's currency; the two must match, as must two plans
of one period (``CurrencyMismatch`` otherwise). Converting is the invoice's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Literal, NamedTuple

from hoodrun.metering.config import PriceConfig, TaxRule
from hoodrun.metering.credits import CreditApplication, CreditGrant, apply_credits
from hoodrun.metering.money import CurrencyMismatch, Money, MoneyError, round_line, total

__all__ = [
    "METHOD_KINDS",
    "ChangePreview",
    "ContractTerms",
    "Line",
    "RatedPeriod",
    "UsageRow",
    "multiplier",
    "period_fraction",
    "preview_change",
    "prorate",
    "rate_period",
    "weigh",
]

MethodKind = Literal["plain", "archive", "trace"]
METHOD_KINDS: tuple[MethodKind, ...] = ("plain", "archive", "trace")
LineKind = Literal["fee", "included", "usage", "flat", "discount", "minimum", "tax", "credit"]
_DEDUCTIONS = ("discount", "credit")
_PRECISION = 60
_FRACTION_DIGITS = 28
_SHOWN_DECIMALS = Decimal("0.000001")
_ONE = Decimal(1)
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


class UsageRow(NamedTuple):
    """Usage of one chain and kind of method in a period (a plain tuple works too)."""

    chain: str
    method_kind: str
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class ContractTerms:
    """What a customer's contract adds to its plan's price when rating."""

    currency: str
    plan: str = ""
    country: str | None = None
    tax_id: str | None = None
    business: bool = False
    discount_percent: Decimal = _ZERO
    minimum_override: Decimal | None = None

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Z]{3}$", self.currency):
            raise MoneyError(f"currency {self.currency!r}: an ISO 4217 code like USD")
        if self.country is not None and not re.match(r"^[A-Z]{2}$", self.country):
            raise ValueError(f"country {self.country!r}: an ISO 3166 alpha-2 code like TR")
        _decimal("discount_percent", self.discount_percent)
        if not _ZERO <= self.discount_percent <= _HUNDRED:
            raise ValueError("discount_percent must be between 0 and 100")
        if self.minimum_override is not None:
            _decimal("minimum_override", self.minimum_override)
            if self.minimum_override < 0:
                raise ValueError("minimum_override must not be negative")

    @property
    def reverse_charge_eligible(self) -> bool:
        """A business with a tax id: what a reverse-charge tax rule exempts."""
        return self.business and bool(self.tax_id)


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a rated period: ``amount = round_line(quantity x unit_price / per)``."""

    kind: LineKind
    description: str
    quantity: Decimal
    unit_price: Money
    amount: Money
    per: Decimal = _ONE

    @property
    def deduction(self) -> bool:
        """Discounts and credits reduce the total; their ``amount`` is still positive."""
        return self.kind in _DEDUCTIONS

    @property
    def signed(self) -> Money:
        """The amount as it counts towards the total (negative for deductions)."""
        return -self.amount if self.deduction else self.amount


@dataclass(frozen=True, slots=True)
class RatedPeriod:
    """A period rated: its lines and the sums of them."""

    currency: str
    period_start: datetime
    period_end: datetime
    usage: Decimal
    """The weighted usage rated (both parts' together after a plan change)."""
    lines: tuple[Line, ...]
    subtotal: Money
    """Charges less the discount plus the minimum top-up: the tax base."""
    tax: Money
    reverse_charge: bool
    gross: Money
    """Subtotal plus tax: what is due before credits."""
    credits: Money
    total: Money
    """What is due: ``gross - credits``, the sum of every line's signed amount."""
    credit_application: CreditApplication | None = None
    """How the credits were spent (and each grant's balance after), when credits were given."""


@dataclass(frozen=True, slots=True)
class ChangePreview:
    """What the portal shows before a plan change: the period with and without it."""

    stay: RatedPeriod
    change: RatedPeriod
    difference: Money
    """``change.gross - stay.gross``: positive when changing costs more this period."""
    usage_after: Decimal
    """The usage assumed after the change (weighted by the new plan)."""


# --- usage ---------------------------------------------------------------------------------------


def multiplier(price: PriceConfig, chain: str, method_kind: str) -> Decimal:
    """The factor of one unit of ``method_kind`` usage on ``chain``: chain x kind factors."""
    if method_kind not in METHOD_KINDS:
        raise ValueError(f"method kind {method_kind!r}: use plain, archive or trace")
    factor = price.multipliers.get(f"chain:{chain}", _ONE)
    if method_kind != "plain":
        factor *= price.multipliers.get(method_kind, _ONE)
    return factor


def weigh(rows: Iterable[tuple[str, str, Decimal]], price: PriceConfig) -> Decimal:
    """The usage quantity ``rows`` (``(chain, method_kind, quantity)``) weigh under ``price``."""
    weighed = _ZERO
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        for chain, kind, quantity in rows:
            _decimal("usage quantity", quantity)
            if quantity < 0:
                raise ValueError(f"usage of {chain}/{kind} is negative ({quantity})")
            weighed += quantity * multiplier(price, chain, kind)
    return weighed


def _scaled(rows: Iterable[tuple[str, str, Decimal]], factor: Decimal) -> list[UsageRow]:
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return [UsageRow(chain, kind, quantity * factor) for chain, kind, quantity in rows]


# --- one period ----------------------------------------------------------------------------------


def rate_period(
    price: PriceConfig,
    usage_quantity: Decimal,
    *,
    period_start: datetime,
    period_end: datetime,
    contract: ContractTerms,
    taxes: Mapping[str, TaxRule] | None = None,
    credits: Sequence[CreditGrant] = (),
    credits_at: datetime | None = None,
) -> RatedPeriod:
    """Rate ``usage_quantity`` (already weighed, see ``weigh``) under ``price`` for one period.

    ``taxes`` is ``Config.taxes``; ``credits`` the org's grants in the contract's currency,
    judged (expiry) at ``credits_at``, by default ``period_end``.
    """
    _check_period(period_start, period_end)
    _check_currencies(contract, price)
    _decimal("usage", usage_quantity)
    if usage_quantity < 0:
        raise ValueError(f"usage must not be negative ({usage_quantity})")
    lines = _part(price, usage_quantity, _ONE, contract, label="")
    return _finish(
        lines,
        contract=contract,
        usage=usage_quantity,
        period=(period_start, period_end),
        taxes=taxes,
        credits=credits,
        credits_at=credits_at if credits_at is not None else period_end,
    )


def _part(
    price: PriceConfig, usage: Decimal, fraction: Decimal, terms: ContractTerms, *, label: str
) -> list[Line]:
    """The charges, discount and minimum of (a fraction of) a period under one price."""
    currency = price.currency
    prefix = f"{label}: " if label else ""
    charges: list[Line] = []
    if price.type in ("FIXED", "HYBRID"):
        name = f" ({terms.plan})" if terms.plan else ""
        fee = Money(price.fee, currency)
        charges.append(_line("fee", f"{prefix}plan fee{name}", fraction, fee))
    billable = usage
    if price.type != "FIXED":
        included = _mul(price.included, fraction)
        billable = max(usage - included, _ZERO)
        if included > 0:
            charges.append(
                _line(
                    "included",
                    f"{prefix}{price.meter}: {_fmt(included)} included",
                    min(usage, included),
                    Money.zero(currency),
                    per=price.per,
                )
            )
        charges.extend(_tiers(price, billable, fraction, prefix))
    lines = list(charges)
    charged = total((line.amount for line in charges), currency)
    net = charged
    if terms.discount_percent > 0 and charged.amount > 0:
        rate = terms.discount_percent / _HUNDRED
        discount = _line(
            "discount", f"{prefix}discount {_fmt(terms.discount_percent)}%", rate, charged
        )
        lines.append(discount)
        net = net - discount.amount
    minimum = terms.minimum_override if terms.minimum_override is not None else price.minimum
    committed = Money(round_line(_mul(minimum, fraction), currency), currency)
    if net < committed:
        top_up = committed - net
        lines.append(
            _line("minimum", f"{prefix}minimum commitment of {committed}: top-up", _ONE, top_up)
        )
    return lines


def _tiers(price: PriceConfig, billable: Decimal, fraction: Decimal, prefix: str) -> list[Line]:
    if billable <= 0:
        return []
    currency = price.currency
    bounds = [None if t.up_to is None else _mul(t.up_to, fraction) for t in price.tiers]
    bounds[-1] = None  # the last tier takes whatever is above the one before it
    lines: list[Line] = []
    lower = _ZERO
    for number, (tier, upper) in enumerate(zip(price.tiers, bounds, strict=True), start=1):
        if price.tier_mode == "graduated":
            units = (billable if upper is None else min(billable, upper)) - lower
        elif upper is None or billable <= upper:
            units = billable  # volume: the tier the total falls in prices every unit
        else:
            units = _ZERO
        if units > 0:
            span = f"{_fmt(lower)} to {'∞' if upper is None else _fmt(upper)}"
            what = f"{prefix}{price.meter} tier {number} ({span})"
            unit_price = Money(tier.unit_price, currency)
            lines.append(_line("usage", what, units, unit_price, per=price.per))
            if tier.flat_price > 0:
                flat = Money(_mul(tier.flat_price, fraction), currency)
                lines.append(_line("flat", f"{what}: flat price", _ONE, flat))
        if upper is None or billable <= upper:
            break
        lower = upper
    return lines


def _finish(
    lines: list[Line],
    *,
    contract: ContractTerms,
    usage: Decimal,
    period: tuple[datetime, datetime],
    taxes: Mapping[str, TaxRule] | None,
    credits: Sequence[CreditGrant],
    credits_at: datetime,
) -> RatedPeriod:
    """Tax and credits on the parts' lines, and the sums."""
    currency = contract.currency
    subtotal = total((line.signed for line in lines), currency)
    tax = Money.zero(currency)
    reverse = False
    rule = (taxes or {}).get(contract.country) if contract.country else None
    if rule is not None:
        if rule.reverse_charge_b2b and contract.reverse_charge_eligible:
            reverse = True
            description = f"{rule.name}: reverse charge (customer tax id {contract.tax_id})"
            lines.append(_line("tax", description, _ZERO, subtotal))
        else:
            line = _line("tax", f"{rule.name} {_fmt(rule.rate * _HUNDRED)}%", rule.rate, subtotal)
            lines.append(line)
            tax = line.amount
    gross = subtotal + tax
    application: CreditApplication | None = None
    spent = Money.zero(currency)
    if credits:
        for grant in credits:
            if not grant.remaining.is_rounded():
                raise MoneyError(f"grant {grant.id}: {grant.remaining} is finer than a minor unit")
        application = apply_credits(credits, gross, credits_at)
        for applied in application.applied:
            description = f"{applied.kind} credit {applied.grant_id}"
            lines.append(_line("credit", description, _ONE, applied.amount))
        spent = gross - application.remaining
    return RatedPeriod(
        currency=currency,
        period_start=period[0],
        period_end=period[1],
        usage=usage,
        lines=tuple(lines),
        subtotal=subtotal,
        tax=tax,
        reverse_charge=reverse,
        gross=gross,
        credits=spent,
        total=gross - spent,
        credit_application=application,
    )


# --- plan changes --------------------------------------------------------------------------------


def period_fraction(start: datetime, end: datetime, period: tuple[datetime, datetime]) -> Decimal:
    """The share of ``period``'s seconds (microseconds counted) between ``start`` and ``end``.

    A ``Decimal`` of 28 significant digits; ``1 - fraction`` is then exact, so the two parts of
    a period always add up to exactly one.
    """
    with localcontext() as ctx:
        ctx.prec = _FRACTION_DIGITS
        return _seconds(end - start) / _seconds(period[1] - period[0])


def prorate(
    old_price: PriceConfig,
    new_price: PriceConfig,
    change_at: datetime,
    period_start: datetime,
    period_end: datetime,
    usage_before: Decimal,
    usage_after: Decimal,
    *,
    contract: ContractTerms,
    new_contract: ContractTerms | None = None,
    taxes: Mapping[str, TaxRule] | None = None,
    credits: Sequence[CreditGrant] = (),
    credits_at: datetime | None = None,
) -> RatedPeriod:
    """Rate a period whose plan changed at ``change_at`` (see the module's docstring).

    ``usage_before`` happened under ``old_price`` (weighed by its multipliers), ``usage_after``
    under ``new_price``. ``contract`` is in force before the change, ``new_contract`` (default:
    the same terms) after it; tax and credits follow ``new_contract``.
    """
    _check_period(period_start, period_end)
    if change_at.utcoffset() is None:
        raise ValueError("change_at must be timezone-aware")
    if not period_start <= change_at <= period_end:
        raise ValueError("change_at must fall within the period")
    after_terms = new_contract if new_contract is not None else contract
    _check_currencies(contract, old_price)
    _check_currencies(after_terms, new_price)
    for name, usage in (("usage_before", usage_before), ("usage_after", usage_after)):
        _decimal(name, usage)
        if usage < 0:
            raise ValueError(f"{name} must not be negative ({usage})")
    before = period_fraction(period_start, change_at, (period_start, period_end))
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        after = _ONE - before
    if before == 0 and usage_before > 0:
        raise ValueError("usage before a change at the start of the period")
    if after == 0 and usage_after > 0:
        raise ValueError("usage after a change at the end of the period")
    lines: list[Line] = []
    if before > 0:
        label = f"{contract.plan or 'old plan'} until {change_at.isoformat()}"
        lines += _part(old_price, usage_before, before, contract, label=label)
    if after > 0:
        label = f"{after_terms.plan or 'new plan'} from {change_at.isoformat()}"
        lines += _part(new_price, usage_after, after, after_terms, label=label)
    return _finish(
        lines,
        contract=after_terms,
        usage=usage_before + usage_after,
        period=(period_start, period_end),
        taxes=taxes,
        credits=credits,
        credits_at=credits_at if credits_at is not None else period_end,
    )


def preview_change(
    old_price: PriceConfig,
    new_price: PriceConfig,
    *,
    change_at: datetime,
    period_start: datetime,
    period_end: datetime,
    usage_so_far: Sequence[tuple[str, str, Decimal]],
    contract: ContractTerms,
    new_contract: ContractTerms | None = None,
    taxes: Mapping[str, TaxRule] | None = None,
    expected_usage_after: Sequence[tuple[str, str, Decimal]] | None = None,
) -> ChangePreview:
    """What the period costs if the plan stays and if it changes at ``change_at``.

    ``usage_so_far`` is the period's usage rows up to ``change_at``. The usage to come is
    ``expected_usage_after`` or, by default, the same rows at the same pace for the rest of the
    period. Staying rates all of it under ``old_price``; changing prorates it, the usage to come
    weighed by ``new_price``'s multipliers. Credits are left out: the preview compares charges.
    """
    _check_period(period_start, period_end)
    if not period_start <= change_at <= period_end:
        raise ValueError("change_at must fall within the period")
    if expected_usage_after is None:
        elapsed = _seconds(change_at - period_start)
        with localcontext() as ctx:
            ctx.prec = _PRECISION
            pace = _seconds(period_end - change_at) / elapsed if elapsed > 0 else _ZERO
        expected_usage_after = _scaled(usage_so_far, pace)
    weighed_before = weigh(usage_so_far, old_price)
    stay = rate_period(
        old_price,
        weighed_before + weigh(expected_usage_after, old_price),
        period_start=period_start,
        period_end=period_end,
        contract=contract,
        taxes=taxes,
    )
    usage_after = weigh(expected_usage_after, new_price)
    change = prorate(
        old_price,
        new_price,
        change_at,
        period_start,
        period_end,
        weighed_before,
        usage_after,
        contract=contract,
        new_contract=new_contract,
        taxes=taxes,
    )
    return ChangePreview(stay, change, change.gross - stay.gross, usage_after)


# --- helpers -------------------------------------------------------------------------------------


def _line(
    kind: LineKind,
    description: str,
    quantity: Decimal,
    unit_price: Money,
    *,
    per: Decimal = _ONE,
) -> Line:
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        exact = quantity * unit_price.amount / per
    amount = Money(round_line(exact, unit_price.currency), unit_price.currency)
    return Line(kind, description, quantity, unit_price, amount, per)


def _mul(value: Decimal, fraction: Decimal) -> Decimal:
    if fraction == _ONE:
        return value
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return value * fraction


def _seconds(delta: timedelta) -> Decimal:
    whole = Decimal(delta.days * 86_400 + delta.seconds)
    return whole + Decimal(delta.microseconds).scaleb(-6)


def _fmt(value: Decimal) -> str:
    """A quantity for a description: at most 6 decimals, no exponent, thousands separated."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        normal = value.quantize(_SHOWN_DECIMALS).normalize()
    if normal == normal.to_integral_value():
        return f"{int(normal):,}"
    return f"{normal:,f}"


def _decimal(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise TypeError(f"{name} must be a Decimal (never float), not {type(value).__name__}")


def _check_period(start: datetime, end: datetime) -> None:
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("period times must be timezone-aware")
    if end <= start:
        raise ValueError("a period ends after it starts")


def _check_currencies(contract: ContractTerms, price: PriceConfig) -> None:
    if contract.currency != price.currency:
        raise CurrencyMismatch(
            f"the contract is in {contract.currency} and its plan's price in {price.currency}"
        )

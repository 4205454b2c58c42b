"""Building an invoice from a closing snapshot: its lines and totals, converted if need be.

The snapshot (``closing_snapshots``) an invoice is made from
    ``currency``, ``subtotal``, ``tax``, ``total`` and ``lines``: a JSON list of objects
    ``{kind, description, quantity, unit_price, amount, per}`` with decimals as strings (JSON
    integers are accepted, fractional JSON numbers refused: they went through a float).
    ``unit_price`` may also be ``{amount, currency}``; ``quantity`` defaults to 1, ``per`` to 1,
    ``unit_price`` to the amount. Kinds follow rating (``hoodrun.metering.rating``):
    ``discount`` and ``credit`` lines are deductions (their amount is read as positive whatever
    its sign), ``tax`` lines carry the rate as their quantity (a ``reverse charge`` line has
    amount 0), and every other kind is a charge. A line may carry its own ``tax_rate``; without
    one, every charge is taxed at the rate of the snapshot's one tax line. The charges must add
    up to ``subtotal`` and the tax lines to ``tax``: a snapshot that contradicts itself is
    ``SnapshotInvalid``, not invoiced. Credit lines in a snapshot are taken as already spent at
    close and carried over; only what they leave unpaid is offered to the credits.

Amounts
    Each line is rounded to the invoice currency's minor unit on its own (``round_line``). For a
    converted invoice, or one for a provider that computes VAT per line (Paraşüt), the tax is
    computed per taxed line and rounded per line, the way that provider computes it; otherwise
    the snapshot's tax (rated on the subtotal, rounded once) stands, so the invoice totals
    exactly what its snapshot does. The totals are sums of rounded lines. For an invoice in
    another currency than its snapshot's (TL for Turkey) each line's amount is converted at the
    given rate and rounded; unit prices are converted exactly. ``original_total`` (the
    snapshot's total), ``fx_rate``, ``fx_source`` and ``fx_date`` record the conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import RowMapping

from hoodrun.billing.invoices._values import (
    _DEDUCTIONS,
    _ONE,
    _ZERO,
    CurrencyError,
    FxQuoteLike,
    InvoiceLine,
    SnapshotInvalid,
    _line_json,
    _mul,
    _sum,
)
from hoodrun.metering.money import Money, round_line

_RATE_SCALE = Decimal("0.000001")  # what the fx_rate column holds


@dataclass(frozen=True, slots=True)
class _SnapshotLine:
    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal  # positive for deductions too
    per: Decimal
    tax_rate: Decimal | None
    reverse_charge: bool

    @property
    def signed(self) -> Decimal:
        return -self.amount if self.kind in _DEDUCTIONS else self.amount


@dataclass(frozen=True, slots=True)
class _Built:
    lines_json: list[dict[str, Any]]
    subtotal: Money
    tax: Money
    credits: Money
    total: Money
    original_total: Money | None


def _build(
    snapshot: RowMapping, currency: str, fx: FxQuoteLike | None, *, per_line_tax: bool
) -> _Built:
    """The invoice's lines and totals in ``currency`` (see the module's docstring)."""
    name = f"snapshot {snapshot['id']}"
    source = snapshot["currency"]
    items = _parse_lines(snapshot)
    charges = [item for item in items if item.kind not in ("tax", "credit")]
    taxes = [item for item in items if item.kind == "tax"]
    spent = [item for item in items if item.kind == "credit"]
    for what, found, column in (
        ("charges", sum((i.signed for i in charges), _ZERO), "subtotal"),
        ("tax lines", sum((i.amount for i in taxes), _ZERO), "tax"),
        ("credit lines", sum((i.amount for i in spent), _ZERO), "credits"),
        (
            "subtotal, tax and credits",
            snapshot["subtotal"] + snapshot["tax"] - snapshot["credits"],
            "total",
        ),
    ):
        if found != snapshot[column]:
            raise SnapshotInvalid(
                f"{name}: its {what} add up to {found} {source}, its {column} is "
                f"{snapshot[column]} {source}"
            )
    rate = _fx_rate(name, source, currency, fx)

    def amount(value: Decimal) -> Money:
        exact = value if rate is None else _mul(value, rate)
        return Money(round_line(exact, currency), currency)

    def price(value: Decimal) -> Money:
        return Money(value if rate is None else _mul(value, rate), currency)

    default_rate = _default_tax_rate(name, taxes, charges)
    lines: list[InvoiceLine] = []
    for item in charges:
        tax_rate = item.tax_rate if item.tax_rate is not None else default_rate
        lines.append(
            InvoiceLine(
                item.kind,
                item.description,
                item.quantity,
                price(item.unit_price),
                amount(item.amount),
                tax_rate,
                item.per,
            )
        )
    subtotal = _sum((line.signed for line in lines), currency)
    tax_lines, reverse_lines = _tax_lines(lines, taxes, subtotal)
    if rate is None and not per_line_tax and len(tax_lines) == 1:
        # Same currency, a provider that takes the tax as given: the snapshot's tax (rated on
        # the subtotal, rounded once) stands, so the invoice totals what the snapshot does.
        only = tax_lines[0]
        tax_lines = [dataclasses.replace(only, amount=Money(snapshot["tax"], currency))]
    tax = _sum((line.amount for line in tax_lines), currency)
    # Credits spent at close are carried over, at most what is due.
    left = subtotal + tax
    credit_lines: list[InvoiceLine] = []
    for item in spent:
        paid = min(amount(item.amount), left)
        left -= paid
        if paid.amount > 0:
            credit_lines.append(InvoiceLine("credit", item.description, _ONE, paid, paid))
    credits = _sum((line.amount for line in credit_lines), currency)
    total = subtotal + tax - credits
    if total.amount < 0:
        raise SnapshotInvalid(f"{name}: its total would be negative ({total})")
    lines_json = [
        *(_line_json(line) for line in (*lines, *tax_lines)),
        *({**_line_json(line), "reverse_charge": True} for line in reverse_lines),
        *(_line_json(line) for line in credit_lines),
    ]
    original = Money(snapshot["total"], source) if rate is not None else None
    return _Built(lines_json, subtotal, tax, credits, total, original)


def _parse_lines(snapshot: RowMapping) -> list[_SnapshotLine]:
    name = f"snapshot {snapshot['id']}"
    raw = snapshot["lines"]
    if not isinstance(raw, list):
        raise SnapshotInvalid(f"{name}: lines must be a JSON list, not {type(raw).__name__}")
    currency = snapshot["currency"]
    parsed: list[_SnapshotLine] = []
    for number, item in enumerate(raw, start=1):
        where = f"{name}, line {number}"
        if not isinstance(item, dict):
            raise SnapshotInvalid(f"{where}: a JSON object is expected")
        kind = item.get("kind")
        if not isinstance(kind, str) or not kind:
            raise SnapshotInvalid(f"{where}: no kind")
        amount = _decimal(item.get("amount"), f"{where}: amount")
        if kind in _DEDUCTIONS:
            amount = abs(amount)
        elif amount < 0:
            raise SnapshotInvalid(f"{where}: a {kind} line cannot be negative ({amount})")
        if round_line(amount, currency) != amount:
            raise SnapshotInvalid(f"{where}: {amount} is finer than a minor unit of {currency}")
        unit = item.get("unit_price", str(amount))
        if isinstance(unit, dict):
            if unit.get("currency", currency) != currency:
                raise SnapshotInvalid(f"{where}: unit price in {unit.get('currency')}")
            unit = unit.get("amount")
        unit_price = _decimal(unit, f"{where}: unit_price")
        per = _decimal(item.get("per", 1), f"{where}: per")
        if per <= 0:
            raise SnapshotInvalid(f"{where}: per must be positive")
        rate = item.get("tax_rate")
        tax_rate = None if rate is None else _decimal(rate, f"{where}: tax_rate")
        if tax_rate is not None and not _ZERO <= tax_rate < _ONE:
            raise SnapshotInvalid(f"{where}: tax_rate {tax_rate} is not a fraction like 0.20")
        description = str(item.get("description") or kind)
        reverse = bool(item.get("reverse_charge")) or (
            kind == "tax" and amount == 0 and "reverse charge" in description.lower()
        )
        parsed.append(
            _SnapshotLine(
                kind=kind,
                description=description,
                quantity=_decimal(item.get("quantity", 1), f"{where}: quantity"),
                unit_price=abs(unit_price) if kind in _DEDUCTIONS else unit_price,
                amount=amount,
                per=per,
                tax_rate=tax_rate,
                reverse_charge=reverse,
            )
        )
    return parsed


def _default_tax_rate(
    name: str, taxes: Sequence[_SnapshotLine], charges: Sequence[_SnapshotLine]
) -> Decimal:
    """The rate of the snapshot's tax line, for charges that do not state their own."""
    rates = {t.quantity for t in taxes if not t.reverse_charge}
    if any(c.tax_rate is None for c in charges) and len(rates) > 1:
        raise SnapshotInvalid(f"{name}: several tax rates and charges that do not say which")
    rate = next(iter(rates), _ZERO)
    if not _ZERO <= rate < _ONE:
        raise SnapshotInvalid(f"{name}: tax rate {rate} is not a fraction like 0.20")
    return rate


def _tax_lines(
    lines: Sequence[InvoiceLine], taxes: Sequence[_SnapshotLine], subtotal: Money
) -> tuple[list[InvoiceLine], list[InvoiceLine]]:
    """One tax line per rate (the sum of each taxed line's own rounded tax), and the snapshot's
    reverse-charge lines (no tax, the note kept)."""
    currency = subtotal.currency
    zero = Money.zero(currency)
    by_rate: dict[Decimal, tuple[Money, Money]] = {}
    for line in lines:
        base, tax = by_rate.get(line.tax_rate, (zero, zero))
        line_tax = Money(round_line(_mul(line.signed.amount, line.tax_rate), currency), currency)
        by_rate[line.tax_rate] = (base + line.signed, tax + line_tax)
    named = {t.quantity: t.description for t in taxes if not t.reverse_charge}
    taxed = [
        InvoiceLine("tax", named.get(rate, f"tax {_percent(rate)}%"), rate, base, tax, rate)
        for rate, (base, tax) in by_rate.items()
        if rate != 0 or rate in named
    ]
    reverse = [
        InvoiceLine("tax", t.description, _ZERO, subtotal, zero) for t in taxes if t.reverse_charge
    ]
    return taxed, reverse


def _fx_rate(name: str, source: str, currency: str, fx: FxQuoteLike | None) -> Decimal | None:
    if currency == source:
        return None
    if fx is None:
        raise CurrencyError(f"{name} is in {source}: invoicing it in {currency} needs a rate")
    if (fx.base, fx.quote) != (source, currency):
        raise CurrencyError(
            f"the rate converts {fx.base} to {fx.quote}; {name} needs {source} to {currency}"
        )
    rate = fx.rate
    if not isinstance(rate, Decimal) or not rate.is_finite() or rate <= 0:
        raise CurrencyError(f"rate {rate!r}: a positive Decimal is expected")
    if rate.quantize(_RATE_SCALE) != rate:
        raise CurrencyError(f"rate {rate} has more than the 6 decimals an invoice stores")
    if not fx.source or len(fx.source) > 8:
        raise CurrencyError(f"rate source {fx.source!r}: a short name like tcmb is expected")
    return rate


def _decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise SnapshotInvalid(f"{what}: {value!r} went through a float; store decimals as text")
    if isinstance(value, int | Decimal):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value)
        except InvalidOperation:
            raise SnapshotInvalid(f"{what}: {value!r} is not a number") from None
    else:
        raise SnapshotInvalid(f"{what}: a decimal string is expected, not {type(value).__name__}")
    if not result.is_finite():
        raise SnapshotInvalid(f"{what}: {value!r} is not a finite number")
    return result


def _percent(rate: Decimal) -> str:
    return f"{_mul(rate, Decimal(100)).normalize():f}"

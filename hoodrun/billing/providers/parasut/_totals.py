"""The totals Paraşüt computes, so that HoodRun can send an invoice whose total is its own.

Credits. A Paraşüt invoice discount lowers the VAT base (as Turkish VAT law wants of a discount),
whereas HoodRun subtracts credits after tax. The discount sent is the amount, found to the cent,
for which Paraşüt's own total equals ``draft.total``: with credits applied after tax that is about
``credits / (1 + VAT rate)`` and Paraşüt's VAT is lower than ``draft.tax``; with credits applied
before tax it is the credits themselves and both agree. The search assumes Paraşüt spreads the
discount over the details in proportion (the last detail takes the rounding) and rounds VAT per
detail, half up; step 3 of ``send_invoice`` (see the package's docstring) catches any difference
from what Paraşüt really does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from hoodrun.billing.providers import (
    InvoiceLineDraft,
    ProviderUnavailable,
    RemoteInvoice,
    RemoteStatus,
)
from hoodrun.billing.providers.parasut._session import Doc, _attrs, _related

_CENT = Decimal("0.01")


# --- numbers and money ------------------------------------------------------------------------


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


def _money(value: object) -> Decimal:
    """A decimal from Paraşüt's JSON: numbers arrive as Decimal or int, sometimes as strings."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return Decimal(value)
        except InvalidOperation:
            pass
    raise ProviderUnavailable(f"Paraşüt sent {value!r} where an amount was expected")


def _from_wire_currency(currency: object) -> str:
    return "TRY" if currency in (None, "TRL") else str(currency)


def _percent(rate: Decimal) -> Decimal:
    return (rate * 100).normalize()


# --- the totals Paraşüt computes --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Detail:
    quantity: Decimal
    unit_price: Decimal
    vat_rate: Decimal  # percent
    description: str

    @property
    def net(self) -> Decimal:
        return _cents(self.quantity * self.unit_price)


def _parasut_total(details: Sequence[_Detail], discount: Decimal) -> Decimal:
    """Paraşüt's net_total: an amount discount spread over the details in proportion to their
    net (the last one takes the rounding), then VAT per detail on what remains, half up."""
    nets = [d.net for d in details]
    base = sum(nets, Decimal(0))
    shares = [_cents(discount * n / base) if base else Decimal(0) for n in nets[:-1]]
    shares.append(discount - sum(shares, Decimal(0)))
    vat = sum(
        (_cents((n - s) * d.vat_rate / 100) for n, s, d in zip(nets, shares, details, strict=True)),
        Decimal(0),
    )
    return base - discount + vat


def _discount_for(details: Sequence[_Detail], credits: Decimal, total: Decimal) -> Decimal:
    """The invoice discount, to the cent, that makes Paraşüt's total come out at ``total``."""
    if credits <= 0:
        return Decimal(0)
    base = sum((d.net for d in details), Decimal(0))
    undiscounted = _parasut_total(details, Decimal(0))
    rate = (undiscounted - base) / base if base else Decimal(0)
    guess = _cents((undiscounted - total) / (1 + rate))
    candidates = [guess + k * _CENT for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5)]
    for discount in candidates:
        if 0 <= discount <= base and _parasut_total(details, discount) == total:
            return discount
    # No cent gives it exactly: send the nearest, and the total check refuses to issue.
    return min(max(guess, Decimal(0)), base)


def _net_of(gross: Decimal, vat_rate: Decimal) -> Decimal | None:
    """The net amount whose VAT at ``vat_rate`` percent brings it to ``gross`` exactly."""
    guess = _cents(gross * 100 / (100 + vat_rate))
    for k in (0, 1, -1, 2, -2):
        net = guess + k * _CENT
        if net + _cents(net * vat_rate / 100) == gross:
            return net
    return None


def _remote(resource: Doc) -> RemoteInvoice:
    attrs = _attrs(resource)
    total = _money(attrs.get("net_total") or 0)
    remaining = total if attrs.get("remaining") is None else _money(attrs["remaining"])
    document = _related(resource, "active_e_document")
    status: RemoteStatus
    if attrs.get("item_type") == "cancelled":
        status = "void"
    elif remaining <= 0:
        status = "paid"
    elif attrs.get("archived"):
        status = "void"
    else:
        status = "open" if document else "draft"
    return RemoteInvoice(
        provider_id=str(resource["id"]),
        status=status,
        currency=_from_wire_currency(attrs.get("currency")),
        total=total,
        amount_paid=max(total - remaining, Decimal(0)),
        document_id=document[1] if document else None,
    )


def _as_detail(line: InvoiceLineDraft) -> _Detail:
    """Quantity × unit price when they give the amount exactly (with a unit price of at most 4
    decimals, which Paraşüt keeps), else 1 × the amount: the amount is what HoodRun billed."""
    quantity, unit_price = line.quantity, line.unit_price
    exact = (
        quantity > 0
        and unit_price >= 0
        and unit_price == unit_price.quantize(Decimal("0.0001"))
        and quantity * unit_price == line.amount
    )
    if not exact:
        quantity, unit_price = Decimal(1), line.amount
    return _Detail(quantity, unit_price, _percent(line.tax_rate), line.description)

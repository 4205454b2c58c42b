"""Invoice values: ``Invoice`` and its lines, ``BillingAccount``, what the callers pass
(exchange rates, credits, the ledger), the errors, and the stored form of an invoice.

A line's ``amount`` is rounded to the currency's minor unit; deductions (``discount``,
``credit``) are held positive and count negatively (``InvoiceLine.signed``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, localcontext
from typing import Any, Literal, Protocol, get_args

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.metering.money import Money, round_line

InvoiceStatus = Literal["draft", "pending", "open", "paid", "void", "uncollectible"]
Provider = Literal["stripe", "parasut", "none"]
STATUSES: tuple[str, ...] = get_args(InvoiceStatus)
PROVIDERS: tuple[str, ...] = get_args(Provider)

_DEDUCTIONS = frozenset({"discount", "credit"})
_PRECISION = 60
_ONE = Decimal(1)
_ZERO = Decimal(0)


# --- errors --------------------------------------------------------------------------------------


class InvoiceError(Exception):
    """The invoice cannot be made or changed.

    Subclasses: ``InvoiceNotFound``, ``SnapshotNotFound`` (also ``LookupError``);
    ``SnapshotInvalid``, ``CurrencyError``, ``InvalidTransition``, ``AdjustmentRefused``
    (also ``ValueError``); ``NumberingConflict``.
    """

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class InvoiceNotFound(InvoiceError, LookupError):
    """No such invoice."""


class SnapshotNotFound(InvoiceError, LookupError):
    """No such closing snapshot."""


class SnapshotInvalid(InvoiceError, ValueError):
    """The closing snapshot cannot be invoiced as it is."""


class CurrencyError(InvoiceError, ValueError):
    """The amount or exchange rate does not fit the invoice's currency."""


class InvalidTransition(InvoiceError, ValueError):
    """The invoice's state does not allow that change."""


class AdjustmentRefused(InvoiceError, ValueError):
    """The credit note or refund does not fit the invoice."""


class NumberingConflict(InvoiceError):
    """No invoice number could be taken: too many invoices were being made at once."""


# --- what the callers pass -----------------------------------------------------------------------


class FxQuoteLike(Protocol):
    """An exchange rate: 1 ``base`` = ``rate`` ``quote``, from ``source``'s bulletin of ``day``."""

    @property
    def base(self) -> str: ...
    @property
    def quote(self) -> str: ...
    @property
    def rate(self) -> Decimal: ...
    @property
    def source(self) -> str: ...
    @property
    def day(self) -> date: ...


CreditsLike = Callable[[str, Money, str], Awaitable[Money]]
"""``(org_id, amount, reference) -> what credit paid``: spends the org's credit on ``amount``
and writes ``reference`` on its ``credit_ledger`` rows."""


class LedgerLike(Protocol):
    """The money ledger: ``append`` writes one entry on the caller's connection (transaction)."""

    async def append(
        self,
        kind: str,
        org_id: str,
        reference: str,
        amount: Money,
        details: dict[str, Any],
        /,
        *,
        conn: AsyncConnection,
    ) -> object: ...


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """A line of an invoice: ``amount`` is rounded, positive even for deductions (``discount``,
    ``credit``: see ``signed``). ``unit_price`` is per ``per`` units; ``tax_rate`` (0.20) is what
    applies to the line; a ``tax`` line holds the rate as its quantity and its base as its unit
    price."""

    kind: str
    description: str
    quantity: Decimal
    unit_price: Money
    amount: Money
    tax_rate: Decimal = _ZERO
    per: Decimal = _ONE

    @property
    def deduction(self) -> bool:
        return self.kind in _DEDUCTIONS

    @property
    def signed(self) -> Money:
        """The amount as it counts towards the total (negative for deductions)."""
        return -self.amount if self.deduction else self.amount


@dataclass(frozen=True, slots=True)
class Invoice:
    """A row of ``invoices``. ``total = subtotal + tax - credits``, never negative."""

    id: str
    number: str
    org_id: str
    snapshot_id: str | None
    period: str
    status: InvoiceStatus
    currency: str
    lines: tuple[InvoiceLine, ...]
    subtotal: Money
    tax: Money
    credits: Money
    total: Money
    issue_date: date
    due_date: date
    provider: str
    created_at: datetime
    updated_at: datetime
    reverse_charge: bool = False
    credits_applied: bool = False
    """Whether the org's credits were asked (once) for this invoice."""
    original_currency: str | None = None
    original_total: Money | None = None
    fx_rate: Decimal | None = None
    fx_source: str | None = None
    fx_date: date | None = None
    provider_id: str | None = None
    provider_status: str | None = None
    provider_total: Money | None = None
    provider_document: str | None = None
    last_error: str | None = None
    sent_at: datetime | None = None
    paid_at: datetime | None = None

    @property
    def gross(self) -> Money:
        """What is due before credits."""
        return self.subtotal + self.tax

    @property
    def converted(self) -> bool:
        return self.original_currency is not None


@dataclass(frozen=True, slots=True)
class BillingAccount:
    """A row of ``billing_accounts``: who the invoice is addressed to."""

    org_id: str
    legal_name: str
    email: str
    address: str
    city: str
    district: str
    tax_office: str
    stripe_customer_id: str | None = None
    parasut_contact_id: str | None = None


# --- rows and JSON -------------------------------------------------------------------------------


def _invoice(row: RowMapping) -> Invoice:
    currency = row["currency"]
    raw = row["lines"] or []
    lines = tuple(_line_from_json(item, currency) for item in raw)
    original = row["original_currency"]
    provider_total = row["provider_total"]
    return Invoice(
        id=row["id"],
        number=row["number"],
        org_id=row["org_id"],
        snapshot_id=row["snapshot_id"],
        period=row["period"],
        status=row["status"],
        currency=currency,
        lines=lines,
        subtotal=_money(row["subtotal"], currency),
        tax=_money(row["tax"], currency),
        credits=_money(row["credits"], currency),
        total=_money(row["total"], currency),
        issue_date=row["issue_date"],
        due_date=row["due_date"],
        provider=row["provider"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reverse_charge=any(item.get("reverse_charge") for item in raw),
        credits_applied=any(item.get("consumed") for item in raw),
        original_currency=original,
        original_total=None if original is None else _money(row["original_total"], original),
        fx_rate=None if row["fx_rate"] is None else _plain(row["fx_rate"]),
        fx_source=row["fx_source"],
        fx_date=row["fx_date"],
        provider_id=row["provider_id"],
        provider_status=row["provider_status"],
        provider_total=None if provider_total is None else _money(provider_total, currency),
        provider_document=row["provider_document"],
        last_error=row["last_error"],
        sent_at=row["sent_at"],
        paid_at=row["paid_at"],
    )


def _line_json(line: InvoiceLine) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "description": line.description,
        "quantity": str(line.quantity),
        "unit_price": str(line.unit_price.amount),
        "amount": str(line.amount.amount),
        "tax_rate": str(line.tax_rate),
        "per": str(line.per),
    }


def _line_from_json(item: Mapping[str, Any], currency: str) -> InvoiceLine:
    return InvoiceLine(
        kind=item["kind"],
        description=item["description"],
        quantity=Decimal(item["quantity"]),
        unit_price=Money(Decimal(item["unit_price"]), currency),
        amount=Money(Decimal(item["amount"]), currency),
        tax_rate=Decimal(item.get("tax_rate", "0")),
        per=Decimal(item.get("per", "1")),
    )


# --- amounts -------------------------------------------------------------------------------------


def _money(value: Decimal, currency: str) -> Money:
    """An amount as stored (NUMERIC(20, 6): ``54.130000``) written in the currency's minor unit
    (``54.13``) when that is exact."""
    rounded = round_line(value, currency)
    return Money(rounded if rounded == value else value, currency)


def _plain(value: Decimal) -> Decimal:
    """``value`` without trailing zeros after the point (``34.215600`` → ``34.2156``)."""
    return value.quantize(_ONE) if value == value.to_integral_value() else value.normalize()


def _mul(value: Decimal, factor: Decimal) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        return value * factor


def _sum(amounts: Iterable[Money], currency: str) -> Money:
    result = Money.zero(currency)
    for amount in amounts:
        result += amount
    return result


def _either(states: Sequence[str]) -> str:
    """``draft, open or pending``."""
    return " or ".join(filter(None, (", ".join(states[:-1]), states[-1])))

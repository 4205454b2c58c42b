"""Invoices: made from a period's closing snapshot, numbered, converted, credited, and moved
through their states, every change audited in the transaction that makes it.

States
    ``draft`` (made, not sent) → ``open`` (issued by the provider) → ``paid`` | ``void`` |
    ``uncollectible``. ``pending`` while the provider cannot be reached: the job queue retries
    the sending, and the provider makes its invoice exactly once per number (see
    ``hoodrun.billing.providers``). A draft, pending or open invoice can be voided. Anything else
    is an ``InvalidTransition``. Repeating a transition an invoice already made (a webhook
    delivered twice, a retried job) changes nothing.

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

Numbers
    ``{prefix}-{year}-{sequence}`` (``HR-2026-000001``), per year of the issue date, without
    gaps: the number is taken inside the transaction that inserts the invoice (the highest of
    the year plus one), and a transaction that loses the race to another one (the unique
    number) starts again.

Credits, exactly once
    The org's credits are spent after the invoice exists, by the ``credits`` callable (one
    call, the invoice's number as the reference), and the credit line is added in a second
    step. A crash between the two leaves the credits spent and the invoice without its credit
    line; the retry (``create_from_snapshot`` again, which returns the existing invoice) finds
    the spend in ``credit_ledger`` by that reference and records it instead of spending again.
    So the callable must write ``reference`` on its ledger rows (``CreditBook.consume`` does).
    The credit line is added even when the credits paid nothing, so the credits are never
    asked twice. Two processes completing the same invoice at once are kept apart by a lock on
    the invoice row held across the spending (PostgreSQL); SQLite, one machine, by a lock in
    the process and a check before the credit line is written.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Literal, Protocol, TypeVar, get_args

from sqlalchemy import RowMapping, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.providers import InvoiceDraft, InvoiceLineDraft
from hoodrun.config import Config
from hoodrun.metering.money import Money, round_line
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import (
    billing_accounts,
    closing_snapshots,
    credit_grants,
    credit_ledger,
    credit_notes,
    invoices,
    orgs,
    refunds,
)

__all__ = [
    "AdjustmentRefused",
    "BillingAccount",
    "CreditNote",
    "CreditsLike",
    "CurrencyError",
    "FxQuoteLike",
    "InvalidTransition",
    "Invoice",
    "InvoiceBook",
    "InvoiceError",
    "InvoiceLine",
    "InvoiceNotFound",
    "InvoiceStatus",
    "LedgerLike",
    "NumberingConflict",
    "Refund",
    "SnapshotInvalid",
    "SnapshotNotFound",
]

InvoiceStatus = Literal["draft", "pending", "open", "paid", "void", "uncollectible"]
Provider = Literal["stripe", "parasut", "none"]
STATUSES: tuple[str, ...] = get_args(InvoiceStatus)
PROVIDERS: tuple[str, ...] = get_args(Provider)

# Where each state can be reached from.
_ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"draft", "pending"}),
    "open": frozenset({"draft", "pending"}),
    "paid": frozenset({"open"}),
    "void": frozenset({"draft", "pending", "open"}),
    "uncollectible": frozenset({"open"}),
}
_DEDUCTIONS = frozenset({"discount", "credit"})
# Providers that compute VAT line by line: their invoices carry the tax rounded per line.
_PER_LINE_TAX = frozenset({"parasut"})
_PRECISION = 60
_ONE = Decimal(1)
_ZERO = Decimal(0)
_RATE_SCALE = Decimal("0.000001")  # what the fx_rate column holds
_NUMBER_ATTEMPTS = 50
_ERROR_LENGTH = 2000
_Adjustment = TypeVar("_Adjustment", "CreditNote", "Refund")


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
class CreditNote:
    """A correction of an issued invoice: ``pending`` until the provider issued it."""

    id: str
    invoice_id: str
    amount: Money
    reason: str
    status: str
    provider_id: str | None
    created_at: datetime
    issued_at: datetime | None


@dataclass(frozen=True, slots=True)
class Refund:
    """Money paid back on a paid invoice: ``pending``, then ``succeeded`` or ``failed``."""

    id: str
    invoice_id: str
    amount: Money
    reason: str
    status: str
    provider_id: str | None
    created_at: datetime
    done_at: datetime | None


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


# --- the book ------------------------------------------------------------------------------------


class InvoiceBook:
    """Invoices in the business store: make them from snapshots, move them, read them.

    ``ledger`` (optional) gets an entry in the transaction of each money event: an invoice
    issued (``invoice.issued``), paid (``payment.received``), voided once issued
    (``invoice.voided``), all three of the invoice's total; a credit note issued
    (``credit_note.issued``) and a refund paid (``refund.issued``), of their amounts. The
    reference is the invoice's id (the credit note's or refund's for those). Credits spent on
    an invoice are the spender's entry (``CreditBook.consume``), not this book's.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        clock: Callable[[], datetime] = _utc_now,
        ledger: LedgerLike | None = None,
    ) -> None:
        self._store = store
        self.config = config
        self._clock = clock
        self._ledger = ledger
        self._credit_lock = asyncio.Lock()

    # --- making --------------------------------------------------------------------------------

    async def create_from_snapshot(
        self,
        snapshot_id: str,
        *,
        provider: str,
        currency: str | None = None,
        fx: FxQuoteLike | None = None,
        credits: CreditsLike | None = None,
        issue_date: date | None = None,
        actor: str = "billing",
    ) -> Invoice:
        """The invoice of the snapshot, made as a draft if there is none yet (see the module).

        ``currency`` (default: the snapshot's) is what the invoice is issued in; another one
        needs ``fx`` from the snapshot's currency to it. ``credits`` spends the org's credit on
        the invoice once. Calling again returns the same invoice (and completes its credits if
        a crash interrupted them).
        """
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r}: use one of {', '.join(PROVIDERS)}")
        if currency is not None and not re.fullmatch(r"[A-Z]{3}", currency):
            raise CurrencyError(f"currency {currency!r}: an ISO 4217 code like TRY")
        issued = issue_date if issue_date is not None else self._clock().date()
        invoice = await self._create(snapshot_id, provider, currency, fx, issued, actor)
        if credits is not None and _credits_due(invoice):
            invoice = await self._apply_credits(invoice, credits, actor)
        return invoice

    async def _create(
        self,
        snapshot_id: str,
        provider: str,
        currency: str | None,
        fx: FxQuoteLike | None,
        issued: date,
        actor: str,
    ) -> Invoice:
        for _ in range(_NUMBER_ATTEMPTS):
            try:
                async with self._store.transaction() as conn:
                    snapshot = await self._locked_snapshot(conn, snapshot_id)
                    existing = await self._select_one(conn, invoices.c.snapshot_id == snapshot_id)
                    if existing is not None:
                        return existing
                    built = _build(
                        snapshot,
                        currency or snapshot["currency"],
                        fx,
                        per_line_tax=provider in _PER_LINE_TAX,
                    )
                    number = await self._next_number(conn, issued.year)
                    return await self._insert(
                        conn, snapshot, built, number, provider, fx, issued, actor
                    )
            except IntegrityError as exc:
                if not _number_taken(exc):
                    raise
                # Another transaction took the number first: take the next one.
        raise NumberingConflict(
            f"no invoice number for snapshot {snapshot_id} after {_NUMBER_ATTEMPTS} attempts"
        )

    async def _locked_snapshot(self, conn: AsyncConnection, snapshot_id: str) -> RowMapping:
        stmt = select(closing_snapshots).where(closing_snapshots.c.id == snapshot_id)
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise SnapshotNotFound(f"no closing snapshot {snapshot_id!r}")
        # One invoice per snapshot, with no unique column to say so: making invoices of one org
        # is serialized on its row (FOR NO KEY UPDATE, which leaves the org's other foreign keys
        # free; SQLite's write transaction already holds the database's write lock).
        await conn.execute(
            select(orgs.c.id).where(orgs.c.id == row["org_id"]).with_for_update(key_share=True)
        )
        return row

    async def _next_number(self, conn: AsyncConnection, year: int) -> str:
        prefix = f"{self.config.billing.invoice_prefix}-{year}-"
        # The prefix is [A-Z0-9-]: no LIKE wildcards. A number of this series has no dash after
        # the prefix; ``NOT LIKE`` leaves out another prefix that starts like this one.
        # Longest first, so that 1000000 comes after 999999.
        stmt = (
            select(invoices.c.number)
            .where(invoices.c.number.like(f"{prefix}%"))
            .where(invoices.c.number.not_like(f"{prefix}%-%"))
            .order_by(func.length(invoices.c.number).desc(), invoices.c.number.desc())
            .limit(1)
        )
        last = await conn.scalar(stmt)
        sequence = 1
        if last is not None:
            tail = last[len(prefix) :]
            if not tail.isdigit():
                raise InvoiceError(f"invoice number {last!r} does not end in a sequence number")
            sequence = int(tail) + 1
        return f"{prefix}{sequence:06d}"

    async def _insert(
        self,
        conn: AsyncConnection,
        snapshot: RowMapping,
        built: _Built,
        number: str,
        provider: str,
        fx: FxQuoteLike | None,
        issued: date,
        actor: str,
    ) -> Invoice:
        now = self._clock()
        invoice_id = new_id("inv")
        values: dict[str, Any] = {
            "id": invoice_id,
            "number": number,
            "org_id": snapshot["org_id"],
            "snapshot_id": snapshot["id"],
            "period": snapshot["period"],
            "status": "draft",
            "currency": built.subtotal.currency,
            "lines": built.lines_json,
            "subtotal": built.subtotal.amount,
            "tax": built.tax.amount,
            "credits": built.credits.amount,
            "total": built.total.amount,
            "issue_date": issued,
            "due_date": issued + timedelta(days=self.config.billing.days_until_due),
            "provider": provider,
            "created_at": now,
            "updated_at": now,
        }
        if built.original_total is not None and fx is not None:
            values |= {
                "original_currency": built.original_total.currency,
                "original_total": built.original_total.amount,
                "fx_rate": fx.rate,
                "fx_source": fx.source,
                "fx_date": fx.day,
            }
        await conn.execute(insert(invoices).values(**values))
        await write_audit(
            conn,
            at=now,
            actor=actor,
            action="invoice.create",
            target_type="invoice",
            target_id=invoice_id,
            details={
                "number": number,
                "snapshot": snapshot["id"],
                "org": snapshot["org_id"],
                "currency": built.total.currency,
                "total": str(built.total.amount),
                "provider": provider,
            },
        )
        return await self._read(conn, invoice_id)

    # --- credits -------------------------------------------------------------------------------

    async def _apply_credits(self, invoice: Invoice, credits: CreditsLike, actor: str) -> Invoice:
        if self._store.dialect == "postgresql":
            # The invoice row stays locked while the credits are spent (on another connection,
            # which never touches it): a second process waits, then finds the credit line.
            async with self._store.transaction() as conn:
                current = await self._locked(conn, invoice.id)
                if not _credits_due(current):
                    return current
                paid = await self._credit_paid(current, credits)
                return await self._record_credits(conn, current, paid, actor)
        # SQLite: spending takes the database's write lock, so no transaction can stay open
        # around it; this process's callers take turns, and the row is checked again before the
        # credit line is written.
        async with self._credit_lock:
            current = await self.get(invoice.id)
            if not _credits_due(current):
                return current
            paid = await self._credit_paid(current, credits)
            async with self._store.transaction() as conn:
                again = await self._locked(conn, invoice.id)
                if not _credits_due(again):
                    raise InvoiceError(
                        f"invoice {again.number} changed while its credits were spent: check "
                        f"credit_ledger rows with reference {again.number}"
                    )
                return await self._record_credits(conn, again, paid, actor)

    async def _credit_paid(self, invoice: Invoice, credits: CreditsLike) -> Money:
        """What credit paid: the spend already recorded under the invoice's number, if any (a
        crash came between spending and recording), else what spending now pays."""
        paid = await self._spent(invoice)
        if paid is None:
            paid = await credits(invoice.org_id, invoice.total, invoice.number)
        if not isinstance(paid, Money) or paid.currency != invoice.currency:
            raise InvoiceError(
                f"the credits paid {paid} on invoice {invoice.number}, in {invoice.currency}"
            )
        if paid.amount < 0 or paid > invoice.total or not paid.is_rounded():
            raise InvoiceError(
                f"the credits paid {paid} on invoice {invoice.number}, whose total is "
                f"{invoice.total}: check credit_ledger rows with reference {invoice.number}"
            )
        return paid

    async def _spent(self, invoice: Invoice) -> Money | None:
        """The credit spent under the invoice's number, ``None`` when nothing was."""
        stmt = (
            select(credit_ledger.c.amount, credit_grants.c.currency)
            .join(credit_grants, credit_grants.c.id == credit_ledger.c.grant_id)
            .where(credit_ledger.c.reference == invoice.number)
            .where(credit_grants.c.org_id == invoice.org_id)
        )
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        # Amounts are compared in Python: SQLite stores them as text.
        spends = [(-amount, currency) for amount, currency in rows if amount < 0]
        if not spends:
            return None
        spent = Money.zero(invoice.currency)
        for amount, currency in spends:
            if currency == invoice.currency:
                spent += Money(amount, currency)
            elif currency == invoice.original_currency and invoice.fx_rate is not None:
                converted = _mul(amount, invoice.fx_rate)
                spent += Money(round_line(converted, invoice.currency), invoice.currency)
            else:
                raise InvoiceError(
                    f"credit spent on invoice {invoice.number} is in {currency}, neither the "
                    f"invoice's currency nor its original one"
                )
        return spent

    async def _record_credits(
        self, conn: AsyncConnection, invoice: Invoice, paid: Money, actor: str
    ) -> Invoice:
        now = self._clock()
        description = "credit applied" if paid.amount > 0 else "credit: none available"
        line = InvoiceLine("credit", description, _ONE, paid, paid)
        # The stored lines as they are (with their marks), and the credit line marked as the
        # one that asked the credits.
        stored = await conn.scalar(select(invoices.c.lines).where(invoices.c.id == invoice.id))
        lines = [*(stored or []), {**_line_json(line), "consumed": True}]
        await conn.execute(
            update(invoices)
            .where(invoices.c.id == invoice.id)
            .values(
                lines=lines,
                credits=(invoice.credits + paid).amount,
                total=(invoice.total - paid).amount,
                updated_at=now,
            )
        )
        await write_audit(
            conn,
            at=now,
            actor=actor,
            action="invoice.credits",
            target_type="invoice",
            target_id=invoice.id,
            details={"number": invoice.number, "paid": str(paid.amount), "currency": paid.currency},
        )
        # The spend's ledger entry (credits.consumed) is the spender's, written with the spend.
        return await self._read(conn, invoice.id)

    # --- transitions ---------------------------------------------------------------------------

    async def mark_pending(self, invoice_id: str, error: str, *, actor: str = "billing") -> Invoice:
        """The provider could not be reached: the invoice waits to be sent again."""
        return await self._transition(
            invoice_id,
            "pending",
            actor=actor,
            values={"last_error": error[:_ERROR_LENGTH]},
            details={"error": error[:200]},
        )

    async def mark_sent(
        self,
        invoice_id: str,
        provider_id: str,
        provider_status: str,
        provider_total: Money,
        document_id: str | None = None,
        *,
        actor: str = "billing",
    ) -> Invoice:
        """The provider issued the invoice: it is ``open``. Again with the same ``provider_id``
        changes nothing; an open invoice cannot be sent as another provider invoice."""

        def done(invoice: Invoice) -> bool:
            if invoice.status != "open":
                return False
            if invoice.provider_id != provider_id:
                raise InvalidTransition(
                    f"invoice {invoice.number} is already open as {invoice.provider_id}, "
                    f"not {provider_id}"
                )
            return True

        return await self._transition(
            invoice_id,
            "open",
            actor=actor,
            done=done,
            check=lambda invoice: _same_currency(invoice, provider_total, "the provider's total"),
            values={
                "provider_id": provider_id,
                "provider_status": provider_status,
                "provider_total": provider_total.amount,
                "provider_document": document_id,
                "last_error": None,
                "sent_at": self._clock(),
            },
            details={"provider_id": provider_id, "provider_total": str(provider_total.amount)},
            ledger=("invoice.issued", frozenset({"draft", "pending"})),
        )

    async def mark_paid(
        self, invoice_id: str, paid_at: datetime | None = None, *, actor: str = "billing"
    ) -> Invoice:
        """The open invoice was paid (at ``paid_at``, default now)."""
        at = paid_at if paid_at is not None else self._clock()
        if at.utcoffset() is None:
            raise ValueError("paid_at must be timezone-aware")
        return await self._transition(
            invoice_id,
            "paid",
            actor=actor,
            values={"paid_at": at.astimezone(UTC)},
            details={"paid_at": at.isoformat()},
            ledger=("payment.received", frozenset({"open"})),
        )

    async def mark_void(self, invoice_id: str, *, actor: str = "billing") -> Invoice:
        """Cancel the invoice (a draft, a pending one, or an open one the provider voided)."""
        return await self._transition(
            invoice_id, "void", actor=actor, ledger=("invoice.voided", frozenset({"open"}))
        )

    async def mark_uncollectible(self, invoice_id: str, *, actor: str = "billing") -> Invoice:
        """Give up collecting the open invoice."""
        return await self._transition(invoice_id, "uncollectible", actor=actor)

    async def record_provider_total(
        self, invoice_id: str, total: Money, status: str, *, actor: str = "billing"
    ) -> Invoice:
        """What the provider now says of the invoice (reconciliation); the state is unchanged."""
        async with self._store.transaction() as conn:
            invoice = await self._locked(conn, invoice_id)
            _same_currency(invoice, total, "the provider's total")
            now = self._clock()
            await conn.execute(
                update(invoices)
                .where(invoices.c.id == invoice_id)
                .values(provider_total=total.amount, provider_status=status, updated_at=now)
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="invoice.provider_total",
                target_type="invoice",
                target_id=invoice_id,
                details={"number": invoice.number, "total": str(total.amount), "status": status},
            )
            return await self._read(conn, invoice_id)

    async def _transition(
        self,
        invoice_id: str,
        target: InvoiceStatus,
        *,
        actor: str,
        values: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
        done: Callable[[Invoice], bool] | None = None,
        check: Callable[[Invoice], None] | None = None,
        ledger: tuple[str, frozenset[str]] | None = None,
    ) -> Invoice:
        """Move the invoice to ``target`` in one transaction with its audit row (and ledger
        entry, when ``ledger``'s kind applies from the current state). ``done`` says the change
        was already made (default: the invoice is in ``target`` and ``target`` is final)."""
        async with self._store.transaction() as conn:
            current = await self._locked(conn, invoice_id)
            already = done(current) if done is not None else _final(current, target)
            if already:
                return current
            if current.status not in _ALLOWED[target]:
                raise InvalidTransition(
                    f"invoice {current.number} is {current.status}: only a "
                    f"{_either(sorted(_ALLOWED[target]))} invoice can become {target}"
                )
            if check is not None:
                check(current)
            now = self._clock()
            await conn.execute(
                update(invoices)
                .where(invoices.c.id == invoice_id)
                .values(status=target, updated_at=now, **(values or {}))
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action=f"invoice.{target}",
                target_type="invoice",
                target_id=invoice_id,
                details={
                    "number": current.number,
                    "from": current.status,
                    "to": target,
                    **(details or {}),
                },
            )
            updated = await self._read(conn, invoice_id)
            if ledger is not None and current.status in ledger[1]:
                await self._tell_ledger(conn, ledger[0], current, current.id, current.total)
            return updated

    async def _tell_ledger(
        self, conn: AsyncConnection, kind: str, invoice: Invoice, reference: str, amount: Money
    ) -> None:
        """The ledger entry of a change, in its transaction (the ledger's lock is held from here
        to the commit, so this is the transaction's last step)."""
        if self._ledger is not None:
            details = {"invoice": invoice.id, "number": invoice.number, "period": invoice.period}
            await self._ledger.append(kind, invoice.org_id, reference, amount, details, conn=conn)

    # --- credit notes and refunds ---------------------------------------------------------------

    async def add_credit_note(
        self, invoice_id: str, amount: Money, reason: str, *, actor: str = "billing"
    ) -> CreditNote:
        """A credit note on an issued (open or paid) invoice; all of them together at most its
        total. ``pending`` until the provider issued it (``mark_credit_note_issued``)."""
        async with self._store.transaction() as conn:
            invoice = await self._locked(conn, invoice_id)
            _check_adjustment(invoice, amount, reason, ("open", "paid"), "a credit note")
            rows = await conn.execute(
                select(credit_notes.c.amount).where(credit_notes.c.invoice_id == invoice_id)
            )
            _check_room(invoice, amount, [row.amount for row in rows], "credit notes")
            now = self._clock()
            note = CreditNote(new_id("cn"), invoice_id, amount, reason, "pending", None, now, None)
            await conn.execute(insert(credit_notes).values(**_adjustment_row(note)))
            await self._audit_adjustment(
                conn, "credit_note.create", invoice, note.id, amount, actor
            )
        return note

    async def mark_credit_note_issued(
        self, note_id: str, provider_id: str, *, actor: str = "billing"
    ) -> CreditNote:
        """The provider issued the credit note (``credit_note.issued`` in the ledger); again with
        the same ``provider_id`` is a no-op."""
        return await self._settle(
            credit_notes,
            note_id,
            ("issued", "issued_at", "credit_note.issued"),
            provider_id,
            actor,
            _credit_note,
        )

    async def add_refund(
        self, invoice_id: str, amount: Money, reason: str, *, actor: str = "billing"
    ) -> Refund:
        """A refund on a paid invoice; with the others not failed, at most its total."""
        async with self._store.transaction() as conn:
            invoice = await self._locked(conn, invoice_id)
            _check_adjustment(invoice, amount, reason, ("paid",), "a refund")
            rows = await conn.execute(
                select(refunds.c.amount)
                .where(refunds.c.invoice_id == invoice_id)
                .where(refunds.c.status != "failed")
            )
            _check_room(invoice, amount, [row.amount for row in rows], "refunds")
            now = self._clock()
            refund = Refund(new_id("rf"), invoice_id, amount, reason, "pending", None, now, None)
            await conn.execute(insert(refunds).values(**_adjustment_row(refund)))
            await self._audit_adjustment(conn, "refund.create", invoice, refund.id, amount, actor)
        return refund

    async def mark_refund_done(
        self,
        refund_id: str,
        provider_id: str,
        *,
        succeeded: bool = True,
        actor: str = "billing",
    ) -> Refund:
        """The provider paid the refund back (``refund.issued`` in the ledger) or failed to;
        again the same way is a no-op."""
        outcome = (
            ("succeeded", "done_at", "refund.issued") if succeeded else ("failed", "done_at", None)
        )
        return await self._settle(refunds, refund_id, outcome, provider_id, actor, _refund)

    async def credit_notes(self, invoice_id: str) -> builtins.list[CreditNote]:
        async with self._store.connect() as conn:
            rows = await conn.execute(
                select(credit_notes)
                .where(credit_notes.c.invoice_id == invoice_id)
                .order_by(credit_notes.c.created_at, credit_notes.c.id)
            )
            return [_credit_note(row) for row in rows.mappings()]

    async def refunds(self, invoice_id: str) -> builtins.list[Refund]:
        async with self._store.connect() as conn:
            rows = await conn.execute(
                select(refunds)
                .where(refunds.c.invoice_id == invoice_id)
                .order_by(refunds.c.created_at, refunds.c.id)
            )
            return [_refund(row) for row in rows.mappings()]

    async def _settle(
        self,
        table: Any,
        row_id: str,
        outcome: tuple[str, str, str | None],
        provider_id: str,
        actor: str,
        load: Callable[[RowMapping], _Adjustment],
    ) -> _Adjustment:
        """Settle a pending credit note or refund: ``outcome`` is its new status, the column
        stamped with the time, and the ledger's kind for it (if any)."""
        status, stamp, ledger_kind = outcome
        kind = "credit_note" if table is credit_notes else "refund"
        async with self._store.transaction() as conn:
            row = (
                (await conn.execute(select(table).where(table.c.id == row_id).with_for_update()))
                .mappings()
                .first()
            )
            if row is None:
                raise InvoiceNotFound(f"no {kind.replace('_', ' ')} {row_id!r}")
            if row["status"] == status and row["provider_id"] == provider_id:
                return load(row)
            if row["status"] != "pending":
                raise InvalidTransition(
                    f"{kind.replace('_', ' ')} {row_id} is {row['status']} "
                    f"({row['provider_id']}): only a pending one can become {status}"
                )
            now = self._clock()
            await conn.execute(
                update(table)
                .where(table.c.id == row_id)
                .values(status=status, provider_id=provider_id, **{stamp: now})
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action=f"{kind}.{status}",
                target_type="invoice",
                target_id=row["invoice_id"],
                details={kind: row_id, "provider_id": provider_id},
            )
            updated = load(
                (await conn.execute(select(table).where(table.c.id == row_id))).mappings().one()
            )
            if ledger_kind is not None:
                invoice = await self._read(conn, row["invoice_id"])
                await self._tell_ledger(conn, ledger_kind, invoice, row_id, updated.amount)
            return updated

    async def _audit_adjustment(
        self,
        conn: AsyncConnection,
        action: str,
        invoice: Invoice,
        row_id: str,
        amount: Money,
        actor: str,
    ) -> None:
        await write_audit(
            conn,
            at=self._clock(),
            actor=actor,
            action=action,
            target_type="invoice",
            target_id=invoice.id,
            details={
                "number": invoice.number,
                "id": row_id,
                "amount": str(amount.amount),
                "currency": amount.currency,
            },
        )

    # --- the provider's view -------------------------------------------------------------------

    def draft(self, invoice: Invoice, *, tax_name: str, reverse_charge: bool) -> InvoiceDraft:
        """What a provider is sent: the lines without tax lines (each with its tax rate; the
        deductions negative; a credit line that paid nothing left out) and HoodRun's totals."""
        lines = tuple(
            _draft_line(line)
            for line in invoice.lines
            if line.kind != "tax" and not (line.kind == "credit" and line.amount.is_zero())
        )
        metadata = {
            "invoice_id": invoice.id,
            "number": invoice.number,
            "org_id": invoice.org_id,
            "period": invoice.period,
        }
        if invoice.snapshot_id is not None:
            metadata["snapshot_id"] = invoice.snapshot_id
        if invoice.original_total is not None:
            metadata |= {
                "original_currency": invoice.original_total.currency,
                "original_total": str(invoice.original_total.amount),
                "fx_rate": str(invoice.fx_rate),
                "fx_source": str(invoice.fx_source),
                "fx_date": str(invoice.fx_date),
            }
        return InvoiceDraft(
            invoice_id=invoice.id,
            number=invoice.number,
            currency=invoice.currency,
            issue_date=invoice.issue_date,
            due_date=invoice.due_date,
            period=invoice.period,
            description=f"{self.config.billing.issuer.name}: {invoice.period}",
            lines=lines,
            subtotal=invoice.subtotal.amount,
            tax=invoice.tax.amount,
            credits=invoice.credits.amount,
            total=invoice.total.amount,
            tax_name=tax_name,
            reverse_charge=reverse_charge,
            exchange_rate=invoice.fx_rate,
            metadata=metadata,
        )

    # --- reading -------------------------------------------------------------------------------

    async def get(self, invoice_id: str) -> Invoice:
        async with self._store.connect() as conn:
            found = await self._select_one(conn, invoices.c.id == invoice_id)
        if found is None:
            raise InvoiceNotFound(f"no invoice {invoice_id!r}")
        return found

    async def by_number(self, number: str) -> Invoice:
        async with self._store.connect() as conn:
            found = await self._select_one(conn, invoices.c.number == number)
        if found is None:
            raise InvoiceNotFound(f"no invoice numbered {number!r}")
        return found

    async def for_snapshot(self, snapshot_id: str) -> Invoice | None:
        async with self._store.connect() as conn:
            return await self._select_one(conn, invoices.c.snapshot_id == snapshot_id)

    async def account(self, org_id: str) -> BillingAccount | None:
        """The org's billing account, if it has one."""
        stmt = select(billing_accounts).where(billing_accounts.c.org_id == org_id)
        async with self._store.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        return BillingAccount(**{k: v for k, v in row.items() if k != "updated_at"})

    async def org_name(self, org_id: str) -> str:
        """The org's name (its id when the org is gone)."""
        async with self._store.connect() as conn:
            name = await conn.scalar(select(orgs.c.name).where(orgs.c.id == org_id))
        return name if name is not None else org_id

    async def list(
        self,
        org_id: str | None = None,
        status: str | None = None,
        period: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Invoice]:
        """Invoices, the newest first, optionally of one org, state and period."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        stmt = select(invoices).order_by(invoices.c.created_at.desc(), invoices.c.number.desc())
        if org_id is not None:
            stmt = stmt.where(invoices.c.org_id == org_id)
        if status is not None:
            stmt = stmt.where(invoices.c.status == status)
        if period is not None:
            stmt = stmt.where(invoices.c.period == period)
        async with self._store.connect() as conn:
            rows = await conn.execute(stmt.limit(limit))
            return [_invoice(row) for row in rows.mappings()]

    async def _select_one(self, conn: AsyncConnection, where: Any) -> Invoice | None:
        row = (await conn.execute(select(invoices).where(where).limit(1))).mappings().first()
        return None if row is None else _invoice(row)

    async def _locked(self, conn: AsyncConnection, invoice_id: str) -> Invoice:
        stmt = select(invoices).where(invoices.c.id == invoice_id).with_for_update()
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise InvoiceNotFound(f"no invoice {invoice_id!r}")
        return _invoice(row)

    async def _read(self, conn: AsyncConnection, invoice_id: str) -> Invoice:
        found = await self._select_one(conn, invoices.c.id == invoice_id)
        if found is None:
            raise InvoiceNotFound(f"no invoice {invoice_id!r}")
        return found


# --- building from a snapshot ---------------------------------------------------------------------


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


def _credit_note(row: RowMapping) -> CreditNote:
    return CreditNote(
        id=row["id"],
        invoice_id=row["invoice_id"],
        amount=_money(row["amount"], row["currency"]),
        reason=row["reason"],
        status=row["status"],
        provider_id=row["provider_id"],
        created_at=row["created_at"],
        issued_at=row["issued_at"],
    )


def _refund(row: RowMapping) -> Refund:
    return Refund(
        id=row["id"],
        invoice_id=row["invoice_id"],
        amount=_money(row["amount"], row["currency"]),
        reason=row["reason"],
        status=row["status"],
        provider_id=row["provider_id"],
        created_at=row["created_at"],
        done_at=row["done_at"],
    )


def _adjustment_row(item: CreditNote | Refund) -> dict[str, Any]:
    return {
        "id": item.id,
        "invoice_id": item.invoice_id,
        "amount": item.amount.amount,
        "currency": item.amount.currency,
        "reason": item.reason,
        "status": item.status,
        "provider_id": item.provider_id,
        "created_at": item.created_at,
    }


# --- helpers -------------------------------------------------------------------------------------


def _credits_due(invoice: Invoice) -> bool:
    return invoice.status == "draft" and not invoice.credits_applied and invoice.total.amount > 0


def _final(invoice: Invoice, target: str) -> bool:
    return invoice.status == target and target in ("paid", "void", "uncollectible")


def _same_currency(invoice: Invoice, amount: Money, what: str) -> None:
    if amount.currency != invoice.currency:
        raise CurrencyError(
            f"{what} is in {amount.currency}; invoice {invoice.number} is in {invoice.currency}"
        )


def _check_adjustment(
    invoice: Invoice, amount: Money, reason: str, states: tuple[str, ...], what: str
) -> None:
    if invoice.status not in states:
        raise AdjustmentRefused(
            f"invoice {invoice.number} is {invoice.status}: {what} needs it {_either(states)}"
        )
    if amount.currency != invoice.currency:
        raise AdjustmentRefused(
            f"{what} in {amount.currency} on invoice {invoice.number}, which is in "
            f"{invoice.currency}"
        )
    if amount.amount <= 0 or not amount.is_rounded():
        raise AdjustmentRefused(f"{what} of {amount}: a positive amount in whole minor units")
    if not reason.strip() or len(reason) > 256:
        raise AdjustmentRefused(f"{what} needs a reason of 1 to 256 characters")


def _check_room(invoice: Invoice, amount: Money, existing: Sequence[Decimal], what: str) -> None:
    before = _sum((_money(value, invoice.currency) for value in existing), invoice.currency)
    if before + amount > invoice.total:
        raise AdjustmentRefused(
            f"{what} of invoice {invoice.number} would come to {before + amount}, more than its "
            f"total of {invoice.total}"
        )


def _draft_line(line: InvoiceLine) -> InvoiceLineDraft:
    sign = -1 if line.deduction else 1
    with localcontext() as ctx:
        ctx.prec = 28  # a unit price per single unit: enough digits, never a runaway fraction
        unit = (line.unit_price.amount / line.per).normalize() * sign
    return InvoiceLineDraft(
        description=line.description,
        quantity=line.quantity,
        unit_price=unit,
        amount=line.signed.amount,
        tax_rate=line.tax_rate,
        kind=line.kind,
    )


def _number_taken(exc: IntegrityError) -> bool:
    message = str(exc.orig)
    return "uq_invoices_number" in message or "invoices.number" in message


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


def _percent(rate: Decimal) -> str:
    return f"{_mul(rate, Decimal(100)).normalize():f}"

"""Invoices: made from a period's closing snapshot, numbered, converted, credited, and moved
through their states, every change audited in the transaction that makes it.

This module holds the ``InvoiceBook`` and the package's public names. How a snapshot becomes an
invoice's lines and totals (the snapshot's format, rounding, conversion) is in ``_building``;
how the org's credits are spent on it exactly once in ``_credits``; credit notes and refunds in
``_adjustments``; what a provider is sent (``InvoiceBook.draft``) in ``_drafts``; the values,
errors and what callers pass in ``_values``.

States
    ``draft`` (made, not sent) → ``open`` (issued by the provider) → ``paid`` | ``void`` |
    ``uncollectible``. ``pending`` while the provider cannot be reached: the job queue retries
    the sending, and the provider makes its invoice exactly once per number (see
    ``hoodrun.billing.providers``). A draft, pending or open invoice can be voided. Anything else
    is an ``InvalidTransition``. Repeating a transition an invoice already made (a webhook
    delivered twice, a retried job) changes nothing.

Numbers
    ``{prefix}-{year}-{sequence}`` (``HR-2026-000001``), per year of the issue date, without
    gaps: the number is taken inside the transaction that inserts the invoice (the highest of
    the year plus one), and a transaction that loses the race to another one (the unique
    number) starts again.
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.invoices._adjustments import CreditNote, InvoiceAdjustments, Refund
from hoodrun.billing.invoices._building import _build, _Built
from hoodrun.billing.invoices._credits import InvoiceCredits, _credits_due
from hoodrun.billing.invoices._drafts import InvoiceDrafts

# PROVIDERS, STATUSES and Provider: public names outside ``__all__``, importable from here as
# before.
from hoodrun.billing.invoices._values import PROVIDERS as PROVIDERS
from hoodrun.billing.invoices._values import STATUSES as STATUSES
from hoodrun.billing.invoices._values import (
    AdjustmentRefused,
    BillingAccount,
    CreditsLike,
    CurrencyError,
    FxQuoteLike,
    InvalidTransition,
    Invoice,
    InvoiceError,
    InvoiceLine,
    InvoiceNotFound,
    InvoiceStatus,
    LedgerLike,
    NumberingConflict,
    SnapshotInvalid,
    SnapshotNotFound,
    _either,
    _invoice,
)
from hoodrun.billing.invoices._values import Provider as Provider
from hoodrun.config import Config
from hoodrun.metering.money import Money
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import (
    billing_accounts,
    closing_snapshots,
    invoices,
    orgs,
)
from hoodrun.webhooks import WebhookBook

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

# Where each state can be reached from.
_ALLOWED: dict[str, frozenset[str]] = {
    "pending": frozenset({"draft", "pending"}),
    "open": frozenset({"draft", "pending"}),
    "paid": frozenset({"open"}),
    "void": frozenset({"draft", "pending", "open"}),
    "uncollectible": frozenset({"open"}),
}
# Providers that compute VAT line by line: their invoices carry the tax rounded per line.
_PER_LINE_TAX = frozenset({"parasut"})
_NUMBER_ATTEMPTS = 50
_ERROR_LENGTH = 2000


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- the book ------------------------------------------------------------------------------------


class InvoiceBook(InvoiceCredits, InvoiceAdjustments, InvoiceDrafts):
    """Invoices in the business store: make them from snapshots, move them, read them.

    ``ledger`` (optional) gets an entry in the transaction of each money event: an invoice
    issued (``invoice.issued``), paid (``payment.received``), voided once issued
    (``invoice.voided``), all three of the invoice's total; a credit note issued
    (``credit_note.issued``) and a refund paid (``refund.issued``), of their amounts. The
    reference is the invoice's id (the credit note's or refund's for those). Credits spent on
    an invoice are the spender's entry (``CreditBook.consume``), not this book's.

    ``webhooks`` (default: one on ``store``) is told ``invoice.created`` (the draft, before
    credits are spent on it) and ``invoice.paid`` in the transactions that make them.
    """

    def __init__(
        self,
        store: Store,
        config: Config,
        *,
        clock: Callable[[], datetime] = _utc_now,
        ledger: LedgerLike | None = None,
        webhooks: WebhookBook | None = None,
    ) -> None:
        self._store = store
        self.config = config
        self._clock = clock
        self._ledger = ledger
        self._webhooks = webhooks if webhooks is not None else WebhookBook(store, clock=clock)
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
        """The invoice of the snapshot, made as a draft if there is none yet (see the module, and
        ``_credits`` for the credits).

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
        invoice = await self._read(conn, invoice_id)
        await self._tell_webhooks(conn, "invoice.created", invoice)
        return invoice

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
            event="invoice.paid",
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
        event: str | None = None,
    ) -> Invoice:
        """Move the invoice to ``target`` in one transaction with its audit row (and ledger
        entry, when ``ledger``'s kind applies from the current state; and webhook ``event``).
        ``done`` says the change was already made (default: the invoice is in ``target`` and
        ``target`` is final)."""
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
            if event is not None:
                await self._tell_webhooks(conn, event, updated)
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

    async def _tell_webhooks(self, conn: AsyncConnection, event: str, invoice: Invoice) -> None:
        data = {
            "invoice_id": invoice.id,
            "number": invoice.number,
            "period": invoice.period,
            "status": invoice.status,
            "total": {"amount": str(invoice.total.amount), "currency": invoice.total.currency},
            "due_date": invoice.due_date.isoformat(),
        }
        await self._webhooks.emit(conn, event, invoice.org_id, data)

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


# --- helpers -------------------------------------------------------------------------------------


def _final(invoice: Invoice, target: str) -> bool:
    return invoice.status == target and target in ("paid", "void", "uncollectible")


def _same_currency(invoice: Invoice, amount: Money, what: str) -> None:
    if amount.currency != invoice.currency:
        raise CurrencyError(
            f"{what} is in {amount.currency}; invoice {invoice.number} is in {invoice.currency}"
        )


def _number_taken(exc: IntegrityError) -> bool:
    message = str(exc.orig)
    return "uq_invoices_number" in message or "invoices.number" in message

"""Spending an org's credits on a new invoice: the ``InvoiceBook`` steps that ask the credits
once and add the invoice's credit line (``InvoiceCredits``, mixed into the book).

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
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.invoices._values import (
    _ONE,
    CreditsLike,
    Invoice,
    InvoiceError,
    InvoiceLine,
    _line_json,
    _mul,
)
from hoodrun.metering.money import Money, round_line
from hoodrun.store import Store, write_audit
from hoodrun.store.tables import credit_grants, credit_ledger, invoices


class InvoiceCredits:
    """The ``InvoiceBook``'s credit spending. A mixin: the book supplies its store, its clock, its
    credit lock (SQLite), and the steps that read and lock an invoice."""

    _store: Store
    _clock: Callable[[], datetime]
    _credit_lock: asyncio.Lock

    if TYPE_CHECKING:  # InvoiceBook's

        async def get(self, invoice_id: str) -> Invoice: ...

        async def _locked(self, conn: AsyncConnection, invoice_id: str) -> Invoice: ...

        async def _read(self, conn: AsyncConnection, invoice_id: str) -> Invoice: ...

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


def _credits_due(invoice: Invoice) -> bool:
    return invoice.status == "draft" and not invoice.credits_applied and invoice.total.amount > 0

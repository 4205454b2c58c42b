"""Credit notes and refunds of issued invoices: their values, the checks they pass, and the
``InvoiceBook`` methods that make and settle them (``InvoiceAdjustments``, mixed into the book).

A credit note corrects an open or paid invoice; all of an invoice's credit notes together come to
at most its total. A refund pays money back on a paid invoice; with its others not failed, at most
its total. Both are ``pending`` until the provider settles them, audited when made and settled, and
the ledger gets an entry when they are issued (``credit_note.issued``, ``refund.issued``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import RowMapping, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.invoices._values import (
    AdjustmentRefused,
    InvalidTransition,
    Invoice,
    InvoiceNotFound,
    _either,
    _money,
    _sum,
)
from hoodrun.metering.money import Money
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import credit_notes, refunds

_Adjustment = TypeVar("_Adjustment", "CreditNote", "Refund")


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


class InvoiceAdjustments:
    """The ``InvoiceBook``'s credit notes and refunds. A mixin: the book supplies its store, its
    clock, and the steps that read and lock an invoice and write a ledger entry."""

    _store: Store
    _clock: Callable[[], datetime]

    if TYPE_CHECKING:  # InvoiceBook's

        async def _locked(self, conn: AsyncConnection, invoice_id: str) -> Invoice: ...

        async def _read(self, conn: AsyncConnection, invoice_id: str) -> Invoice: ...

        async def _tell_ledger(
            self,
            conn: AsyncConnection,
            kind: str,
            invoice: Invoice,
            reference: str,
            amount: Money,
        ) -> None: ...

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

    async def credit_notes(self, invoice_id: str) -> list[CreditNote]:
        async with self._store.connect() as conn:
            rows = await conn.execute(
                select(credit_notes)
                .where(credit_notes.c.invoice_id == invoice_id)
                .order_by(credit_notes.c.created_at, credit_notes.c.id)
            )
            return [_credit_note(row) for row in rows.mappings()]

    async def refunds(self, invoice_id: str) -> list[Refund]:
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


# --- rows ----------------------------------------------------------------------------------------


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


# --- checks --------------------------------------------------------------------------------------


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

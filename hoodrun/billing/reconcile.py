"""Reconciliation: what each provider says an invoice totals, against the closing snapshot.

For every invoice sent in the last ``WINDOW`` (open or paid), the expected total is what the
closing snapshot says, carried through the invoice: the snapshot's content hash must still hold
(a snapshot edited behind HoodRun's back is a mismatch too), the invoice's original total must
be the snapshot's total, and the provider's total must be the invoice's total less the credit
notes already issued on it (within ``billing.reconcile_tolerance``). Each check is a row of
``reconciliations``.

A mismatch raises an alert (``HoodRunBillingMismatch`` in the alerts table, with the invoice,
org and both totals) and, when the provider asks for more than the snapshot, starts the credit
note flow: a credit note of the difference is recorded, issued at the provider (its id is the
idempotency key) and written to the ledger, so the next run matches and resolves the alert. A
provider total below the snapshot is not corrected automatically (it would mean charging more):
the alert stays until an operator acts.

``hoodrun_billing_reconciliation_match_ratio`` is the share of invoices checked by the last run
that matched (the seed's target: at least 99.9%).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import insert, select

from hoodrun.billing.close import verify_snapshot
from hoodrun.billing.invoices import Invoice
from hoodrun.billing.providers import ProviderRejected, ProviderUnavailable
from hoodrun.metering.money import Money
from hoodrun.ops.alerts import AlertBook, IncomingAlert
from hoodrun.store import new_id
from hoodrun.store.tables import closing_snapshots, invoices, reconciliations

if TYPE_CHECKING:
    from hoodrun.billing.service import Billing

__all__ = ["ALERT", "CORRECTION", "WINDOW", "ReconcileResult", "Reconciler"]

log = logging.getLogger("hoodrun.billing")

ALERT = "HoodRunBillingMismatch"
CORRECTION = "reconciliation: "
"""How the reason of a credit note made by reconciliation starts."""
WINDOW = timedelta(days=100)

MATCH_RATIO = Gauge(
    "hoodrun_billing_reconciliation_match_ratio",
    "Share of the invoices checked by the last reconciliation whose provider total matched.",
)
CHECKED = Counter(
    "hoodrun_billing_reconciliations_total",
    "Invoices checked by reconciliation, by result.",
    ["result"],
)


@dataclass
class ReconcileResult:
    checked: int = 0
    matched: int = 0
    mismatched: list[dict[str, Any]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    credit_notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return 1.0 if self.checked == 0 else self.matched / self.checked

    def summary(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "matched": self.matched,
            "ratio": round(self.ratio, 6),
            "mismatched": self.mismatched,
            "unreachable": self.unreachable,
            "credit_notes": self.credit_notes,
        }


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    def __init__(self, billing: Billing, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._billing = billing
        self._clock = clock
        self._alerts = AlertBook(billing.store, clock=lambda: self._clock().timestamp())

    async def run(self) -> ReconcileResult:
        """Check every invoice sent within ``WINDOW``; see the module docstring."""
        billing = self._billing
        since = self._clock() - WINDOW
        async with billing.store.connect() as conn:
            ids = (
                await conn.scalars(
                    select(invoices.c.id)
                    .where(invoices.c.status.in_(("open", "paid")))
                    .where(invoices.c.provider != "none")
                    .where(invoices.c.sent_at >= since)
                    .order_by(invoices.c.sent_at)
                )
            ).all()
        result = ReconcileResult()
        for invoice_id in ids:
            invoice = await billing.invoices.get(invoice_id)
            await self._check(invoice, result)
        if result.checked:
            MATCH_RATIO.set(result.ratio)
        return result

    async def _check(self, invoice: Invoice, result: ReconcileResult) -> None:
        billing = self._billing
        provider = billing.providers.get(invoice.provider)
        if provider is None or invoice.provider_id is None:
            return
        try:
            remote = await provider.fetch_invoice(invoice.provider_id)
        except (ProviderUnavailable, ProviderRejected) as exc:
            result.unreachable.append(invoice.number)
            log.warning("reconcile: %s of %s: %s", provider.name, invoice.number, exc)
            return
        problem = await self._snapshot_problem(invoice)
        notes = await billing.invoices.credit_notes(invoice.id)
        # Credit notes lower what is due, except reconciliation's own: those take back what the
        # provider added beyond the snapshot, so what is due stays the invoice's total.
        issued = sum(
            (
                n.amount.amount
                for n in notes
                if n.status == "issued" and not n.reason.startswith(CORRECTION)
            ),
            Decimal(0),
        )
        expected = invoice.total.amount
        if invoice.provider == "stripe":
            # Stripe lowers what is due by a credit note; Paraşüt issues a separate document.
            expected -= issued
        reported = remote.total
        tolerance = billing.config.billing.reconcile_tolerance
        if problem is None and abs(reported - expected) > tolerance:
            problem = f"{provider.name} says {reported} {invoice.currency}, expected {expected}"
        matched = problem is None
        result.checked += 1
        CHECKED.labels("match" if matched else "mismatch").inc()
        async with billing.store.transaction() as conn:
            await conn.execute(
                insert(reconciliations).values(
                    id=new_id("rec"),
                    invoice_id=invoice.id,
                    at=self._clock(),
                    expected=expected,
                    reported=reported,
                    matched=matched,
                    detail=(problem or "ok")[:512],
                )
            )
        if reported != (invoice.provider_total.amount if invoice.provider_total else None):
            await billing.invoices.record_provider_total(
                invoice.id, Money(reported, invoice.currency), remote.status
            )
        if matched:
            result.matched += 1
            await self._alert(invoice, "resolved", "")
            return
        result.mismatched.append(
            {"invoice": invoice.number, "expected": str(expected), "reported": str(reported)}
        )
        log.error("reconcile: invoice %s mismatch: %s", invoice.number, problem)
        await self._alert(invoice, "firing", problem or "")
        if reported > expected and not notes_pending(notes):
            note = await self._credit_note(invoice, reported - expected, problem or "")
            if note is not None:
                result.credit_notes.append(note)

    async def _snapshot_problem(self, invoice: Invoice) -> str | None:
        if invoice.snapshot_id is None:
            return None
        async with self._billing.store.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(closing_snapshots).where(
                            closing_snapshots.c.id == invoice.snapshot_id
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return f"the closing snapshot {invoice.snapshot_id} is gone"
        if not verify_snapshot(dict(row)):
            return f"the closing snapshot {invoice.snapshot_id} no longer matches its hash"
        original = invoice.original_total if invoice.original_total is not None else None
        snapshot_total = Decimal(row["total"])
        invoiced = original.amount if original is not None else invoice.gross.amount
        if invoiced != snapshot_total:
            return f"the invoice carries {invoiced}, its closing snapshot {snapshot_total}"
        return None

    async def _credit_note(self, invoice: Invoice, amount: Decimal, reason: str) -> str | None:
        billing = self._billing
        provider = billing.providers[invoice.provider]
        note = await billing.invoices.add_credit_note(
            invoice.id, Money(amount, invoice.currency), f"{CORRECTION}{reason}"[:256]
        )
        if invoice.provider_id is None:
            return None
        try:
            provider_id = await provider.credit_note(
                invoice.provider_id, amount, note.reason, key=note.id
            )
        except (ProviderUnavailable, ProviderRejected) as exc:
            log.warning("reconcile: credit note for %s not issued: %s", invoice.number, exc)
            return None
        await billing.invoices.mark_credit_note_issued(note.id, provider_id)
        return note.id

    async def _alert(self, invoice: Invoice, status: str, problem: str) -> None:
        now = self._clock()
        await self._alerts.receive(
            [
                IncomingAlert(
                    fingerprint=f"billing-{invoice.id}",
                    status="firing" if status == "firing" else "resolved",
                    labels={
                        "alertname": ALERT,
                        "severity": "critical",
                        "invoice": invoice.number,
                        "org_id": invoice.org_id,
                        "provider": invoice.provider,
                    },
                    annotations={
                        "summary": f"Invoice {invoice.number} does not reconcile",
                        "description": problem or "reconciled",
                    },
                    starts_at=now,
                    ends_at=None if status == "firing" else now,
                )
            ]
        )


def notes_pending(notes: list[Any]) -> bool:
    """A credit note recorded but not yet issued: issuing another would correct twice."""
    return any(n.status == "pending" for n in notes)

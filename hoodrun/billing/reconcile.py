"""Reconciliation: what each provider says an invoice totals, against the closing snapshot.

For every invoice sent in the last ``WINDOW`` (open or paid), the expected total is what the
closing snapshot says, carried through the invoice: the snapshot's content hash must still hold
(a snapshot edited behind HoodRun's back is a mismatch too); a converted invoice's original total
is the snapshot's total, another's subtotal is the snapshot's and its tax too (within half a minor
unit per taxed line, for tax computed line by line); and the provider's total equals the
invoice's (within ``billing.reconcile_tolerance``), net of the credit notes issued on it: Stripe's
total already is (every note lowers it, the customer's and reconciliation's corrections), so the
customer's notes are taken off what is expected; Paraşüt's is not (a note is a refund invoice of
its own), so the corrections are taken off what it says. Each check is a row of
``reconciliations``.

A mismatch raises an alert (``HoodRunBillingMismatch`` in the alerts table, with the invoice,
org and both totals; it keeps the time it first fired) and, when the provider asks more than the
snapshot of an invoice not paid yet, starts the credit note flow: a credit note of the
difference is recorded, issued at the provider (its id is the idempotency key; one recorded but
not issued is issued by the next run) and written to the ledger, so the next run matches and
resolves the alert. A paid invoice charged beyond its snapshot, or a provider total below the
snapshot, is not corrected automatically (a note would hide money taken; the other would mean
charging more): the alert stays until an operator acts.

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
from hoodrun.metering.money import Money, minor_units
from hoodrun.ops.alerts import AlertBook, IncomingAlert
from hoodrun.store import new_id
from hoodrun.store.tables import alerts, closing_snapshots, invoices, reconciliations

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
LAST_RUN = Gauge(
    "hoodrun_billing_reconciliation_last_run_timestamp_seconds",
    "When the last reconciliation ended (Unix time); with ``unreachable`` invoices it checked "
    "less than it should.",
)
UNREACHABLE = Gauge(
    "hoodrun_billing_reconciliation_unreachable",
    "Invoices the last reconciliation could not check (their provider did not answer).",
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
        if result.checked:  # a run that reached no provider says nothing of the match
            MATCH_RATIO.set(result.ratio)
        UNREACHABLE.set(len(result.unreachable))
        LAST_RUN.set(self._clock().timestamp())
        return result

    async def _check(self, invoice: Invoice, result: ReconcileResult) -> None:
        billing = self._billing
        provider = billing.providers.get(invoice.provider)
        if provider is None or invoice.provider_id is None:
            return
        try:
            await self._issue_pending(invoice)
            remote = await provider.fetch_invoice(invoice.provider_id)
        except (ProviderUnavailable, ProviderRejected) as exc:
            result.unreachable.append(invoice.number)
            log.warning("reconcile: %s of %s: %s", provider.name, invoice.number, exc)
            return
        problem = await self._snapshot_problem(invoice)
        notes = await billing.invoices.credit_notes(invoice.id)
        issued = [n for n in notes if n.status == "issued"]
        corrections = sum(
            (n.amount.amount for n in issued if n.reason.startswith(CORRECTION)), Decimal(0)
        )
        others = sum(
            (n.amount.amount for n in issued if not n.reason.startswith(CORRECTION)), Decimal(0)
        )
        expected = invoice.total.amount
        reported = remote.total
        if invoice.provider == "stripe":
            # Stripe's total is net of every credit note on the invoice: the customer's
            # (which lower what is due) and reconciliation's corrections alike.
            expected -= others
        else:
            # Paraşüt's invoice keeps its total; a credit note is a document of its own (an
            # refund invoice), so the corrections already made count against what it says.
            reported -= corrections
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
        if remote.total != (invoice.provider_total.amount if invoice.provider_total else None):
            await billing.invoices.record_provider_total(
                invoice.id, Money(remote.total, invoice.currency), remote.status
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
        if reported <= expected or notes_pending(notes):
            return
        if invoice.status == "paid" or remote.status == "paid":
            # Money was taken beyond the snapshot: a note would hide it, not pay it back. The
            # alert stays until an operator refunds the difference.
            log.error(
                "reconcile: paid invoice %s was charged %s %s beyond its snapshot: refund it",
                invoice.number, reported - expected, invoice.currency,
            )  # fmt: skip
            return
        note = await self._credit_note(invoice, reported - expected, problem or "")
        if note is not None:
            result.credit_notes.append(note)

    async def _issue_pending(self, invoice: Invoice) -> None:
        """Issue at the provider the corrections recorded but not issued (the provider or the
        worker failed in between): the note's id is the key, so one issued already is found."""
        billing = self._billing
        if invoice.provider_id is None:
            return
        for note in await billing.invoices.credit_notes(invoice.id):
            if note.status != "pending" or not note.reason.startswith(CORRECTION):
                continue
            provider = billing.providers[invoice.provider]
            provider_id = await provider.credit_note(
                invoice.provider_id, note.amount.amount, note.reason, key=note.id
            )
            await billing.invoices.mark_credit_note_issued(note.id, provider_id)

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
        if invoice.original_total is not None:  # converted: the original is the snapshot's
            if invoice.original_total.amount != Decimal(row["total"]):
                return (
                    f"the invoice was converted from {invoice.original_total.amount}, its "
                    f"closing snapshot totals {row['total']}"
                )
            return None
        if invoice.subtotal.amount != Decimal(row["subtotal"]):
            return (
                f"the invoice's subtotal is {invoice.subtotal.amount}, "
                f"its snapshot's {row['subtotal']}"
            )
        # Tax computed per line (Paraşüt) may differ from the snapshot's, rated on the subtotal,
        # by at most half a minor unit per taxed line.
        taxed = sum(1 for line in invoice.lines if line.kind != "tax" and line.tax_rate > 0)
        slack = Decimal(taxed) * Decimal(5) * Decimal(10) ** -(minor_units(invoice.currency) + 1)
        if abs(invoice.tax.amount - Decimal(row["tax"])) > slack:
            return f"the invoice's tax is {invoice.tax.amount}, its snapshot's {row['tax']}"
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
        """Fire (or keep firing, from when it first fired) or resolve the invoice's alert; an
        invoice that matches and never fired writes nothing."""
        fingerprint = f"billing-{invoice.id}"
        async with self._billing.store.connect() as conn:
            row = (
                await conn.execute(
                    select(alerts.c.status, alerts.c.starts_at).where(
                        alerts.c.fingerprint == fingerprint
                    )
                )
            ).first()
        firing = row is not None and row.status == "firing"
        if status == "resolved" and not firing:
            return
        now = self._clock()
        starts_at = row.starts_at if firing and row is not None else now
        await self._alerts.receive(
            [
                IncomingAlert(
                    fingerprint=fingerprint,
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
                    starts_at=starts_at,
                    ends_at=None if status == "firing" else now,
                )
            ]
        )


def notes_pending(notes: list[Any]) -> bool:
    """A credit note recorded but not yet issued: issuing another would correct twice."""
    return any(n.status == "pending" for n in notes)

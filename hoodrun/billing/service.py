"""The billing flow, as the worker's jobs run it: close a period, make and send its invoices,
collect payments, refund, reconcile, export the ledger.

::

    period-close {period}      closing snapshots (``PeriodCloser``), then one invoice-generate
                               job per snapshot
    invoice-generate {snapshot_id}
                               the invoice (``InvoiceBook``: numbered, converted to TL for
                               Turkey at the issue date's rate, credits spent) and its sending to
                               the org's provider: Paraşüt for Turkey, Stripe elsewhere
    payment-process {invoice_id}
                               charge (Stripe) or read (Paraşüt) the payment; paid → ledger
    refund-process {refund_id} pay back a refund recorded on a paid invoice
    subscription-renew {}      contracts that started since: the org's plan follows its contract
    report-generate {period}   a CSV of the period's invoices under ``data_dir/reports``
    fx-fetch, reconcile, ledger-export, billing-sweep
                               scheduled (``hoodrun.billing.jobs``)

Exactly once
    Every step can run again after a crash: the snapshot exists once per (org, period), the
    invoice once per snapshot, the provider's invoice once per number (the providers look it up
    before making one), credits are spent once per invoice number. A provider that cannot be
    reached leaves the invoice ``pending`` and the job retries with backoff; when its attempts
    run out, ``billing-sweep`` enqueues the sending again, so a pending invoice is sent once the
    provider is back. A provider that refuses the invoice (bad tax id, unknown currency) leaves
    it pending with the provider's message and the job dead: retrying cannot help until an
    operator fixes the data and retries it (``hoodrun jobs retry``).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.billing.close import PeriodCloser, closable
from hoodrun.billing.fx import FxError, FxRates
from hoodrun.billing.invoices import Invoice, InvoiceBook
from hoodrun.billing.ledger import Ledger
from hoodrun.billing.providers import (
    BillingProvider,
    CustomerInfo,
    ProviderRejected,
    ProviderUnavailable,
)
from hoodrun.billing.reconcile import Reconciler
from hoodrun.config import Config
from hoodrun.jobs import JobQueue, Permanent, Retry
from hoodrun.metering.money import Money
from hoodrun.metering.store import Contract, CreditBook
from hoodrun.store import Store, write_audit
from hoodrun.store.tables import billing_accounts, contracts, invoices, jobs, orgs
from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["Billing", "follow_remote", "open_providers", "provider_for"]

log = logging.getLogger("hoodrun.billing")

TURKEY = "TR"
_REPORT_COLUMNS = (
    "number", "org_id", "status", "currency", "subtotal", "tax", "credits", "total",
    "original_currency", "original_total", "fx_rate", "provider", "provider_id",
)  # fmt: skip


def _utc_now() -> datetime:
    return datetime.now(UTC)


def provider_for(config: Config, country: str | None) -> str:
    """Which provider invoices a customer of ``country``: Paraşüt for Turkey, Stripe elsewhere
    (``none`` when that provider is not enabled: the invoice is kept in HoodRun only)."""
    billing = config.billing
    if country == TURKEY:
        return "parasut" if billing.parasut.enabled else "none"
    return "stripe" if billing.stripe.enabled else "none"


def open_providers(config: Config) -> dict[str, BillingProvider]:
    """The enabled providers, by name (their SDKs are imported only when enabled)."""
    providers: dict[str, BillingProvider] = {}
    if config.billing.stripe.enabled:
        from hoodrun.billing.providers.stripe import StripeProvider

        providers["stripe"] = StripeProvider(config.billing.stripe)
    if config.billing.parasut.enabled:
        from hoodrun.billing.providers.parasut import ParasutProvider

        providers["parasut"] = ParasutProvider(config.billing.parasut)
    return providers


async def follow_remote(
    book: InvoiceBook, invoice: Invoice, status: str, total: Decimal | None = None
) -> Invoice:
    """Follow what the provider says of an issued invoice (the payment job, a webhook): its
    total as the provider has it, and paid, void or uncollectible. Saying it again changes
    nothing; an invoice not issued yet is left to its sending."""
    if invoice.status not in ("open", "paid"):
        return invoice
    if total is not None and (
        invoice.provider_total is None or invoice.provider_total.amount != total
    ):
        invoice = await book.record_provider_total(
            invoice.id, Money(total, invoice.currency), status
        )
    if invoice.status == "open":
        if status == "paid":
            return await book.mark_paid(invoice.id)
        if status == "void":
            return await book.mark_void(invoice.id)
        if status == "uncollectible":
            return await book.mark_uncollectible(invoice.id)
    return invoice


async def _live(conn: AsyncConnection, which: Any) -> bool:
    """Whether a job matching ``which`` is queued or running."""
    found = await conn.scalar(
        select(jobs.c.id).where(jobs.c.status.in_(("queued", "running"))).where(which).limit(1)
    )
    return found is not None


def _keyed(key: str) -> Any:
    """The jobs enqueued with idempotency key ``key`` or a slot of it (``{key}:{slot}``): the
    first enqueue's, and those of the sweep (``invoice-generate:{snapshot}:{hour}``,
    ``payment-process:{invoice}:{day}``)."""
    return (jobs.c.idempotency_key == key) | jobs.c.idempotency_key.startswith(f"{key}:")


@dataclass(frozen=True, slots=True)
class _Customer:
    contract: Contract
    info: CustomerInfo
    provider_ids: Mapping[str, str | None]


class Billing:
    """The billing service: one per worker process (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        queue: JobQueue,
        *,
        analytics: AnalyticsStore | None = None,
        providers: Mapping[str, BillingProvider] | None = None,
        fx: FxRates | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.config = config
        self.store = store
        self.queue = queue
        self.analytics = analytics
        self.providers = dict(providers) if providers is not None else {}
        self.clock = clock
        self.ledger = Ledger(store, clock=clock)
        self.invoices = InvoiceBook(store, config, clock=clock, ledger=self.ledger)
        self.credits = CreditBook(store, clock=clock)
        self.fx = fx if fx is not None else FxRates(store, config.billing.fx, clock=clock)
        self.reconciler = Reconciler(self, clock=clock)

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.fx.aclose()

    def provider(self, name: str) -> BillingProvider:
        found = self.providers.get(name)
        if found is None:
            raise Permanent(f"billing provider {name} is not enabled (billing.{name}.enabled)")
        return found

    # --- period close ------------------------------------------------------------------------

    async def close_period(self, period: str, *, actor: str = "worker") -> dict[str, Any]:
        """Close ``period`` and enqueue the sending of an invoice per snapshot."""
        if self.analytics is None:
            raise Permanent("closing a period needs the analytics store (telemetry.enabled)")
        closable(period, self.clock())
        closer = PeriodCloser(self.store, self.analytics, self.config, clock=self.clock)
        result = await closer.close(period, actor=actor)
        snapshots = await closer.snapshots(period)
        for snapshot in snapshots:
            await self.queue.enqueue(
                "invoice-generate",
                {"snapshot_id": snapshot.id},
                idempotency_key=f"invoice-generate:{snapshot.id}",
            )
        summary = result.summary()
        summary.pop("snapshots", None)
        summary["invoices_enqueued"] = len(snapshots)
        return summary

    # --- invoices ----------------------------------------------------------------------------

    async def generate_invoice(self, snapshot_id: str, job_id: str | None = None) -> Invoice:
        """Make the snapshot's invoice (once) and send it to its provider (once).

        One job at a time sends an invoice: a provider looks up the invoice it may have made
        before making one, and two senders at once could both find none. So while another
        ``invoice-generate`` job of the snapshot runs (``job_id`` is this one), this one waits.
        """
        if job_id is not None and await self.running_elsewhere(
            "invoice-generate", job_id, _keyed(f"invoice-generate:{snapshot_id}")
        ):
            raise Retry(f"another job is sending the invoice of snapshot {snapshot_id}")
        invoice = await self.invoices.for_snapshot(snapshot_id)
        if invoice is None:
            invoice = await self._make_invoice(snapshot_id)
        else:  # a retry: complete what a crash may have interrupted (credits)
            invoice = await self.invoices.create_from_snapshot(
                snapshot_id, provider=invoice.provider, credits=self._spend
            )
        return await self.send_invoice(invoice.id)

    async def running_elsewhere(self, kind: str, job_id: str, which: Any = None) -> bool:
        """Whether another job of ``kind`` (matching ``which``, if given) runs now: what must
        not run twice at once (a provider could be asked twice) waits for it."""
        stmt = (
            select(jobs.c.id)
            .where(jobs.c.kind == kind)
            .where(jobs.c.status == "running")
            .where(jobs.c.id != job_id)
        )
        if which is not None:
            stmt = stmt.where(which)
        async with self.store.connect() as conn:
            found = await conn.scalar(stmt.limit(1))
        return found is not None

    async def _make_invoice(self, snapshot_id: str) -> Invoice:
        contract, currency = await self._snapshot_contract(snapshot_id)
        provider = provider_for(self.config, contract.country)
        issue = self.clock().date()
        target = currency
        quote = None
        if contract.country == TURKEY and currency != self.config.billing.turkey_currency:
            target = self.config.billing.turkey_currency
            try:
                quote = await self.fx.quote(currency, target, issue)
            except FxError as exc:
                raise Retry(f"no {currency}/{target} rate for {issue}: {exc}") from exc
        return await self.invoices.create_from_snapshot(
            snapshot_id,
            provider=provider,
            currency=target,
            fx=quote,
            credits=self._spend,
            issue_date=issue,
        )

    async def _spend(self, org_id: str, amount: Money, reference: str) -> Money:
        spent = await self.credits.consume(org_id, amount, reason="invoice", reference=reference)
        return spent.spent

    async def _snapshot_contract(self, snapshot_id: str) -> tuple[Contract, str]:
        from hoodrun.store.tables import closing_snapshots

        async with self.store.connect() as conn:
            row = (
                await conn.execute(
                    select(closing_snapshots.c.contract_id, closing_snapshots.c.currency).where(
                        closing_snapshots.c.id == snapshot_id
                    )
                )
            ).first()
            if row is None:
                raise Permanent(f"no closing snapshot {snapshot_id}")
            found = (
                (await conn.execute(select(contracts).where(contracts.c.id == row.contract_id)))
                .mappings()
                .first()
            )
        if found is None:
            raise Permanent(f"snapshot {snapshot_id} names contract {row.contract_id}, not found")
        return Contract(**dict(found)), str(row.currency)

    async def send_invoice(self, invoice_id: str) -> Invoice:
        """Send a draft or pending invoice to its provider; an open one is left as it is."""
        invoice = await self.invoices.get(invoice_id)
        if invoice.status == "open":
            # Sent by an earlier run that may have died before it asked for the payment.
            await self._follow_payment(invoice)
            return invoice
        if invoice.status not in ("draft", "pending"):
            return invoice
        if invoice.provider == "none":
            log.info("invoice %s kept in HoodRun: no provider for its customer", invoice.number)
            return invoice
        provider = self.provider(invoice.provider)
        customer = await self._customer(invoice.org_id, invoice.snapshot_id)
        tax = self.config.taxes.get(customer.contract.country or "")
        draft = self.invoices.draft(
            invoice,
            tax_name=tax.name if tax is not None else "VAT",
            reverse_charge=tax is not None
            and tax.reverse_charge_b2b
            and customer.contract.terms.reverse_charge_eligible,
        )
        try:
            customer_id = await provider.ensure_customer(
                customer.info, customer.provider_ids.get(provider.name)
            )
            await self._remember_customer(invoice.org_id, provider.name, customer_id)
            remote = await provider.send_invoice(customer_id, draft)
        except ProviderUnavailable as exc:
            await self.invoices.mark_pending(invoice.id, f"{provider.name} unreachable: {exc}")
            raise Retry(f"{provider.name} unreachable: {exc}") from exc
        except ProviderRejected as exc:
            await self.invoices.mark_pending(invoice.id, f"{provider.name} refused: {exc}")
            raise Permanent(f"{provider.name} refused invoice {invoice.number}: {exc}") from exc
        sent = await self.invoices.mark_sent(
            invoice.id,
            remote.provider_id,
            remote.status,
            Money(remote.total, invoice.currency),
            remote.document_id,
        )
        await self._follow_payment(sent)
        return sent

    async def _follow_payment(self, invoice: Invoice, key: str | None = None) -> None:
        """The payment job of an open invoice (once per key: by default once per invoice)."""
        await self.queue.enqueue(
            "payment-process",
            {"invoice_id": invoice.id},
            idempotency_key=key or f"payment-process:{invoice.id}",
            run_at=self.clock() + timedelta(seconds=1),
        )

    async def _customer(self, org_id: str, snapshot_id: str | None) -> _Customer:
        async with self.store.connect() as conn:
            org = (await conn.execute(select(orgs.c.name).where(orgs.c.id == org_id))).first()
            account = (
                (
                    await conn.execute(
                        select(billing_accounts).where(billing_accounts.c.org_id == org_id)
                    )
                )
                .mappings()
                .first()
            )
        if org is None:
            raise Permanent(f"no org {org_id}")
        if snapshot_id is None:
            raise Permanent(f"org {org_id}: an invoice without a snapshot cannot be sent")
        contract, _ = await self._snapshot_contract(snapshot_id)
        info = CustomerInfo(
            org_id=org_id,
            name=(account["legal_name"] if account and account["legal_name"] else org.name),
            email=account["email"] if account else "",
            country=contract.country,
            tax_id=contract.tax_id,
            business=contract.business,
            address=account["address"] if account else "",
            city=account["city"] if account else "",
            district=account["district"] if account else "",
            tax_office=account["tax_office"] if account else "",
        )
        ids = {
            "stripe": account["stripe_customer_id"] if account else None,
            "parasut": account["parasut_contact_id"] if account else None,
        }
        return _Customer(contract, info, ids)

    async def _remember_customer(self, org_id: str, provider: str, customer_id: str) -> None:
        column = "stripe_customer_id" if provider == "stripe" else "parasut_contact_id"
        now = self.clock()
        async with self.store.transaction() as conn:
            found = (
                await conn.execute(
                    select(billing_accounts.c[column]).where(billing_accounts.c.org_id == org_id)
                )
            ).first()
            if found is None:
                name = await conn.scalar(select(orgs.c.name).where(orgs.c.id == org_id))
                await conn.execute(
                    billing_accounts.insert().values(
                        org_id=org_id,
                        legal_name=name or "",
                        email="",
                        address="",
                        city="",
                        district="",
                        tax_office="",
                        updated_at=now,
                        **{column: customer_id},
                    )
                )
            elif found[0] != customer_id:
                await conn.execute(
                    update(billing_accounts)
                    .where(billing_accounts.c.org_id == org_id)
                    .values(updated_at=now, **{column: customer_id})
                )

    # --- payments and refunds ----------------------------------------------------------------

    async def process_payment(self, invoice_id: str) -> Invoice:
        """Collect (Stripe: charge the default payment method) or read the payment of an open
        invoice. Not paid yet: retried with backoff; an invoice the provider voided or gave up
        on follows."""
        invoice = await self.invoices.get(invoice_id)
        if invoice.status != "open" or invoice.provider_id is None:
            return invoice
        provider = self.provider(invoice.provider)
        try:
            remote = await provider.collect_payment(invoice.provider_id)
        except ProviderUnavailable as exc:
            raise Retry(f"{provider.name} unreachable: {exc}") from exc
        except ProviderRejected as exc:  # a declined card: the customer pays later
            raise Retry(f"payment of {invoice.number} refused: {exc}", delay=3600) from exc
        followed = await follow_remote(self.invoices, invoice, remote.status, remote.total)
        if followed.status == "open":
            raise Retry(f"invoice {invoice.number} is not paid yet", delay=6 * 3600)
        return followed

    async def process_refund(self, refund_id: str) -> dict[str, Any]:
        """Pay back a refund recorded on a paid invoice, once (its id is the idempotency key)."""
        refund, invoice = await self._refund(refund_id)
        if refund.status == "succeeded":
            return {"refund": refund.id, "status": refund.status}
        if invoice.provider_id is None:
            raise Permanent(f"invoice {invoice.number} was never sent: nothing to refund")
        provider = self.provider(invoice.provider)
        try:
            provider_id = await provider.refund(
                invoice.provider_id, refund.amount.amount, refund.reason, key=refund.id
            )
        except ProviderUnavailable as exc:
            raise Retry(f"{provider.name} unreachable: {exc}") from exc
        except ProviderRejected as exc:
            # Failed, so it no longer holds room on the invoice for a corrected refund.
            await self.invoices.mark_refund_done(refund.id, "", succeeded=False)
            raise Permanent(f"refund {refund.id} refused: {exc}") from exc
        done = await self.invoices.mark_refund_done(refund.id, provider_id)
        return {"refund": done.id, "status": done.status, "provider_id": provider_id}

    async def _refund(self, refund_id: str) -> tuple[Any, Invoice]:
        from hoodrun.store.tables import refunds

        async with self.store.connect() as conn:
            invoice_id = await conn.scalar(
                select(refunds.c.invoice_id).where(refunds.c.id == refund_id)
            )
        if invoice_id is None:
            raise Permanent(f"no refund {refund_id}")
        for refund in await self.invoices.refunds(invoice_id):
            if refund.id == refund_id:
                return refund, await self.invoices.get(invoice_id)
        raise Permanent(f"no refund {refund_id}")

    # --- contracts ---------------------------------------------------------------------------

    async def renew(self) -> dict[str, Any]:
        """Make each org's plan the plan of its contract in force now (a contract dated in the
        future takes effect when it starts; an ended one with no successor leaves the plan)."""
        from hoodrun.keys.service import KeyService

        now = self.clock()
        async with self.store.connect() as conn:
            rows = (
                await conn.execute(
                    select(contracts.c.org_id, contracts.c.plan, orgs.c.plan.label("current"))
                    .join(orgs, orgs.c.id == contracts.c.org_id)
                    .where(contracts.c.starts_at <= now)
                    .where((contracts.c.ends_at.is_(None)) | (contracts.c.ends_at > now))
                )
            ).all()
        keys = KeyService(self.store, self.config, clock=self.clock)
        changed = []
        for row in rows:
            if row.plan != row.current and self.config.plan(row.plan) is not None:
                await keys.change_org_plan(row.org_id, row.plan, actor="subscription-renew")
                changed.append(row.org_id)
        return {"checked": len(rows), "changed": changed}

    # --- reports -----------------------------------------------------------------------------

    async def report(self, period: str) -> dict[str, Any]:
        """A CSV of the period's invoices (number, org, status, currency, amounts, provider) in
        ``data_dir/reports/invoices-{period}.csv``."""
        listed = await self.invoices.list(period=period, limit=1_000_000)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(_REPORT_COLUMNS)
        for inv in listed:
            writer.writerow(
                [
                    inv.number,
                    inv.org_id,
                    inv.status,
                    inv.currency,
                    inv.subtotal.amount,
                    inv.tax.amount,
                    inv.credits.amount,
                    inv.total.amount,
                    inv.original_currency or "",
                    inv.original_total.amount if inv.original_total is not None else "",
                    inv.fx_rate if inv.fx_rate is not None else "",
                    inv.provider,
                    inv.provider_id or "",
                ]
            )
        directory = self.config.data_dir / "reports"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"invoices-{period}.csv"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(buffer.getvalue())
        tmp.replace(path)
        return {"path": str(path), "invoices": len(listed)}

    # --- the sweep ---------------------------------------------------------------------------

    async def sweep(self) -> dict[str, Any]:
        """What jobs that gave up left behind:

        - invoices left draft or pending because the provider was down longer than their job's
          retries: their sending is enqueued again, once per hour slot, unless a sending job is
          still queued or running, or the provider refused the invoice (that waits for an
          operator: ``hoodrun jobs retry``);
        - open invoices whose payment job is over (its attempts ran out while the customer had
          not paid): a new one, once per day, so they are read until paid.
        """
        now = self.clock()
        hour, day = now.strftime("%Y%m%dT%H"), now.strftime("%Y%m%d")
        async with self.store.connect() as conn:
            unsent = (
                await conn.execute(
                    select(invoices.c.id, invoices.c.snapshot_id, invoices.c.last_error).where(
                        invoices.c.status.in_(("draft", "pending")),
                        invoices.c.provider != "none",
                    )
                )
            ).all()
            resend = []
            for row in unsent:
                if row.last_error and " refused: " in row.last_error:
                    continue
                if not await _live(conn, _keyed(f"invoice-generate:{row.snapshot_id}")):
                    resend.append(row)
            unpaid = (
                await conn.execute(
                    select(invoices.c.id).where(
                        invoices.c.status == "open", invoices.c.provider != "none"
                    )
                )
            ).all()
            follow = [
                row for row in unpaid if not await _live(conn, _keyed(f"payment-process:{row.id}"))
            ]
        for row in resend:
            await self.queue.enqueue(
                "invoice-generate",
                {"snapshot_id": row.snapshot_id},
                idempotency_key=f"invoice-generate:{row.snapshot_id}:{hour}",
            )
        for row in follow:
            await self.queue.enqueue(
                "payment-process",
                {"invoice_id": row.id},
                idempotency_key=f"payment-process:{row.id}:{day}",
            )
        return {"resent": len(resend), "payments_followed": len(follow)}

    async def audit(self, action: str, target: str, details: dict[str, Any]) -> None:
        async with self.store.transaction() as conn:
            await write_audit(
                conn,
                at=self.clock(),
                actor="worker",
                action=action,
                target_type="billing",
                target_id=target,
                details=details,
            )

    def yesterday(self) -> date:
        return (self.clock() - timedelta(days=1)).date()

"""Reconciliation and the sweep in process, on SQLite and PostgreSQL: ``Billing`` with the real
Stripe and Paraşüt providers pointed at the fakes, an injected clock, no worker.

A total raised at Paraşüt is corrected once by a refund invoice and then matches; a paid Stripe
invoice raised behind HoodRun's back keeps its alert without a note; Paraşüt's per-line KDV
rounding is no mismatch; a correction the provider failed to take is issued by the next run,
once; an open invoice that lost its payment job gets one back; the match-ratio gauge follows the
last run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, insert, select, update

from hoodrun.billing.close import snapshot_hash, verify_snapshot
from hoodrun.billing.invoices import Invoice
from hoodrun.billing.jobs import handlers
from hoodrun.billing.ledger import Ledger
from hoodrun.billing.providers import BillingProvider
from hoodrun.billing.providers.parasut import ParasutProvider
from hoodrun.billing.providers.stripe import StripeProvider
from hoodrun.billing.reconcile import ALERT
from hoodrun.billing.service import Billing
from hoodrun.config import Config
from hoodrun.jobs import JobQueue, Permanent, Retry
from hoodrun.metering.money import round_line
from hoodrun.metering.store import ContractBook
from hoodrun.ops.alerts import Alert, AlertBook
from hoodrun.store import Store, new_id
from hoodrun.store.tables import closing_snapshots, jobs, reconciliations
from tests._stores import FakeClock
from tests.billing.fake_parasut import CLIENT_SECRET, USER_PASSWORD, FakeParasut
from tests.billing.fake_stripe import API_KEY, FakeStripe
from tests.billing.test_invoices import make_org

pytest_plugins = ["tests.billing.stripe_servers"]

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
KDV = D("0.20")
VKN = "1234567890"  # no e-invoice inbox at the fake: an e-Arşiv
PLANS = [
    {"name": "free", "rate": {"rps": 10}},
    {"name": "pro", "rate": {"rps": 10}, "price": {"type": "FIXED", "fee": "49"}},
    {"name": "pro-tr", "rate": {"rps": 10}, "price": {"type": "FIXED", "currency": "TRY"}},
]

MakeBilling = Callable[..., Awaitable[Billing]]


async def _no_sleep(_: float) -> None:
    """Paraşüt's polls and rate limit, without waiting (the fake finishes jobs at once)."""


@pytest.fixture
def parasut() -> Iterator[FakeParasut]:
    with FakeParasut(job_polls=0) as fake:
        yield fake


@pytest.fixture
async def make_billing(
    database_url: str, fake_stripe: FakeStripe, parasut: FakeParasut
) -> AsyncIterator[MakeBilling]:
    """``Billing`` on the test's database and the fakes; ``collection_method`` is Stripe's."""
    async with AsyncExitStack() as stack:

        async def make(collection_method: str = "send_invoice") -> Billing:
            config = Config.model_validate(
                {
                    "plans": PLANS,
                    "taxes": {"TR": {"name": "KDV", "rate": str(KDV)}},
                    "billing": {
                        "stripe": {
                            "enabled": True,
                            "api_base": fake_stripe.url,
                            "api_key": API_KEY,
                            "collection_method": collection_method,
                        },
                        "parasut": {
                            "enabled": True,
                            "base_url": parasut.url,
                            "company_id": parasut.company_id,
                            "client_id": parasut.client_id,
                            "client_secret": CLIENT_SECRET,
                            "username": next(iter(parasut.users)),
                            "password": USER_PASSWORD,
                            "rate_limit": 1000,
                        },
                    },
                }
            )
            store = await stack.enter_async_context(Store(database_url))
            providers: dict[str, BillingProvider] = {
                # No SDK retries: a failure the fake injects once reaches HoodRun.
                "stripe": StripeProvider(config.billing.stripe, max_network_retries=0),
                "parasut": ParasutProvider(config.billing.parasut, sleep=_no_sleep),
            }
            billing = Billing(
                config, store, JobQueue(store), providers=providers, clock=FakeClock(NOW)
            )
            stack.push_async_callback(billing.aclose)
            return billing

        yield make


def charges(
    *amounts: str, tax_rate: D | None = None, currency: str = "USD"
) -> list[dict[str, Any]]:
    """Snapshot lines: one usage line per amount, and the tax rated once on their sum."""
    lines: list[dict[str, Any]] = [
        {"kind": "usage", "description": f"requests {n}", "quantity": "1",
         "unit_price": amount, "amount": amount, "per": "1"}
        for n, amount in enumerate(amounts, start=1)
    ]  # fmt: skip
    if tax_rate is not None:
        subtotal = sum((D(a) for a in amounts), D(0))
        tax = round_line(subtotal * tax_rate, currency)
        lines.append(
            {"kind": "tax", "description": "KDV 20%", "quantity": str(tax_rate),
             "unit_price": str(subtotal), "amount": str(tax), "per": "1",
             "tax_name": "KDV", "reverse_charge": False}
        )  # fmt: skip
    return lines


# Two lines of 10.03 TL at 20%: KDV 2.01 + 2.01 per line (Paraşüt's), 4.01 on the sum.
TRY_LINES = charges("10.03", "10.03", tax_rate=KDV, currency="TRY")


async def closed(billing: Billing, lines: list[dict[str, Any]], *, turkish: bool = False) -> str:
    """An org with a real contract and a November snapshot of ``lines`` with its real hash."""
    store = billing.store
    org = await make_org(store)
    plan, country, currency = ("pro-tr", "TR", "TRY") if turkish else ("pro", "US", "USD")
    contract = await ContractBook(store, billing.config, clock=billing.clock).create(
        org, plan, country=country, tax_id=VKN if turkish else None, business=True,
        starts_at=NOVEMBER,
    )  # fmt: skip
    subtotal = sum((D(x["amount"]) for x in lines if x["kind"] == "usage"), D(0))
    tax = sum((D(x["amount"]) for x in lines if x["kind"] == "tax"), D(0))
    values: dict[str, Any] = {
        "id": new_id("snap"), "org_id": org, "period": "2026-11", "period_start": NOVEMBER,
        "period_end": datetime(2026, 12, 1, tzinfo=UTC), "contract_id": contract.id,
        "plan": plan, "currency": currency, "usage": [], "late_usage": [], "lines": lines,
        "subtotal": subtotal, "tax": tax, "credits": D(0), "total": subtotal + tax,
        "closed_at": NOW - timedelta(hours=1),
    }  # fmt: skip
    values["content_hash"] = snapshot_hash(values)
    async with store.transaction() as conn:
        await conn.execute(insert(closing_snapshots).values(**values))
    async with store.connect() as conn:
        stored = (
            await conn.execute(
                select(closing_snapshots).where(closing_snapshots.c.id == values["id"])
            )
        ).mappings()
        assert verify_snapshot(dict(stored.one()))  # as the database hands it back
    return str(values["id"])


async def invoiced(billing: Billing, lines: list[dict[str, Any]], **options: bool) -> Invoice:
    invoice = await billing.generate_invoice(await closed(billing, lines, **options))
    assert invoice.status == "open" and invoice.provider_id is not None
    return invoice


def later(billing: Billing, *, hours: int) -> None:
    """The next reconcile runs ``hours`` later (Billing's and the reconciler's shared clock)."""
    assert isinstance(billing.clock, FakeClock)
    billing.clock.advance(timedelta(hours=hours))


async def mismatch_alerts(store: Store) -> list[Alert]:
    return [a for a in await AlertBook(store).recent() if a.name == ALERT]


async def ledger_kinds(store: Store, kind: str) -> list[D]:
    return [e.amount.amount for e in await Ledger(store).entries() if e.kind == kind]


def parasut_refunds(fake: FakeParasut) -> list[dict[str, Any]]:
    found = [fake.invoice(i) for i in fake.invoices]
    return [a for a in found if a["item_type"] == "refund"]


async def checks(store: Store, invoice_id: str) -> list[bool]:
    async with store.connect() as conn:
        rows = await conn.execute(
            select(reconciliations.c.matched)
            .where(reconciliations.c.invoice_id == invoice_id)
            .order_by(reconciliations.c.at)
        )
        return [bool(row.matched) for row in rows]


# --- corrections -----------------------------------------------------------------------------


async def test_a_total_raised_at_parasut_is_corrected_once_then_matches(
    make_billing: MakeBilling, parasut: FakeParasut
) -> None:
    billing = await make_billing()
    invoice = await invoiced(billing, TRY_LINES, turkish=True)
    assert (invoice.currency, invoice.total.amount) == ("TRY", D("24.08"))
    parasut.mutate_invoice(str(invoice.provider_id), net_total=D("30.08"))

    first = await billing.reconciler.run()
    assert (first.checked, first.matched, len(first.credit_notes)) == (1, 0, 1)
    assert first.mismatched == [
        {"invoice": invoice.number, "expected": "24.08", "reported": "30.08"}
    ]
    [refund] = parasut_refunds(parasut)
    assert refund["net_total"] == D("6.00")
    [note] = await billing.invoices.credit_notes(invoice.id)
    assert (note.status, note.amount.amount) == ("issued", D("6.00"))
    assert note.provider_id is not None and parasut.invoice(note.provider_id) == refund
    assert await ledger_kinds(billing.store, "credit_note.issued") == [D("6.00")]
    [alert] = await mismatch_alerts(billing.store)
    assert alert.status == "firing" and alert.labels["invoice"] == invoice.number

    later(billing, hours=1)
    second = await billing.reconciler.run()
    assert (second.checked, second.matched, second.credit_notes) == (1, 1, [])
    assert len(parasut_refunds(parasut)) == 1
    assert len(await billing.invoices.credit_notes(invoice.id)) == 1
    assert await ledger_kinds(billing.store, "credit_note.issued") == [D("6.00")]
    [alert] = await mismatch_alerts(billing.store)
    assert alert.status == "resolved" and alert.ends_at == NOW + timedelta(hours=1)
    assert await checks(billing.store, invoice.id) == [False, True]


async def test_a_paid_stripe_invoice_raised_at_stripe_keeps_its_alert_without_a_note(
    make_billing: MakeBilling, fake_stripe: FakeStripe
) -> None:
    billing = await make_billing("charge_automatically")
    invoice = await invoiced(billing, charges("49.00"))
    paid = await billing.process_payment(invoice.id)
    assert paid.status == "paid"
    assert fake_stripe.invoice(str(invoice.provider_id))["status"] == "paid"
    fake_stripe.adjust(str(invoice.provider_id), 500, "Manual adjustment")

    first = await billing.reconciler.run()
    assert (first.checked, first.matched, first.credit_notes) == (1, 0, [])
    assert first.mismatched[0]["reported"] == "54.00"
    [alert] = await mismatch_alerts(billing.store)
    assert alert.status == "firing" and alert.starts_at == NOW

    later(billing, hours=2)
    second = await billing.reconciler.run()
    assert (second.matched, second.credit_notes) == (0, [])
    [alert] = await mismatch_alerts(billing.store)
    assert alert.status == "firing" and alert.starts_at == NOW
    assert alert.updated_at == NOW + timedelta(hours=2)  # the second run did fire it again
    assert await billing.invoices.credit_notes(invoice.id) == []
    assert fake_stripe.credit_notes == {}
    assert await ledger_kinds(billing.store, "credit_note.issued") == []
    assert await checks(billing.store, invoice.id) == [False, False]


async def test_an_invoice_paid_at_the_provider_before_hoodrun_knows_gets_no_note(
    make_billing: MakeBilling, fake_stripe: FakeStripe
) -> None:
    billing = await make_billing()  # send_invoice: the customer pays from Stripe's invoice
    invoice = await invoiced(billing, charges("49.00"))
    fake_stripe.adjust(str(invoice.provider_id), 500)
    async with httpx.AsyncClient(base_url=fake_stripe.url) as client:
        paid = await client.post(
            f"/v1/invoices/{invoice.provider_id}/pay",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert paid.json()["amount_paid"] == 5400  # 5.00 beyond the snapshot, taken
    assert (await billing.invoices.get(invoice.id)).status == "open"  # no webhook yet

    result = await billing.reconciler.run()
    assert result.mismatched and result.credit_notes == []
    assert fake_stripe.credit_notes == {}


async def test_per_line_kdv_rounding_at_parasut_is_no_mismatch(
    make_billing: MakeBilling, parasut: FakeParasut
) -> None:
    billing = await make_billing()
    assert TRY_LINES[-1]["amount"] == "4.01"  # the snapshot's KDV, rated once on 20.06
    invoice = await invoiced(billing, TRY_LINES, turkish=True)
    assert invoice.original_total is None  # TRY to TRY: not converted
    assert (invoice.tax.amount, invoice.total.amount) == (D("4.02"), D("24.08"))
    assert parasut.invoice(str(invoice.provider_id))["net_total"] == D("24.08")

    result = await billing.reconciler.run()
    assert (result.checked, result.matched, result.mismatched) == (1, 1, [])
    assert await checks(billing.store, invoice.id) == [True]
    assert await mismatch_alerts(billing.store) == []
    assert parasut_refunds(parasut) == []


@pytest.mark.parametrize("provider", ["stripe", "parasut"])
async def test_a_correction_left_pending_is_issued_by_the_next_run_once(
    make_billing: MakeBilling, fake_stripe: FakeStripe, parasut: FakeParasut, provider: str
) -> None:
    billing = await make_billing()
    if provider == "stripe":
        invoice = await invoiced(billing, charges("49.00"))
        fake_stripe.adjust(str(invoice.provider_id), 500)
        fake_stripe.fail(1, method="POST", path="/v1/credit_notes")  # refused before the work

        def made() -> int:
            return len(fake_stripe.credit_notes)
    else:
        invoice = await invoiced(billing, TRY_LINES, turkish=True)
        parasut.mutate_invoice(str(invoice.provider_id), net_total=D("30.08"))
        # The refund invoice is made, its answer lost on the way back.
        parasut.fail_next("POST", "sales_invoices", after=True)

        def made() -> int:
            return len(parasut_refunds(parasut))

    first = await billing.reconciler.run()
    assert (first.matched, first.credit_notes) == (0, [])
    [note] = await billing.invoices.credit_notes(invoice.id)
    assert note.status == "pending" and note.provider_id is None
    assert await ledger_kinds(billing.store, "credit_note.issued") == []

    later(billing, hours=1)
    second = await billing.reconciler.run()
    assert (second.checked, second.matched, second.credit_notes) == (1, 1, [])
    [issued] = await billing.invoices.credit_notes(invoice.id)
    assert issued.id == note.id and issued.status == "issued" and issued.provider_id
    assert made() == 1
    assert len(await ledger_kinds(billing.store, "credit_note.issued")) == 1
    [alert] = await mismatch_alerts(billing.store)
    assert alert.status == "resolved"

    third = await billing.reconciler.run()
    assert (third.matched, third.credit_notes) == (1, [])
    assert made() == 1


# --- lost payment jobs and the sweep ---------------------------------------------------------


async def test_an_open_invoice_whose_payment_job_vanished_gets_one_again(
    make_billing: MakeBilling,
) -> None:
    billing = await make_billing()
    snapshot = await closed(billing, charges("49.00"))
    invoice = await billing.generate_invoice(snapshot)
    key = f"payment-process:{invoice.id}"
    assert await billing.queue.by_key(key) is not None
    async with billing.store.transaction() as conn:  # a crash before the enqueue
        await conn.execute(delete(jobs).where(jobs.c.idempotency_key == key))

    again = await billing.generate_invoice(snapshot)
    assert (again.id, again.status) == (invoice.id, "open")
    job = await billing.queue.by_key(key)
    assert job is not None and job.kind == "payment-process" and job.status == "queued"
    assert job.payload == {"invoice_id": invoice.id}


async def test_the_sweep_resends_what_can_be_sent_and_follows_unpaid_invoices(
    make_billing: MakeBilling, fake_stripe: FakeStripe
) -> None:
    billing = await make_billing()
    queue = billing.queue

    refused = await closed(billing, charges("10.00"))
    fake_stripe.fail(1, method="POST", path="/v1/customers", status=400)
    with pytest.raises(Permanent):
        await billing.generate_invoice(refused)

    unsent, waiting = (
        await closed(billing, charges("11.00")),
        await closed(billing, charges("12.00")),
    )
    fake_stripe.down()
    for snapshot in (unsent, waiting):
        with pytest.raises(Retry):
            await billing.generate_invoice(snapshot)
    fake_stripe.up()
    errors = {}
    for snapshot in (refused, unsent, waiting):
        invoice = await billing.invoices.for_snapshot(snapshot)
        assert invoice is not None and invoice.status == "pending"
        errors[snapshot] = str(invoice.last_error)
    assert " refused: " in errors[refused] and "unreachable" in errors[unsent]
    live = await queue.enqueue(
        "invoice-generate", {"snapshot_id": waiting}, idempotency_key=f"invoice-generate:{waiting}"
    )

    unpaid = await billing.generate_invoice(await closed(billing, charges("13.00")))
    followed = await billing.generate_invoice(await closed(billing, charges("14.00")))
    async with billing.store.transaction() as conn:  # its attempts ran out
        await conn.execute(
            update(jobs)
            .where(jobs.c.idempotency_key == f"payment-process:{unpaid.id}")
            .values(status="dead")
        )

    assert await billing.sweep() == {"resent": 1, "payments_followed": 1}
    resend = await queue.by_key(f"invoice-generate:{unsent}:20261202T03")
    assert resend is not None and resend.payload == {"snapshot_id": unsent}
    payment = await queue.by_key(f"payment-process:{unpaid.id}:20261202")
    assert payment is not None and payment.payload == {"invoice_id": unpaid.id}
    async with billing.store.connect() as conn:
        keys = set(await conn.scalars(select(jobs.c.idempotency_key)))
    assert not [k for k in keys if k.startswith(f"invoice-generate:{refused}")]
    assert [k for k in keys if k.startswith(f"invoice-generate:{waiting}")] == [
        live.idempotency_key
    ]
    assert f"payment-process:{followed.id}:20261202" not in keys

    # What it enqueued is live now: sweeping again in the same hour adds nothing.
    assert await billing.sweep() == {"resent": 0, "payments_followed": 0}


# --- the gauge -------------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_the_match_ratio_gauge_is_the_last_runs(
    make_billing: MakeBilling, fake_stripe: FakeStripe
) -> None:
    billing = await make_billing()
    raised = await invoiced(billing, charges("49.00"))
    await invoiced(billing, charges("20.00"))
    fake_stripe.adjust(str(raised.provider_id), 250)
    before = sample("hoodrun_billing_reconciliations_total", result="mismatch")

    first = await billing.reconciler.run()
    assert (first.checked, first.matched, len(first.credit_notes)) == (2, 1, 1)
    assert sample("hoodrun_billing_reconciliation_match_ratio") == 0.5
    assert sample("hoodrun_billing_reconciliations_total", result="mismatch") == before + 1

    second = await billing.reconciler.run()
    assert (second.checked, second.matched) == (2, 2)
    assert sample("hoodrun_billing_reconciliation_match_ratio") == 1.0
    assert sample("hoodrun_billing_reconciliations_total", result="mismatch") == before + 1
    assert fake_stripe.invoice(str(raised.provider_id))["amount_due"] == 4900


async def test_two_reconciliations_never_run_at_once(make_billing: MakeBilling) -> None:
    billing = await make_billing()
    first = await billing.queue.enqueue("reconcile", {"run": 1})
    second = await billing.queue.enqueue("reconcile", {"run": 2})
    [running] = await billing.queue.claim("w1", kinds=["reconcile"])
    [waiting] = await billing.queue.claim("w2", kinds=["reconcile"])
    assert {running.id, waiting.id} == {first.id, second.id}
    reconcile = handlers(billing)["reconcile"]

    with pytest.raises(Retry, match="another reconciliation is running"):
        await reconcile(waiting)

    await billing.queue.complete(running, "w1")
    assert (await reconcile(waiting))["checked"] == 0

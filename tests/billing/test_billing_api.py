"""The admin API's billing routes that start jobs (period closes, refunds) and Stripe's webhook, in
process (ASGI) over the real store on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.billing.invoices import Invoice, InvoiceBook
from hoodrun.billing.ledger import Ledger
from hoodrun.config import Config
from hoodrun.jobs import JobQueue
from hoodrun.keys.service import KeyService
from hoodrun.metering.money import Money
from hoodrun.store import Store
from tests._stores import FakeClock
from tests.billing.fake_stripe import sign_webhook
from tests.billing.test_invoices import make_org, make_snapshot

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "whsec_test_hoodrun"
CONFIG = Config.model_validate(
    {"billing": {"stripe": {"enabled": True, "api_key": "sk_test_x", "webhook_secret": SECRET}}}
)
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
WEBHOOK = "/billing/v1/stripe/webhook"


@dataclass
class Api:
    http: httpx.AsyncClient
    book: InvoiceBook
    queue: JobQueue
    ledger: Ledger
    store: Store


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    clock = FakeClock(NOW)
    ledger = Ledger(store, clock=clock)
    book = InvoiceBook(store, CONFIG, clock=clock, ledger=ledger)
    queue = JobQueue(store, clock=clock)
    app = create_api_app(CONFIG, KeyService(store, CONFIG), token=TOKEN, billing=(book, queue))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield Api(http, book, queue, ledger, store)


async def _invoice(api: Api, *, status: str = "paid") -> Invoice:
    """An invoice of 54.13 USD: a draft, open as Stripe's ``in_...``, or paid."""
    org = await make_org(api.store)
    invoice = await api.book.create_from_snapshot(
        await make_snapshot(api.store, org), provider="stripe"
    )
    if status in ("open", "paid"):
        invoice = await api.book.mark_sent(
            invoice.id, f"in_{invoice.id[4:]}", "open", invoice.total
        )
    if status == "paid":
        invoice = await api.book.mark_paid(invoice.id)
    assert invoice.status == status
    return invoice


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


# --- period closes -------------------------------------------------------------------------------


async def test_a_close_is_one_job_per_period(api: Api) -> None:
    first = await api.http.post("/admin/v1/billing/close", json={"period": "2026-10"}, headers=AUTH)
    assert first.status_code == 202, first.text
    job = first.json()
    assert (job["kind"], job["status"], job["payload"]) == (
        "period-close",
        "queued",
        {"period": "2026-10"},
    )
    again = await api.http.post("/admin/v1/billing/close", json={"period": "2026-10"}, headers=AUTH)
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    other = await api.http.post("/admin/v1/billing/close", json={"period": "2026-09"}, headers=AUTH)
    assert other.status_code == 202 and other.json()["id"] != job["id"]

    stored = await api.queue.get(job["id"])
    assert stored is not None and stored.idempotency_key == "period-close:2026-10"
    assert [j.kind for j in await api.queue.list()] == ["period-close", "period-close"]


@pytest.mark.parametrize("period", ["2026-13", "2026-1", "26-10", "1969-12", "october"])
async def test_a_bad_period_is_400(api: Api, period: str) -> None:
    response = await api.http.post("/admin/v1/billing/close", json={"period": period}, headers=AUTH)
    assert "YYYY-MM" in _error(response, 400, "invalid_period")
    assert await api.queue.list() == []


async def test_a_period_not_over_is_400_not_a_job_that_dies(api: Api) -> None:
    # The worker's close refuses a month that has not ended; a job for it would fail until dead
    # and hold the period's key, so the close asked for once the month ends would be that job.
    response = await api.http.post(
        "/admin/v1/billing/close", json={"period": "2999-01"}, headers=AUTH
    )
    assert "cannot be closed before" in _error(response, 400, "period_not_ended")
    assert await api.queue.list() == []


async def test_the_routes_need_the_token(api: Api) -> None:
    invoice = await _invoice(api)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("/admin/v1/billing/close", {"period": "2026-10"}),
        (f"/admin/v1/invoices/{invoice.id}/refunds", {"amount": "1.00", "reason": "x"}),
    ]
    for path, body in calls:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await api.http.post(path, json=body, headers=headers)
            _error(response, 401, "unauthorized")
    assert await api.queue.list() == [] and await api.book.refunds(invoice.id) == []


# --- refunds -------------------------------------------------------------------------------------


async def test_a_refund_of_a_paid_invoice_is_a_job(api: Api) -> None:
    invoice = await _invoice(api)
    response = await api.http.post(
        f"/admin/v1/invoices/{invoice.id}/refunds",
        json={"amount": "12.34", "reason": "outage on the 3rd"},
        headers=AUTH,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    [refund] = await api.book.refunds(invoice.id)
    assert refund.amount == Money.of("12.34", "USD") and refund.status == "pending"
    assert (job["kind"], job["payload"]) == ("refund-process", {"refund_id": refund.id})
    stored = await api.queue.get(job["id"])
    assert stored is not None and stored.idempotency_key == f"refund-process:{refund.id}"

    # The rest of the total can be refunded; a cent more cannot.
    over = await api.http.post(
        f"/admin/v1/invoices/{invoice.id}/refunds",
        json={"amount": "41.80", "reason": "more"},
        headers=AUTH,
    )
    assert "more than its total of 54.13 USD" in _error(over, 400, "refund_refused")
    assert len(await api.book.refunds(invoice.id)) == 1


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        ("open", {"amount": "1.00", "reason": "x"}, "is open: a refund needs it paid"),
        ("draft", {"amount": "1.00", "reason": "x"}, "is draft: a refund needs it paid"),
        ("paid", {"amount": "0.001", "reason": "x"}, "a positive amount in whole minor units"),
        ("paid", {"amount": "-1", "reason": "x"}, "a positive amount"),
        ("paid", {"amount": "ten", "reason": "x"}, ""),
        ("paid", {"amount": "1.00", "reason": " "}, "needs a reason"),
    ],
)
async def test_a_refund_that_does_not_fit_is_refused(
    api: Api, status: str, body: dict[str, str], message: str
) -> None:
    invoice = await _invoice(api, status=status)
    response = await api.http.post(
        f"/admin/v1/invoices/{invoice.id}/refunds", json=body, headers=AUTH
    )
    assert message in _error(response, 400, "refund_refused")
    assert await api.book.refunds(invoice.id) == [] and await api.queue.list() == []


async def test_a_refund_of_no_invoice_is_404(api: Api) -> None:
    response = await api.http.post(
        "/admin/v1/invoices/inv_nope/refunds", json={"amount": "1", "reason": "x"}, headers=AUTH
    )
    _error(response, 404, "invoice_not_found")


# --- Stripe's webhook ----------------------------------------------------------------------------


def _event(type: str, invoice: Invoice, *, number: str | None = None, total: int = 5413) -> bytes:
    """A Stripe event carrying the invoice as Stripe has it (amounts in cents)."""
    body = {
        "id": "evt_test_1",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(time.time()),
        "livemode": False,
        "type": type,
        "data": {
            "object": {
                "id": invoice.provider_id,
                "object": "invoice",
                "currency": invoice.currency.lower(),
                "status": "paid" if type == "invoice.paid" else "open",
                "total": total,
                "amount_due": total,
                "amount_paid": total if type == "invoice.paid" else 0,
                "metadata": {"hoodrun_number": number or invoice.number},
            }
        },
    }
    return json.dumps(body).encode()


async def _deliver(api: Api, payload: bytes, signature: str | None = None) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "Stripe-Signature": signature or sign_webhook(payload, SECRET),
    }
    return await api.http.post(WEBHOOK, content=payload, headers=headers)


async def test_invoice_paid_marks_our_invoice_paid_once(api: Api) -> None:
    invoice = await _invoice(api, status="open")
    payload = _event("invoice.paid", invoice)
    for _ in range(2):  # Stripe delivers at least once
        response = await _deliver(api, payload)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "applied": True, "status": "paid"}
    paid = await api.book.get(invoice.id)
    assert paid.status == "paid" and paid.paid_at == NOW
    entries = await api.ledger.entries(org_id=invoice.org_id)
    assert [(e.kind, e.reference, e.amount) for e in entries] == [
        ("invoice.issued", invoice.id, Money.of("54.13", "USD")),
        ("payment.received", invoice.id, Money.of("54.13", "USD")),
    ]


async def test_stripes_total_is_recorded_when_it_differs(api: Api) -> None:
    invoice = await _invoice(api, status="open")
    response = await _deliver(api, _event("invoice.paid", invoice, total=5000))
    assert response.json()["applied"] is True
    paid = await api.book.get(invoice.id)
    assert paid.status == "paid" and paid.provider_total == Money.of("50.00", "USD")


async def test_a_bad_signature_is_400(api: Api) -> None:
    invoice = await _invoice(api, status="open")
    payload = _event("invoice.paid", invoice)
    cases = [
        sign_webhook(payload, "whsec_someone_else"),
        sign_webhook(payload + b" ", SECRET).replace("v1=", "v1=0"),
        sign_webhook(payload, SECRET, timestamp=int(time.time()) - 3600),  # replayed
        "t=1,v1=nothing",
    ]
    for signature in cases:
        response = await _deliver(api, payload, signature)
        assert "invalid signature" in _error(response, 400, "invalid_signature")
    missing = await api.http.post(WEBHOOK, content=payload)
    _error(missing, 400, "invalid_signature")
    assert (await api.book.get(invoice.id)).status == "open"


async def test_an_event_for_an_invoice_we_do_not_have_is_not_applied(api: Api) -> None:
    invoice = await _invoice(api, status="open")
    unknown = await _deliver(api, _event("invoice.paid", invoice, number="HR-2026-999999"))
    assert unknown.status_code == 200 and unknown.json() == {"received": True, "applied": False}

    # Our number on another Stripe invoice (not the one we sent) changes nothing either.
    stranger = Invoice(**{**_fields(invoice), "provider_id": "in_someone_else"})
    other = await _deliver(api, _event("invoice.paid", stranger))
    assert other.json() == {"received": True, "applied": False}

    # Other event types are received and ignored.
    ignored = json.dumps(
        {"id": "evt_2", "object": "event", "type": "customer.created", "data": {"object": {}}}
    ).encode()
    response = await _deliver(api, ignored)
    assert response.status_code == 200 and response.json()["applied"] is False
    assert (await api.book.get(invoice.id)).status == "open"
    assert [e.kind for e in await api.ledger.entries()] == ["invoice.issued"]


def _fields(invoice: Invoice) -> dict[str, Any]:
    return {name: getattr(invoice, name) for name in Invoice.__dataclass_fields__}


async def test_without_a_webhook_secret_there_is_no_webhook(store: Store) -> None:
    config = Config.model_validate({"billing": {"stripe": {"enabled": True}}})
    billing = (InvoiceBook(store, config), JobQueue(store))
    app = create_api_app(config, KeyService(store, config), token=TOKEN, billing=billing)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        response = await http.post(WEBHOOK, content=b"{}")
    _error(response, 404, "not_found")

"""Webhooks end to end on SQLite and PostgreSQL: events emitted in the transactions of their
changes, delivered by the job worker to a real HTTP receiver, signed, retried, logged, replayed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from hoodrun.api.app import create_api_app
from hoodrun.billing.invoices import InvoiceBook
from hoodrun.config import Config, load_config
from hoodrun.jobs import JobQueue, Worker
from hoodrun.keys.service import KeyService
from hoodrun.metering.money import Money
from hoodrun.metering.store import CreditBook
from hoodrun.store import Store
from hoodrun.store.tables import jobs, webhook_deliveries
from hoodrun.webhooks import (
    InvalidEndpoint,
    InvalidSignature,
    NotReplayable,
    WebhookBook,
    handlers,
    sign,
    verify_signature,
)
from tests._stores import FakeClock
from tests.billing.test_invoices import make_snapshot
from tests.webhooks.receiver import Receiver, serve_receiver

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "hoodrun.example.yaml", env={})


@pytest.fixture
def book(store: Store, clock: FakeClock) -> WebhookBook:
    return WebhookBook(store, clock=clock)


@pytest.fixture
def keys(store: Store, config: Config, clock: FakeClock, book: WebhookBook) -> KeyService:
    return KeyService(store, config, clock=clock, webhooks=book)


@pytest.fixture
async def run_jobs(store: Store, clock: FakeClock, book: WebhookBook) -> AsyncIterator[Any]:
    """``await run_jobs()``: one worker burst, then the clock moves past the backoff (1 s)."""
    queue = JobQueue(store, clock=clock, backoff_base=1.0, backoff_cap=1.0)
    async with httpx.AsyncClient() as client:
        worker = Worker(queue, handlers(book, client), clock=clock)

        async def burst() -> int:
            result = await worker.burst()
            clock.advance(timedelta(seconds=2))
            return result.total

        yield burst


def check_signed(receiver: Receiver, secret: str, clock: FakeClock) -> None:
    for request in receiver.received:
        stamp = int(request.headers["HoodRun-Signature"].split(",")[0][2:])
        verify_signature(secret, request.headers["HoodRun-Signature"], request.body, now=stamp)
        payload = json.loads(request.body)
        assert request.headers["HoodRun-Event"] == payload["type"]


async def test_each_event_arrives_once_signed_after_the_receiver_was_down(
    store: Store, keys: KeyService, book: WebhookBook, run_jobs: Any, clock: FakeClock
) -> None:
    first = await keys.create(org="acme", project="web", actor="test")
    org = first.record.org_id
    with serve_receiver(503, 503, 503, 500) as receiver:
        endpoint = await book.create_endpoint(org, receiver.url, ["key.created", "key.revoked"])
        other = await book.create_endpoint(org, receiver.url, ["invoice.paid"])
        made = await keys.create(org="acme", project="web", actor="test")
        await keys.revoke(made.id, actor="test")
        await keys.revoke(made.id, actor="test")  # already revoked: no second event
        for _ in range(8):
            await run_jobs()
        delivered = receiver.delivered()
        ids = [r.headers["HoodRun-Delivery"] for r in delivered]
        assert len(ids) == len(set(ids)) == 2
        types = sorted(json.loads(r.body)["type"] for r in delivered)  # sent concurrently
        assert types == ["key.created", "key.revoked"]
        # The retries carried the same delivery id and body as the one that got through.
        by_id: dict[str, set[bytes]] = {}
        for request in receiver.received:
            by_id.setdefault(request.headers["HoodRun-Delivery"], set()).add(request.body)
        assert sorted(by_id) == sorted(ids) and all(len(b) == 1 for b in by_id.values())
        assert len(receiver.received) == 6
        check_signed(receiver, endpoint.secret, clock)
        with pytest.raises(InvalidSignature):
            check_signed(receiver, other.secret, clock)
    created = next(json.loads(r.body) for r in delivered if b"key.created" in r.body)
    assert created["org_id"] == org and created["data"]["key_id"] == made.id
    log = await book.deliveries(endpoint.id)
    assert {d.status for d in log} == {"delivered"}
    assert sum(d.attempts for d in log) == 6 and all(d.last_status_code == 200 for d in log)
    assert await book.deliveries(other.id) == []


async def test_an_event_of_a_rolled_back_change_is_never_sent(
    store: Store, keys: KeyService, book: WebhookBook
) -> None:
    org = (await keys.create(org="acme", actor="test")).record.org_id
    await book.create_endpoint(org, "http://127.0.0.1:9/hook", ["key.created"])

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        async with store.transaction() as conn:
            assert await book.emit(conn, "key.created", org, {"key_id": "key_x"})
            raise Undo
    async with store.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(webhook_deliveries)) == 0
        assert await conn.scalar(select(func.count()).select_from(jobs)) == 0
    async with store.transaction() as conn:  # the same event twice: one delivery
        assert await book.emit(conn, "key.created", org, {}, event_id="evt_1")
        assert await book.emit(conn, "key.created", org, {}, event_id="evt_1") == []


async def test_invoices_and_low_credits_tell_their_webhooks(
    store: Store, keys: KeyService, book: WebhookBook, clock: FakeClock, config: Config
) -> None:
    org = (await keys.create(org="acme", actor="test")).record.org_id
    events = ["invoice.created", "invoice.paid", "credits.low"]
    endpoint = await book.create_endpoint(org, "http://127.0.0.1:9/hook", events)
    invoices = InvoiceBook(store, config, clock=clock, webhooks=book)
    invoice = await invoices.create_from_snapshot(await make_snapshot(store, org), provider="none")
    await invoices.mark_sent(invoice.id, "in_1", "open", invoice.total)
    await invoices.mark_paid(invoice.id)
    await invoices.mark_paid(invoice.id)  # already paid: no second event
    credits = CreditBook(store, clock=clock)
    await credits.grant(org, "prepaid", Money(Decimal("10"), "USD"), actor="test")
    await credits.consume(
        org, Money(Decimal("8"), "USD"), low_balance_below=Money(Decimal("5"), "USD")
    )
    log = await book.deliveries(endpoint.id)
    assert sorted(d.event_type for d in log) == sorted(events)
    paid = next(d.payload for d in log if d.event_type == "invoice.paid")
    assert paid["data"]["invoice_id"] == invoice.id and paid["data"]["status"] == "paid"
    assert paid["data"]["total"] == {"amount": str(invoice.total.amount), "currency": "USD"}
    low = next(d.payload for d in log if d.event_type == "credits.low")
    assert low["data"]["balance"]["amount"] in ("2", "2.00", "2.000000")


async def test_410_disables_the_endpoint(
    store: Store, keys: KeyService, book: WebhookBook, run_jobs: Any
) -> None:
    org = (await keys.create(org="acme", actor="test")).record.org_id
    with serve_receiver(410) as receiver:
        endpoint = await book.create_endpoint(org, receiver.url, ["key.created"])
        await keys.create(org="acme", actor="test")
        await run_jobs()
        await keys.create(org="acme", actor="test")  # not sent: the endpoint is disabled
        await run_jobs()
        assert len(receiver.received) == 1
    assert not (await book.endpoint(endpoint.id)).enabled
    [delivery] = await book.deliveries(endpoint.id)
    assert delivery.status == "failed" and delivery.last_status_code == 410
    with pytest.raises(NotReplayable, match="disabled"):
        await book.replay(delivery.id)


async def test_a_failed_delivery_is_replayed(
    store: Store, keys: KeyService, book: WebhookBook, run_jobs: Any, clock: FakeClock
) -> None:
    org = (await keys.create(org="acme", actor="test")).record.org_id
    with serve_receiver(*[503] * 8) as receiver:
        endpoint = await book.create_endpoint(org, receiver.url, ["key.created"])
        await keys.create(org="acme", actor="test")
        for _ in range(10):
            await run_jobs()
        [failed] = await book.deliveries(endpoint.id)
        assert failed.status == "failed" and failed.attempts == 8 and receiver.delivered() == []
        replayed = await book.replay(failed.id)
        assert replayed.status == "pending"
        with pytest.raises(NotReplayable):
            await book.replay(failed.id)
        await run_jobs()
        [done] = await book.deliveries(endpoint.id)
        assert done.status == "delivered" and done.attempts == 9
        assert {r.headers["HoodRun-Delivery"] for r in receiver.received} == {failed.id}
        assert len(receiver.delivered()) == 1
        check_signed(receiver, endpoint.secret, clock)


async def test_endpoints_are_checked(store: Store, keys: KeyService, book: WebhookBook) -> None:
    org = (await keys.create(org="acme", actor="test")).record.org_id
    with pytest.raises(InvalidEndpoint):
        await book.create_endpoint(org, "ftp://example.com/", ["key.created"])
    with pytest.raises(InvalidEndpoint):
        await book.create_endpoint(org, "https://example.com/", ["key.exploded"])
    with pytest.raises(InvalidEndpoint):
        await book.create_endpoint(org, "https://example.com/", [])


def test_signatures_are_checked() -> None:
    body = b'{"id":"evt_1"}'
    header = sign("whsec_a", body, 1_000_000)
    assert verify_signature("whsec_a", header, body, now=1_000_100) == 1_000_000
    for secret, sent, got, now in [
        ("whsec_b", header, body, 1_000_000),  # another secret
        ("whsec_a", header, b'{"id":"evt_2"}', 1_000_000),  # another body
        ("whsec_a", header, body, 1_000_301),  # too old
        ("whsec_a", None, body, 1_000_000),
        ("whsec_a", "v1=abc", body, 1_000_000),
    ]:
        with pytest.raises(InvalidSignature):
            verify_signature(secret, sent, got, now=now)


async def test_the_admin_routes(store: Store, keys: KeyService, book: WebhookBook) -> None:
    org = (await keys.create(org="acme", actor="test")).record.org_id
    app = create_api_app(keys.config, keys, token=TOKEN, webhooks=book)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        base = f"/admin/v1/orgs/{org}/webhooks"
        body = {"url": "https://example.com/hook", "events": ["key.created"]}
        assert (await http.post(base, json=body)).status_code == 401
        assert (await http.get(base, headers={"Authorization": "Bearer no"})).status_code == 401
        made = await http.post(base, json=body, headers=AUTH)
        assert made.status_code == 201, made.text
        endpoint = made.json()
        assert endpoint["secret"].startswith("whsec_") and endpoint["enabled"]
        listed = (await http.get(base, headers=AUTH)).json()["webhooks"]
        assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
        bad = await http.post(base, json={**body, "events": ["nope"]}, headers=AUTH)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_webhook"
        nobody = await http.post("/admin/v1/orgs/org_none/webhooks", json=body, headers=AUTH)
        assert nobody.status_code == 404
        await keys.create(org="acme", actor="test")
        deliveries = f"/admin/v1/webhooks/{endpoint['id']}/deliveries"
        assert (await http.get(deliveries)).status_code == 401
        [delivery] = (await http.get(deliveries, headers=AUTH)).json()["deliveries"]
        assert delivery["event_type"] == "key.created" and delivery["status"] == "pending"
        replay = f"/admin/v1/webhook-deliveries/{delivery['id']}/replay"
        assert (await http.post(replay)).status_code == 401
        refused = await http.post(replay, headers=AUTH)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_replayable"
        missing = await http.post("/admin/v1/webhook-deliveries/whd_x/replay", headers=AUTH)
        assert missing.status_code == 404
        gone = await http.delete(f"{base}/{endpoint['id']}", headers=AUTH)
        assert gone.status_code == 200 and not gone.json()["enabled"]
        assert (await http.delete(f"{base}/{endpoint['id']}")).status_code == 401

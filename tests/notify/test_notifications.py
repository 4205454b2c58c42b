"""Notifications end to end on SQLite and PostgreSQL: real calls in the analytics store (chDB),
the watcher run by the job worker on its schedule, webhooks POSTed to a real receiver and mail
sent to a real SMTP server (aiosmtpd), to the members who want it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import func, insert, select

from hoodrun.billing.invoices import InvoiceBook
from hoodrun.config import Config
from hoodrun.identity import IdentityService
from hoodrun.identity.config import AuthConfig
from hoodrun.jobs import Job, JobQueue, Worker
from hoodrun.keys.service import KeyService
from hoodrun.metering.entitlements import month_bounds
from hoodrun.notify import jobs as notify_jobs
from hoodrun.notify.kinds import MAILED_EVENTS, NOTIFY_EMAIL, job_policies
from hoodrun.notify.mail import Mailer
from hoodrun.notify.mailing import EventMailer
from hoodrun.notify.watch import Watcher
from hoodrun.store import Store
from hoodrun.store.tables import jobs, notices, notification_prefs, webhook_deliveries
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.units import ComputeUnits
from hoodrun.webhooks import EVENTS, WebhookBook, verify_signature
from hoodrun.webhooks import handlers as webhook_handlers
from tests._smtp import SmtpSink
from tests._stores import FakeClock
from tests.billing.test_invoices import make_snapshot
from tests.telemetry.support import call_record
from tests.webhooks.receiver import Receiver, serve_receiver

PUBLIC_URL = "https://portal.hoodrun.test"
INTERVAL = 60
SETTINGS: dict[str, Any] = {
    "default_plan": "quota",
    "plans": [
        {"name": "quota", "rate": {"rps": 100}, "quotas": {"requests": 100}},
        {
            "name": "capped",
            "rate": {"rps": 100},
            # 10 cents a call: 80 calls are 8.00 USD, 80% of the cap; 100 calls reach it.
            "price": {"type": "METERED", "meter": "requests", "tiers": [{"unit_price": "0.10"}]},
            "spending_cap": "10",
        },
        {"name": "open", "rate": {"rps": 100}},
    ],
    "auth": AuthConfig(
        jwt_secret="test-jwt-secret-" + "x" * 32,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        argon2_parallelism=1,
    ),
    "web": {"public_url": PUBLIC_URL},
    "notifications": {"interval": INTERVAL},
}


def subject(message: EmailMessage) -> str:
    # A long subject is folded; parsed back, it may keep the fold's leading space.
    return str(message["Subject"]).strip()


def notices_of(sink: SmtpSink, address: str) -> list[EmailMessage]:
    """The notification mails (not the invitations) received for ``address``."""
    return [m for m in sink.to(address) if subject(m).startswith("HoodRun: ")]


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return str(body.get_content())


@dataclass
class World:
    store: Store
    config: Config
    clock: FakeClock
    sink: SmtpSink
    analytics: Any
    receiver: Receiver
    book: WebhookBook
    keys: KeyService
    identity: IdentityService
    worker: Worker
    secrets: list[str] = field(default_factory=list)
    """The API keys and webhook secrets made: no mail may hold one."""

    async def org(self, name: str, plan: str | None = None) -> tuple[str, str, str]:
        """A new org (with a key): its id, the key's id and its project's id."""
        created = await self.keys.create(org=name, project="web", actor="test")
        self.secrets.append(created.key)
        if plan is not None:
            await self.keys.change_org_plan(created.record.org_id, plan, actor="test")
        return created.record.org_id, created.id, created.record.project_id

    async def member(self, org_id: str, email: str, role: str, *, verified: bool = True) -> str:
        if verified:
            await self.identity.create_user(email, verified=True, actor="test")
        return (await self.identity.add_member(org_id, email, role, actor="test")).user_id

    async def opt_out(self, user_id: str, org_id: str, *events: str) -> None:
        """The member's choice, as the portal's preferences page saves it."""
        async with self.store.transaction() as conn:
            for event in events:
                await conn.execute(
                    insert(notification_prefs).values(
                        user_id=user_id,
                        org_id=org_id,
                        event=event,
                        email=False,
                        updated_at=self.clock(),
                    )
                )

    async def endpoint(self, org_id: str, events: list[str]) -> str:
        made = await self.book.create_endpoint(org_id, self.receiver.url, events)
        self.secrets.append(made.secret)
        return made.secret

    async def calls(
        self, n: int, org_id: str, key_id: str, project_id: str, *, errors: int = 0
    ) -> None:
        """``n`` calls with the key in the last minute, the first ``errors`` of them failed."""
        at = self.clock().timestamp() - 30
        records = [
            call_record(
                f"{key_id}-{at}-{i}",
                ts=at + i * 0.001,
                org_id=org_id,
                key_id=key_id,
                project_id=project_id,
                **({"error_code": -32000, "rpc_errors": 1} if i < errors else {}),
            )
            for i in range(n)
        ]
        await self.analytics.insert(RowBuilder(ComputeUnits()).table(records))

    async def tick(self) -> int:
        """The next slot of the watcher's schedule: one worker burst, the watcher and what it
        enqueued (deliveries, mail) included."""
        self.clock.advance(timedelta(seconds=INTERVAL))
        return (await self.worker.burst()).total

    def delivered(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.receiver.delivered()]

    def check_mail_holds_no_secret(self) -> None:
        sent = [m for m in self.sink.messages if subject(m).startswith("HoodRun: ")]
        assert sent
        for message in sent:
            raw = message.as_string()
            assert not [secret for secret in self.secrets if secret in raw]
            assert "whsec_" not in raw and "token" not in raw.lower()


def _start(now: datetime) -> datetime:
    # Calls are stamped shortly before the clock: keep them all in the clock's month, and the
    # test's few ticks in one hour (notices per key and hour), whenever the test runs.
    hour = now.replace(minute=1, second=0, microsecond=0)
    return max(hour, month_bounds(now)[0] + timedelta(hours=1))


@pytest.fixture
async def world(
    store: Store, clock: FakeClock, smtp_sink: SmtpSink, analytics_store: Any
) -> AsyncIterator[World]:
    clock.now = _start(datetime.now(UTC))  # the analytics rows' TTL runs on the real clock
    config = Config.model_validate({**SETTINGS, "smtp": smtp_sink.config()})
    book = WebhookBook(store, clock=clock)
    keys = KeyService(store, config, clock=clock, webhooks=book)
    identity = IdentityService(
        store, config, Mailer(config.smtp), now=clock, public_url=PUBLIC_URL, env={}
    )
    queue = JobQueue(store, clock=clock, backoff_base=1.0, backoff_cap=1.0, policies=job_policies())
    with serve_receiver() as receiver:
        async with httpx.AsyncClient() as client:
            worker = Worker(
                queue,
                webhook_handlers(book, client)
                | notify_jobs.handlers(config, store, analytics=analytics_store, clock=clock),
                schedules=notify_jobs.schedules(config),
                clock=clock,
            )
            yield World(
                store,
                config,
                clock,
                smtp_sink,
                analytics_store,
                receiver,
                book,
                keys,
                identity,
                worker,
            )


async def _count(store: Store, table: Any) -> int:
    async with store.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def test_a_quota_at_80_and_100_percent_is_told_once_by_webhook_and_mail(
    world: World,
) -> None:
    org, key, project = await world.org("acme")
    secret = await world.endpoint(org, ["usage.threshold", "quota.exhausted"])
    await world.member(org, "ada@acme.test", "billing")
    await world.member(org, "otto@acme.test", "ops")  # a quota of calls is not about money
    bob = await world.member(org, "bob@acme.test", "viewer")
    await world.opt_out(bob, org, "usage.threshold", "quota.exhausted")
    await world.member(org, "cy@acme.test", "viewer", verified=False)  # invited, not verified
    other, other_key, other_project = await world.org("calm")
    await world.member(other, "dee@calm.test", "admin")

    await world.calls(79, org, key, project)
    await world.calls(10, other, other_key, other_project)
    await world.tick()
    assert world.delivered() == [] and notices_of(world.sink, "ada@acme.test") == []

    await world.calls(1, org, key, project)  # 80 of 100
    await world.tick()
    [event] = world.delivered()
    assert event["type"] == "usage.threshold" and event["org_id"] == org
    period = f"{world.clock().year:04d}-{world.clock().month:02d}"
    resets = month_bounds(world.clock())[1].isoformat()
    assert event["data"] == {
        "meter": "requests",
        "limit": 100,
        "used": 80,
        "percent": 80,
        "period": period,
        "resets_at": resets,
    }
    [first] = world.receiver.delivered()
    stamp = int(first.headers["HoodRun-Signature"].split(",")[0][2:])
    verify_signature(secret, first.headers["HoodRun-Signature"], first.body, now=stamp)
    [mail] = notices_of(world.sink, "ada@acme.test")
    assert subject(mail) == "HoodRun: acme used 80% of its monthly requests quota"
    assert "80 of its 100 requests" in text_of(mail)
    assert f"{PUBLIC_URL}/portal/notifications" in text_of(mail)
    assert notices_of(world.sink, "bob@acme.test") == []
    assert notices_of(world.sink, "cy@acme.test") == []
    assert notices_of(world.sink, "dee@calm.test") == []

    await world.calls(20, org, key, project)  # 100 of 100
    await world.tick()
    later = world.delivered()[1:]
    assert sorted(e["type"] for e in later) == ["quota.exhausted", "usage.threshold"]
    hundred = next(e for e in later if e["type"] == "usage.threshold")
    assert hundred["data"]["percent"] == 100 and hundred["data"]["used"] == 100
    exhausted = next(e for e in later if e["type"] == "quota.exhausted")
    assert exhausted["data"]["meter"] == "requests" and exhausted["data"]["limit"] == 100
    subjects = sorted(subject(m) for m in notices_of(world.sink, "ada@acme.test"))
    assert subjects == [
        "HoodRun: acme used 100% of its monthly requests quota",
        "HoodRun: acme used 80% of its monthly requests quota",
        "HoodRun: acme used up its monthly requests quota: calls are refused",
    ]
    assert sorted(subject(m) for m in notices_of(world.sink, "otto@acme.test")) == subjects

    # Nothing more, however often the watcher looks and however far past 100% the org goes.
    await world.calls(15, org, key, project)
    for _ in range(3):
        await world.tick()
    assert len(world.delivered()) == 3 and len(world.receiver.received) == 3
    assert len(notices_of(world.sink, "ada@acme.test")) == 3
    assert notices_of(world.sink, "bob@acme.test") == []
    assert await _count(world.store, notices) == 3
    world.check_mail_holds_no_secret()


async def test_two_watchers_at_once_send_a_notice_once(world: World) -> None:
    org, key, project = await world.org("acme")
    await world.endpoint(org, ["usage.threshold"])
    await world.calls(85, org, key, project)
    watchers = [
        Watcher(world.config, world.store, world.analytics, book=world.book, clock=world.clock)
        for _ in range(2)
    ]
    results = await asyncio.gather(*(w.check() for w in watchers))
    assert sum(r["usage.threshold"] for r in results) == 1
    async with world.store.connect() as conn:
        types = (await conn.execute(select(webhook_deliveries.c.event_type))).scalars().all()
    assert types == ["usage.threshold"]


async def test_a_spending_cap_at_80_and_100_percent(world: World) -> None:
    org, key, project = await world.org("capco", plan="capped")
    await world.endpoint(org, ["usage.threshold", "quota.exhausted"])
    await world.member(org, "ada@capco.test", "billing")
    await world.member(org, "abe@capco.test", "admin")
    # The cap is money: members who may not see the billing are not told of it.
    await world.member(org, "otto@capco.test", "ops")
    await world.member(org, "vic@capco.test", "viewer")

    await world.calls(80, org, key, project)  # 8.00 of 10.00 USD
    await world.tick()
    [event] = world.delivered()
    assert event["type"] == "usage.threshold"
    assert event["data"]["meter"] == "spending_cap" and event["data"]["percent"] == 80
    assert event["data"]["used"] == {"amount": "8.00", "currency": "USD"}
    assert event["data"]["limit"] == {"amount": "10.00", "currency": "USD"}
    [mail] = notices_of(world.sink, "ada@capco.test")
    assert subject(mail) == "HoodRun: capco reached 80% of its spending cap"
    assert "8.00 USD of its spending cap of 10.00 USD" in text_of(mail)

    await world.calls(20, org, key, project)  # 10.00 USD: the cap
    await world.tick()
    await world.tick()
    later = world.delivered()[1:]
    assert sorted(e["type"] for e in later) == ["quota.exhausted", "usage.threshold"]
    assert all(e["data"]["used"] == {"amount": "10.00", "currency": "USD"} for e in later)
    assert len(notices_of(world.sink, "ada@capco.test")) == 3
    assert len(notices_of(world.sink, "abe@capco.test")) == 3
    assert notices_of(world.sink, "otto@capco.test") == []
    assert notices_of(world.sink, "vic@capco.test") == []
    world.check_mail_holds_no_secret()


async def test_an_error_rate_spike_on_a_key_is_told_once(world: World) -> None:
    org, key, project = await world.org("flaky", plan="open")
    await world.endpoint(org, ["error_rate.spike"])
    await world.member(org, "ada@flaky.test", "ops")
    await world.member(org, "vic@flaky.test", "viewer")
    created = await world.keys.create(org="flaky", project="web", actor="test")
    world.secrets.append(created.key)
    few = await world.keys.create(org="flaky", project="web", actor="test")
    world.secrets.append(few.key)

    await world.calls(120, org, key, project, errors=60)  # 50% of 120: a spike
    await world.calls(200, org, created.id, project, errors=20)  # 10%: under the rate
    await world.calls(50, org, few.id, project, errors=50)  # all failed, but too few calls
    await world.tick()
    [event] = world.delivered()
    assert event["type"] == "error_rate.spike"
    assert event["data"] == {
        "key_id": key,
        "project_id": project,
        "requests": 120,
        "errors": 60,
        "rate": 0.5,
        "window": 300,
    }
    [mail] = notices_of(world.sink, "ada@flaky.test")
    assert subject(mail) == f"HoodRun: flaky: 50% of the calls with key {key} failed"
    assert "60 of the 120 calls" in text_of(mail)
    [seen] = notices_of(world.sink, "vic@flaky.test")
    assert subject(seen) == subject(mail)

    await world.calls(120, org, key, project, errors=120)  # worse, within the same hour
    await world.tick()
    await world.tick()
    assert len(world.delivered()) == 1 and len(notices_of(world.sink, "ada@flaky.test")) == 1
    world.check_mail_holds_no_secret()


async def test_invoices_reach_the_members_who_see_billing_by_mail(world: World) -> None:
    org, _, _ = await world.org("acme")
    await world.member(org, "ada@acme.test", "billing")
    bob = await world.member(org, "bob@acme.test", "admin")
    await world.opt_out(bob, org, "usage.threshold")  # another event: invoices still come
    dee = await world.member(org, "dee@acme.test", "billing")
    await world.opt_out(dee, org, "invoice.created")
    await world.member(org, "cy@acme.test", "billing", verified=False)
    # Without billing:read: no invoices by mail either (the portal does not show them theirs).
    await world.member(org, "vic@acme.test", "viewer")
    await world.member(org, "otto@acme.test", "ops")
    invoices = InvoiceBook(world.store, world.config, clock=world.clock, webhooks=world.book)
    invoice = await invoices.create_from_snapshot(
        await make_snapshot(world.store, org), provider="none"
    )
    await world.worker.burst()
    for address in ("ada@acme.test", "bob@acme.test"):
        [mail] = notices_of(world.sink, address)
        assert subject(mail) == (
            f"HoodRun: Invoice {invoice.number} for acme: {invoice.total.amount} USD"
        )
        assert invoice.number in text_of(mail) and "2026-11" in text_of(mail)
        html = mail.get_body(("html",))
        assert html is not None and invoice.number in str(html.get_content())
    assert notices_of(world.sink, "dee@acme.test") == []
    assert notices_of(world.sink, "cy@acme.test") == []
    assert notices_of(world.sink, "vic@acme.test") == []
    assert notices_of(world.sink, "otto@acme.test") == []
    await world.worker.burst()
    assert len(notices_of(world.sink, "ada@acme.test")) == 1
    world.check_mail_holds_no_secret()


async def test_money_notices_go_to_billing_readers_only(world: World) -> None:
    org, _, _ = await world.org("acme")
    ada = await world.member(org, "ada@acme.test", "billing")
    await world.member(org, "abe@acme.test", "admin")
    await world.member(org, "vic@acme.test", "viewer")
    await world.member(org, "otto@acme.test", "ops")
    money = {"amount": "2.00", "currency": "USD"}
    events: list[tuple[str, dict[str, Any]]] = [
        ("invoice.paid", {"invoice_id": "inv_1", "number": "HR-1", "total": money}),
        ("credits.low", {"balance": money, "threshold": {"amount": "5", "currency": "USD"}}),
    ]
    for event, data in events:
        async with world.store.transaction() as conn:
            await world.book.emit(conn, event, org, data, event_id=f"evt_{event}")
    mailing = EventMailer(world.config, world.store, clock=world.clock)
    async with world.store.connect() as conn:
        queued = [Job.of(r) for r in (await conn.execute(select(jobs))).mappings()]
    fanned = [await mailing.run(job) for job in queued]
    assert sorted(f["members"] for f in fanned) == [2, 2]  # ada and abe, each time
    # A member who no longer sees billing when their mail's turn comes is not mailed.
    await world.identity.set_role(org, ada, "viewer", actor="test")
    await world.worker.burst()
    assert notices_of(world.sink, "ada@acme.test") == []
    assert len(notices_of(world.sink, "abe@acme.test")) == 2
    assert notices_of(world.sink, "vic@acme.test") == notices_of(world.sink, "otto@acme.test") == []


async def test_no_money_notice_is_queued_when_no_member_sees_billing(world: World) -> None:
    org, _, _ = await world.org("acme")
    await world.member(org, "vic@acme.test", "viewer")
    await world.member(org, "otto@acme.test", "ops")
    cap = {"meter": "spending_cap", "limit": {"amount": "10.00", "currency": "USD"}}
    async with world.store.transaction() as conn:
        await world.book.emit(conn, "invoice.created", org, {"number": "HR-1"})
        await world.book.emit(conn, "quota.exhausted", org, cap)
        await world.book.emit(conn, "quota.exhausted", org, {**cap, "meter": "requests"})
    async with world.store.connect() as conn:
        queued = [Job.of(r) for r in (await conn.execute(select(jobs))).mappings()]
    # Only the quota of requests is anyone's to hear of: one notify-email job.
    assert [(job.kind, job.payload["event"]["data"]["meter"]) for job in queued] == [
        (NOTIFY_EMAIL, "requests")
    ]


async def test_each_member_gets_an_event_once(world: World) -> None:
    org, _, _ = await world.org("acme")
    ada = await world.member(org, "ada@acme.test", "billing")
    data = {"balance": {"amount": "2.00", "currency": "USD"}, "threshold": {"amount": "5"}}
    async with world.store.transaction() as conn:
        await world.book.emit(conn, "credits.low", org, data, event_id="evt_once")
        await world.book.emit(conn, "credits.low", org, data, event_id="evt_once")
    async with world.store.connect() as conn:
        [job] = [Job.of(r) for r in (await conn.execute(select(jobs))).mappings()]
    assert job.kind == NOTIFY_EMAIL and job.idempotency_key == "notify-email:evt_once"
    mailing = EventMailer(world.config, world.store, clock=world.clock)
    assert await mailing.run(job) == {"event": "evt_once", "members": 1}
    assert await mailing.run(job) == {"event": "evt_once", "members": 1}  # a run repeated
    async with world.store.connect() as conn:
        keys = (await conn.execute(select(jobs.c.idempotency_key))).scalars().all()
    assert sorted(keys) == ["notify-email:evt_once", f"notify-email:evt_once:{ada}"]
    await world.worker.burst()
    [mail] = notices_of(world.sink, "ada@acme.test")
    assert subject(mail) == "HoodRun: acme's credit balance is low: 2.00 USD"


async def test_without_smtp_nothing_is_mailed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    config = world.config.model_copy(
        update={"smtp": world.config.smtp.model_copy(update={"host": None})}
    )
    org, _, _ = await world.org("acme")
    await world.member(org, "ada@acme.test", "billing")
    async with world.store.transaction() as conn:
        for n in range(2):
            await world.book.emit(conn, "invoice.paid", org, {"number": f"HR-{n}"})
    queue = JobQueue(world.store, clock=world.clock, policies=job_policies())
    worker = Worker(
        queue, notify_jobs.handlers(config, world.store, analytics=None), clock=world.clock
    )
    with caplog.at_level(logging.WARNING, logger="hoodrun.notify"):
        assert (await worker.burst()).done == 2
    assert notices_of(world.sink, "ada@acme.test") == []
    warned = [r for r in caplog.records if "not mailed" in r.getMessage()]
    assert len(warned) == 1 and "smtp.host is unset" in warned[0].getMessage()


def test_the_events_and_the_schedule() -> None:
    from hoodrun.web.portal_webhooks import NOTIFICATION_EVENTS

    assert set(MAILED_EVENTS) == set(NOTIFICATION_EVENTS) and set(MAILED_EVENTS) <= set(EVENTS)
    assert {"usage.threshold", "quota.exhausted", "error_rate.spike"} <= set(EVENTS)
    config = Config.model_validate(SETTINGS)
    [schedule] = notify_jobs.schedules(config)
    assert schedule.kind == "notify-watch"
    assert schedule.due(datetime(2030, 1, 1, 12, 0, 59, tzinfo=UTC)) == datetime(
        2030, 1, 1, 12, 0, tzinfo=UTC
    )
    off = Config.model_validate({**SETTINGS, "notifications": {"enabled": False}})
    assert notify_jobs.schedules(off) == []
    assert Config.model_validate(
        {**SETTINGS, "notifications": {"usage_thresholds": [100, 50, 100]}}
    ).notifications.usage_thresholds == (50, 100)
    with pytest.raises(ValueError, match="threshold"):
        Config.model_validate({**SETTINGS, "notifications": {"usage_thresholds": [0]}})

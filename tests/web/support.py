"""The portal on an app of its own for page tests: ``portal_router`` over a ``WebContext`` of real
services on a migrated store (each backend), a real chDB analytics store and an SMTP sink; an
httpx client per person, with their cookies."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hoodrun.billing.invoices import InvoiceBook
from hoodrun.config import Config
from hoodrun.identity import IdentityService
from hoodrun.keys.service import KeyService
from hoodrun.metering.store import ContractBook, CreditBook
from hoodrun.notify.mail import Mailer
from hoodrun.store import Store
from hoodrun.telemetry.reporting import Reports
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.store import ChdbStore
from hoodrun.telemetry.units import ComputeUnits
from hoodrun.web.context import WebContext
from hoodrun.web.portal import portal_router
from hoodrun.webhooks import WebhookBook
from tests._smtp import SmtpSink
from tests._stores import FakeClock

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "http://portal.test"
PASSWORD = "correct horse battery staple"
SECRET = "portal-test-jwt-secret-" + "x" * 32
PLANS: list[dict[str, Any]] = [
    {"name": "free", "rate": {"rps": 5}, "quotas": {"requests": 1000}, "description": "Free"},
    {
        "name": "starter",
        "rate": {"rps": 25, "burst": 50},
        "quotas": {"requests": 100000},
        "price": {
            "type": "METERED",
            "meter": "requests",
            "tiers": [{"unit_price": "0.01"}],
        },
    },
    {
        "name": "growth",
        "rate": {"rps": 100},
        "price": {
            "type": "HYBRID",
            "fee": "30",
            "meter": "requests",
            "included": 1000,
            "tiers": [{"unit_price": "0.005"}],
        },
    },
]


def portal_config(tmp_path: Path, sink: SmtpSink, **extra: Any) -> Config:
    return Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "listen": "127.0.0.1:8545",
            "default_plan": "free",
            "plans": PLANS,
            "chains": [
                {"name": "eth", "chain_id": 1, "upstreams": [{"name": "a", "url": "http://127.0.0.1:9"}]},
                {"name": "base", "chain_id": 8453, "upstreams": [{"name": "b", "url": "http://127.0.0.1:9"}]},
            ],
            "auth": {
                "jwt_secret": SECRET,
                "argon2_time_cost": 1,
                "argon2_memory_kib": 64,
                "argon2_parallelism": 1,
            },
            "smtp": sink.config().model_dump(),
            "web": {"assets_dir": str(ROOT / "node_modules")},
            **extra,
        }
    )  # fmt: skip


@dataclass
class Portal:
    app: FastAPI
    ctx: WebContext
    sink: SmtpSink
    clock: FakeClock
    analytics: ChdbStore
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.ctx.store

    def client(self) -> httpx.AsyncClient:
        """A browser of its own (cookies), on the portal's app."""
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("203.0.113.9", 4000)),
            base_url=ORIGIN,
        )
        self.clients.append(client)
        return client

    async def sign_up(
        self, client: httpx.AsyncClient, email: str, *, org_name: str | None = None
    ) -> httpx.Response:
        """Sign up, follow the mailed link, log in; returns the page after login."""
        page = await client.get("/portal/signup")
        form = {"csrf": csrf_of(page), "email": email, "password": PASSWORD, "name": "Ada"}
        if org_name:
            form["org_name"] = org_name
        done = await client.post("/portal/signup", data=form)
        assert done.status_code == 200, done.text
        message = await self.sink.wait_for(email)
        link = verify_link(message.get_body(("plain",)).get_content())  # type: ignore[union-attr]
        verify = await client.get(link)
        assert verify.status_code == 200
        verified = await client.post(
            "/portal/verify", data={"csrf": csrf_of(verify), "token": token_of(verify)}
        )
        assert verified.status_code == 303 and "notice=verified" in verified.headers["location"]
        return await self.log_in(client, email)

    async def log_in(self, client: httpx.AsyncClient, email: str) -> httpx.Response:
        page = await client.get("/portal/login")
        answer = await client.post(
            "/portal/login", data={"csrf": csrf_of(page), "email": email, "password": PASSWORD}
        )
        assert answer.status_code == 303, answer.text
        return await client.get(answer.headers["location"])

    async def calls(
        self, org_id: str, key_id: str, n: int, *, method: str = "eth_blockNumber", **extra: Any
    ) -> None:
        """``n`` calls of the key written to the analytics store, as the gateway records them."""
        from tests.telemetry.support import call_record

        records = [
            call_record(
                f"call-{uuid.uuid4().hex}", method=method, org_id=org_id, key_id=key_id, **extra
            )
            for _ in range(n)
        ]
        await self.analytics.insert(RowBuilder(ComputeUnits()).table(records))


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)


def token_of(page: httpx.Response) -> str:
    found = re.search(r'name="token" value="([^"]+)"', page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)


def verify_link(body: str) -> str:
    found = re.search(r"https?://\S+/portal/verify\?token=[A-Za-z0-9_\-]+", body)
    assert found is not None, body
    return found.group(0)


def org_of(portal: Portal, client: httpx.AsyncClient) -> str:
    claims = portal.ctx.identity.decode(client.cookies["hoodrun_session"])
    assert claims.org_id is not None
    return claims.org_id


@pytest.fixture
async def portal(
    store: Store, smtp_sink: SmtpSink, clock: FakeClock, tmp_path: Path, chdb_path: Path
) -> AsyncIterator[Portal]:
    from datetime import UTC, datetime

    from hoodrun.config import RetentionConfig

    clock.now = datetime.now(UTC)  # the analytics rows' TTL runs on the real clock
    config = portal_config(tmp_path, smtp_sink)
    analytics = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    await analytics.setup(RetentionConfig())
    reports = Reports(analytics)
    identity = IdentityService(
        store, config, Mailer(config.smtp), now=clock, public_url=ORIGIN, env={}
    )
    webhooks = WebhookBook(store)
    ctx = WebContext(
        config=config,
        store=store,
        identity=identity,
        keys=KeyService(store, config, webhooks=webhooks),
        reports=lambda: reports,
        contracts=ContractBook(store, config),
        credits=CreditBook(store),
        invoices=InvoiceBook(store, config, webhooks=webhooks),
        webhooks=webhooks,
    )
    app = FastAPI()
    app.include_router(portal_router(ctx))
    found = Portal(app, ctx, smtp_sink, clock, analytics)
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()
        await analytics.drop()
        await analytics.aclose()

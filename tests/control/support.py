"""The control center on an app of its own: ``create_api_app`` with the fleet's routes, the
portal (its login and assets) and the control center, over real services on a migrated
store (each backend), and an httpx client per person with their session cookie, made by the
real identity service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hoodrun.api.app import create_api_app
from hoodrun.config import Config, load_config
from hoodrun.identity import IdentityService
from hoodrun.jobs import JobQueue
from hoodrun.keys.service import KeyService
from hoodrun.ops.alerts import AlertBook
from hoodrun.store import Store
from hoodrun.telemetry.reporting import Reports
from hoodrun.web.context import WebContext

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "http://control.test"
TOKEN = "control-test-admin-token"
PASSWORD = "correct horse battery staple"
SECRET = "control-test-jwt-secret-" + "x" * 32


def control_config(
    database_url: str, tmp_path: Path, chains: list[dict[str, Any]] | None = None, **extra: Any
) -> Config:
    """The sample config with a test database, cheap password hashing and the given chains."""
    base = load_config(ROOT / "hoodrun.example.yaml", env={}).model_dump(mode="json")
    base.update(
        database_url=database_url,
        data_dir=str(tmp_path / "data"),
        chains=chains
        or [
            {
                "name": "eth",
                "chain_id": 1,
                "upstreams": [
                    {"name": "eth-0", "url": "http://127.0.0.1:9/v3/secret-provider-key"},
                    {"name": "eth-1", "url": "http://127.0.0.1:9"},
                ],
            },
            {
                "name": "base",
                "chain_id": 8453,
                "upstreams": [{"name": "base-0", "url": "http://127.0.0.1:9"}],
            },
        ],
        auth={
            "jwt_secret": SECRET,
            "argon2_time_cost": 1,
            "argon2_memory_kib": 64,
            "argon2_parallelism": 1,
        },
        web={"assets_dir": str(ROOT / "node_modules")},
        telemetry={**base["telemetry"], "enabled": False},
        **extra,
    )
    return Config.model_validate(base)


def control_app(
    config: Config,
    store: Store,
    *,
    reports: Callable[[], Reports | None] = lambda: None,
    assets: bool = False,
) -> tuple[FastAPI, WebContext]:
    """The api role's app as the lead wires it: admin API + fleet routes + control center."""
    identity = IdentityService(store, config, None, public_url=ORIGIN, env={})
    keys = KeyService(store, config)
    queue = JobQueue(store)
    ctx = WebContext(
        config=config,
        store=store,
        identity=identity,
        keys=keys,
        reports=reports,
        jobs=queue,
        alerts=AlertBook(store),
    )
    app = create_api_app(
        config, keys, token=TOKEN, identity=identity, reports=reports, jobs=queue, web=ctx
    )
    return app, ctx


@dataclass
class Control:
    app: FastAPI
    ctx: WebContext
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def identity(self) -> IdentityService:
        return self.ctx.identity

    def client(self, *, token: str | None = None, cookie: str | None = None) -> httpx.AsyncClient:
        """A client of its own: with the admin ``token``, or a session ``cookie``, or neither."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=("203.0.113.7", 4000)),
            base_url=ORIGIN,
            headers=headers,
        )
        if cookie:
            client.cookies.set("hoodrun_session", cookie, domain="control.test")
        self.clients.append(client)
        return client

    def admin(self) -> httpx.AsyncClient:
        return self.client(token=TOKEN)

    async def session(self, email: str, platform_role: str | None) -> str:
        """An access token of a new (verified) user holding ``platform_role`` (None: a
        customer), from a real login."""
        await self.identity.create_user(
            email, password=PASSWORD, platform_role=platform_role, actor="test"
        )
        session = await self.identity.login(email, PASSWORD, ip="203.0.113.7")
        return session.access_token

    async def person(self, email: str, platform_role: str | None) -> httpx.AsyncClient:
        """A browser-like client logged in as a new user (the portal's cookie)."""
        return self.client(cookie=await self.session(email, platform_role))

    async def bearer(self, email: str, platform_role: str | None) -> httpx.AsyncClient:
        """An API client with a new user's access token."""
        return self.client(token=await self.session(email, platform_role))


@pytest.fixture
async def control(store: Store, tmp_path: Path) -> AsyncIterator[Control]:
    config = control_config(store.url, tmp_path)
    app, ctx = control_app(config, store)
    found = Control(app, ctx)
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()

"""The check-access API (``/api/v1/entitlements``) over the real store on SQLite and PostgreSQL,
with the gateway's month-to-date counters in memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config
from hoodrun.devnet import free_port
from hoodrun.keys.service import KeyService
from hoodrun.metering.entitlements import OrgEntitlements, UsageCounters
from hoodrun.platform import _plan_named
from hoodrun.store import Store, upgrade
from hoodrun.telemetry.units import ComputeUnits
from tests._platform import PlatformThread
from tests.telemetry.support import call_record

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = Config.model_validate(
    {
        "default_plan": "free",
        "plans": [
            {"name": "free", "rate": {"rps": 10}, "trace": False, "quotas": {"requests": 100}},
            {"name": "pro", "rate": {"rps": 100}, "quotas": {"compute_units": 1000}},
        ],
    }
)


@pytest.fixture
async def setup(store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, KeyService, UsageCounters]]:
    keys = KeyService(store, CONFIG)
    counters = UsageCounters(ComputeUnits())
    entitlements = OrgEntitlements(
        lambda name: _plan_named(keys.config, name), keys.org_plan, counters=counters
    )
    app = create_api_app(CONFIG, keys, token=TOKEN, entitlements=entitlements)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http, keys, counters


async def test_features_and_quotas_of_an_org(setup: Any) -> None:
    http, keys, counters = setup
    created = await keys.create(org="acme", project="web", actor="test")
    org = created.record.org_id
    for n in range(3):
        counters.emit(call_record(f"r{n}", ts=time.time(), org_id=org))  # eth_call: 26 units
    answer = await http.get(f"/api/v1/entitlements/{org}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["subject"] == org and body["plan"] == "free"
    found = {e["name"]: e for e in body["entitlements"]}
    assert found["trace"]["allowed"] is False and found["archive"]["allowed"] is True
    requests = found["requests"]
    assert (requests["limit"], requests["used"], requests["remaining"]) == (100, 3, 97)
    assert requests["resets_at"].endswith("T00:00:00Z")
    assert found["compute_units"]["limit"] is None and found["compute_units"]["used"] == 78

    # A plan change applies at once.
    await keys.change_org_plan(org, "pro", actor="test")
    check = await http.post(
        "/api/v1/entitlements/check",
        json={"subject": org, "feature": "compute_units"},
        headers=AUTH,
    )
    assert check.status_code == 200
    assert (check.json()["allowed"], check.json()["remaining"]) == (True, 1000 - 78)
    trace = await http.post(
        "/api/v1/entitlements/check", json={"subject": org, "feature": "trace"}, headers=AUTH
    )
    assert trace.json()["allowed"] is True


async def test_errors(setup: Any) -> None:
    http, keys, _ = setup
    created = await keys.create(org="acme", project="web", actor="test")
    org = created.record.org_id
    unknown = await http.post(
        "/api/v1/entitlements/check", json={"subject": org, "feature": "tokens"}, headers=AUTH
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_feature"
    assert (
        "archive, trace, websocket, requests, compute_units" in unknown.json()["error"]["message"]
    )
    missing = await http.get("/api/v1/entitlements/org_nobody", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "org_not_found"
    assert (await http.get(f"/api/v1/entitlements/{org}")).status_code == 401
    extra = await http.post(
        "/api/v1/entitlements/check",
        json={"subject": org, "feature": "trace", "x": 1},
        headers=AUTH,
    )
    assert extra.status_code == 422


def test_the_platform_answers_with_the_plan_the_gateway_applies(tmp_path: Path) -> None:
    # An org whose plan left the config gets the default plan at the gateway (Policy.plan_of);
    # the check-access API of a running platform must say the same.
    settings: dict[str, Any] = {
        "api_listen": f"127.0.0.1:{free_port()}",
        "data_dir": str(tmp_path),
        "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
        "admin_token": TOKEN,
        "telemetry": {"enabled": False},
        "default_plan": "free",
        "plans": [
            {"name": "pro", "rate": {"rps": 100}, "quotas": {"compute_units": 1000}},
            {"name": "free", "rate": {"rps": 10}, "quotas": {"requests": 100}},
            {"name": "gold", "rate": {"rps": 1000}},
        ],
    }
    before = Config.model_validate(settings)

    async def org_on_gold() -> str:
        await upgrade(before.database_url)
        async with Store(before.database_url) as store:
            await store.sync_plans(before.plans)
            keys = KeyService(store, before)
            org = (await keys.create(org="acme", project="web", actor="test")).record.org_id
            await keys.change_org_plan(org, "gold", actor="test")
            return org

    org = asyncio.run(org_on_gold())
    after = Config.model_validate({**settings, "plans": settings["plans"][:2]})
    with PlatformThread(after, gateway=False, demo=False) as running:
        answer = httpx.get(f"{running.api_url}/api/v1/entitlements/{org}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["plan"] == "free"
    found = {e["name"]: e for e in answer.json()["entitlements"]}
    assert found["requests"]["limit"] == 100

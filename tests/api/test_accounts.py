"""Contracts and credits through the admin API, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config
from hoodrun.keys.service import KeyService
from hoodrun.metering.store import ContractBook, CreditBook
from hoodrun.store import Store

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = Config.model_validate(
    {
        "default_plan": "free",
        "plans": [
            {"name": "free", "rate": {"rps": 10}},
            {"name": "pro", "rate": {"rps": 100}, "price": {"type": "FIXED", "fee": "49", "currency": "EUR"}},
        ],
    }
)  # fmt: skip


@pytest.fixture
async def setup(store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, KeyService]]:
    keys = KeyService(store, CONFIG)
    books = (ContractBook(store, CONFIG), CreditBook(store))
    app = create_api_app(CONFIG, keys, token=TOKEN, accounts=books)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http, keys


async def test_a_contract_sets_the_orgs_plan_and_keeps_its_history(setup: Any) -> None:
    http, keys = setup
    created = await keys.create(org="acme", project="web", actor="test")
    org = created.record.org_id
    base = f"/admin/v1/orgs/{org}"
    made = await http.post(
        f"{base}/contract", json={"plan": "free", "country": "TR", "currency": "USD"}, headers=AUTH
    )
    assert made.status_code == 201, made.text
    assert made.json()["plan"] == "free" and made.json()["country"] == "TR"
    changed = await http.post(f"{base}/contract/plan", json={"plan": "pro"}, headers=AUTH)
    assert changed.status_code == 200, changed.text
    assert changed.json()["currency"] == "EUR"  # the new plan's price currency
    history = (await http.get(f"{base}/contracts", headers=AUTH)).json()["contracts"]
    assert [c["plan"] for c in history] == ["free", "pro"]
    assert history[0]["ends_at"] is not None and history[1]["ends_at"] is None
    # The org's keys take the contract's plan.
    assert (await keys.get(created.id)).plan == "pro"
    overlap = await http.post(f"{base}/contract", json={"plan": "free"}, headers=AUTH)
    assert overlap.status_code == 409 and overlap.json()["error"]["code"] == "contract_conflict"
    unknown = await http.post(f"{base}/contract/plan", json={"plan": "gold"}, headers=AUTH)
    assert unknown.status_code == 400 and "gold" in unknown.json()["error"]["message"]


async def test_credits_and_their_balance(setup: Any) -> None:
    http, keys = setup
    created = await keys.create(org="acme", project="web", actor="test")
    base = f"/admin/v1/orgs/{created.record.org_id}"
    for body in (
        {"kind": "prepaid", "amount": "20.00", "currency": "USD"},
        {"kind": "promotional", "amount": "5", "currency": "USD", "note": "welcome"},
        {"kind": "prepaid", "amount": "100", "currency": "TRY"},
    ):
        assert (await http.post(f"{base}/credits", json=body, headers=AUTH)).status_code == 201
    listed = (await http.get(f"{base}/credits", headers=AUTH)).json()
    assert {k: float(v) for k, v in listed["balance"].items()} == {"TRY": 100.0, "USD": 25.0}
    assert sorted(g["kind"] for g in listed["grants"]) == ["prepaid", "prepaid", "promotional"]
    fine = await http.post(
        f"{base}/credits",
        json={"kind": "prepaid", "amount": "0.001", "currency": "USD"},
        headers=AUTH,
    )
    assert fine.status_code == 400 and "smallest unit" in fine.json()["error"]["message"]
    nobody = await http.post(
        "/admin/v1/orgs/org_nobody/credits",
        json={"kind": "prepaid", "amount": "1", "currency": "USD"},
        headers=AUTH,
    )
    assert nobody.status_code == 404
    assert (await http.get(f"{base}/credits")).status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("contract", {"plan": "free", "starts_at": "2026-01-01T00:00:00"}, "starts_at"),
        ("contract", {"plan": "free", "ends_at": "2099-01-01T00:00:00"}, "ends_at"),
        ("contract", {"plan": "free", "discount_percent": "1.0000001"}, "discount_percent"),
        ("contract", {"plan": "free", "minimum_override": "0.0000001"}, "minimum_override"),
        ("contract", {"plan": "free", "minimum_override": "1e15"}, "minimum_override"),
        ("contract", {"plan": "free", "tax_id": "X" * 65}, "tax_id"),
        ("contract/plan", {"plan": "pro", "change_at": "2099-01-01T00:00:00"}, "change_at"),
        ("credits", {"kind": "prepaid", "amount": "1e15", "currency": "USD"}, "amount"),
    ],
)
async def test_times_without_an_offset_and_amounts_the_database_cannot_hold_are_refused(
    setup: Any, path: str, body: dict[str, Any], field: str
) -> None:
    # Refused as the request's fault (naming the field), on SQLite and PostgreSQL alike.
    http, keys = setup
    created = await keys.create(org="acme", project="web", actor="test")
    base = f"/admin/v1/orgs/{created.record.org_id}"
    made = await http.post(f"{base}/contract", json={"plan": "free"}, headers=AUTH)
    assert made.status_code == 201, made.text
    refused = await http.post(f"{base}/{path}", json=body, headers=AUTH)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_request" and f"body.{field}" in error["message"]
    history = (await http.get(f"{base}/contracts", headers=AUTH)).json()["contracts"]
    assert [c["plan"] for c in history] == ["free"]


async def test_unknown_orgs_and_contracts_that_start_later(setup: Any) -> None:
    http, keys = setup
    for path in ("contracts", "credits"):
        missing = await http.get(f"/admin/v1/orgs/org_nobody/{path}", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "org_not_found"
    created = await keys.create(org="acme", project="web", actor="test")
    org = created.record.org_id
    later = await http.post(
        f"/admin/v1/orgs/{org}/contract",
        json={"plan": "pro", "starts_at": "2099-01-01T00:00:00Z"},
        headers=AUTH,
    )
    assert later.status_code == 201
    # Not in force yet: the org's keys keep the plan they have.
    assert (await keys.get(created.id)).plan == "free"

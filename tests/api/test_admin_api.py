"""The admin API in process (ASGI), over the real store on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config, load_config
from hoodrun.keys.secret import hash_key
from hoodrun.keys.service import KeyService
from hoodrun.store import Store
from tests._stores import FakeClock

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "hoodrun.example.yaml", env={})


@pytest.fixture
def service(store: Store, config: Config, clock: FakeClock) -> KeyService:
    return KeyService(store, config, clock=clock)


async def _client(config: Config, service: KeyService, token: str | None) -> httpx.AsyncClient:
    app = create_api_app(config, service, token=token)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


@pytest.fixture
async def client(config: Config, service: KeyService) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(config, service, TOKEN) as http:
        yield http


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


async def test_health_needs_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Bearer"}],
)
async def test_admin_routes_need_the_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "/admin/v1/keys"),
        ("POST", "/admin/v1/keys"),
        ("GET", "/admin/v1/audit"),
    ]:
        response = await client.request(method, path, headers=headers, json={"org": "x"})
        _error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_without_a_configured_token_everything_is_refused(
    config: Config, service: KeyService
) -> None:
    async with await _client(config, service, None) as http:
        response = await http.get("/admin/v1/keys", headers={"Authorization": "Bearer "})
        assert "HOODRUN_ADMIN_TOKEN" in _error(response, 401, "admin_disabled")
        response = await http.get("/admin/v1/keys", headers=AUTH)
        assert "HOODRUN_ADMIN_TOKEN" in _error(response, 401, "admin_disabled")


async def test_create_shows_the_key_once(
    client: httpx.AsyncClient, service: KeyService, clock: FakeClock
) -> None:
    response = await client.post(
        "/admin/v1/keys",
        headers=AUTH,
        json={
            "org": "acme",
            "plan": "pro",
            "chains": ["eth"],
            "origins": ["https://app.example.com"],
            "expires_in": "30d",
            "methods_deny": ["eth_sendRawTransaction"],
            "rps": 5,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    key = body["key"]
    record = await service.get(body["id"])
    assert record.hash == hash_key(key)
    assert body["org"] == "acme" and body["project"] == "default" and body["plan"] == "pro"
    assert body["chains"] == ["eth"] and body["status"] == "active" and body["rps"] == 5
    assert body["expires_at"] == (clock.now + timedelta(days=30)).isoformat().replace("+00:00", "Z")
    assert "hash" not in body

    listed = await client.get("/admin/v1/keys", headers=AUTH, params={"org": "acme"})
    shown = await client.get(f"/admin/v1/keys/{body['id']}", headers=AUTH)
    for response in (listed, shown):
        assert response.status_code == 200
        assert key not in response.text and record.hash not in response.text
    assert [k["id"] for k in listed.json()["keys"]] == [body["id"]]
    assert shown.json()["start"] == key[:7]

    seconds = await client.post(
        "/admin/v1/keys", headers=AUTH, json={"org": "acme", "expires_in": 3600}
    )
    assert seconds.json()["expires_at"].startswith("2030-01-01T13:00:00")


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"org": "acme", "plan": "gold"}, 400, "unknown_plan", "choose one of free, pro"),
        ({"org": "acme", "chains": ["sol"]}, 400, "unknown_chain", "unknown chain 'sol'"),
        ({"org": "acme", "expires_in": "soon"}, 400, "invalid_option", "30d"),
        ({"org": "acme", "origins": ["nope"]}, 400, "invalid_option", "scheme://host"),
        ({}, 422, "invalid_request", "org"),
        ({"org": "acme", "colour": "red"}, 422, "invalid_request", "colour"),
        ({"org": "acme", "rps": -1}, 422, "invalid_request", "rps"),
    ],
)
async def test_create_errors(
    client: httpx.AsyncClient, body: dict[str, object], status: int, code: str, fragment: str
) -> None:
    response = await client.post("/admin/v1/keys", headers=AUTH, json=body)
    assert fragment in _error(response, status, code)


async def test_lifecycle_and_audit(
    client: httpx.AsyncClient, service: KeyService, clock: FakeClock
) -> None:
    created = (await client.post("/admin/v1/keys", headers=AUTH, json={"org": "acme"})).json()
    key_id = created["id"]

    disabled = await client.post(f"/admin/v1/keys/{key_id}/disable", headers=AUTH)
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    enabled = await client.post(f"/admin/v1/keys/{key_id}/enable", headers=AUTH)
    assert enabled.json()["status"] == "active"

    rotated = await client.post(
        f"/admin/v1/keys/{key_id}/rotate", headers=AUTH, json={"grace_seconds": 3600}
    )
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["rotated_from"] == key_id and new["key"] != created["key"]
    old = (await client.get(f"/admin/v1/keys/{key_id}", headers=AUTH)).json()
    assert old["status"] == "active"  # still in its grace period
    clock.advance(timedelta(hours=1))
    old = (await client.get(f"/admin/v1/keys/{key_id}", headers=AUTH)).json()
    assert old["status"] == "revoked"

    revoked = await client.post(f"/admin/v1/keys/{new['id']}/revoke", headers=AUTH)
    assert revoked.json()["status"] == "revoked"
    response = await client.post(f"/admin/v1/keys/{new['id']}/rotate", headers=AUTH)
    assert "create a new key" in _error(response, 409, "key_revoked")

    audit = await client.get("/admin/v1/audit", headers=AUTH, params={"limit": 50})
    entries = audit.json()["entries"]
    assert {e["actor"] for e in entries} == {"admin-token"}
    assert [e["action"] for e in entries if e["target_id"] == key_id] == [
        "key.rotate",
        "key.enable",
        "key.disable",
        "key.create",
    ]
    for secret in (created["key"], new["key"], hash_key(created["key"])):
        assert secret not in audit.text
    only = await client.get("/admin/v1/audit", headers=AUTH, params={"target_id": new["id"]})
    assert [e["action"] for e in only.json()["entries"]] == ["key.revoke", "key.create"]
    bad = await client.get("/admin/v1/audit", headers=AUTH, params={"limit": 0})
    _error(bad, 422, "invalid_request")


async def test_unknown_key_is_404(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/admin/v1/keys/key_nope"),
        ("POST", "/admin/v1/keys/key_nope/revoke"),
        ("POST", "/admin/v1/keys/key_nope/rotate"),
        ("POST", "/admin/v1/keys/key_nope/disable"),
        ("POST", "/admin/v1/keys/key_nope/enable"),
    ]:
        response = await client.request(method, path, headers=AUTH)
        assert "key_nope" in _error(response, 404, "key_not_found")
    _error(await client.get("/admin/v1/nothing", headers=AUTH), 404, "not_found")


async def test_database_down_is_503(config: Config) -> None:
    async with Store("postgresql://postgres@127.0.0.1:1/hoodrun") as store:
        async with await _client(config, KeyService(store, config), TOKEN) as http:
            response = await http.get("/admin/v1/keys", headers=AUTH)
    _error(response, 503, "store_unavailable")

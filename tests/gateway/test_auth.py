"""Keys, scopes, origins and routes — on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.conftest import ThreadedGateway, make_config, rpc


@pytest.fixture
def gw(gateway_factory: Any, database_url: str, eth_anvil: Any, base_anvil: Any) -> ThreadedGateway:
    config = make_config(
        database_url,
        {"eth": (1, [eth_anvil]), "base": (8453, [base_anvil])},
        domain="rpc.example.com",
    )
    gw: ThreadedGateway = gateway_factory(config)
    return gw


def _call(client: httpx.Client, url: str, payload: Any = None, **headers: str) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload or rpc("eth_chainId"))
    return client.post(url, content=body, headers=headers)


def _error(response: httpx.Response) -> tuple[int, int, str]:
    body = response.json()
    return response.status_code, body["error"]["code"], body["error"]["data"]["reason"]


def test_key_forms(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    assert _call(client, gw.endpoint(key)).json()["result"] == "0x1"
    assert (
        _call(client, f"{gw.url}/eth/v1", authorization=f"Bearer {key}").json()["result"] == "0x1"
    )
    assert _call(client, f"{gw.url}/base/v1", **{"x-api-key": key}).json()["result"] == hex(8453)
    host_form = _call(client, f"{gw.url}/v1/{key}", host="base.rpc.example.com")
    assert host_form.json()["result"] == hex(8453)
    assert _call(client, f"{gw.url}/eth/v1/{key}/").json()["result"] == "0x1"


def test_refusals(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    assert _error(_call(client, f"{gw.url}/eth/v1")) == (401, -32016, "key_missing")
    assert _error(_call(client, f"{gw.url}/eth/v1/hr_notarealkey1234567890")) == (
        401,
        -32016,
        "key_invalid",
    )
    assert _error(_call(client, f"{gw.url}/eth/v1/garbage!")) == (401, -32016, "key_invalid")
    assert _error(_call(client, gw.endpoint(key, "solana"))) == (404, -32001, "unknown_chain")
    assert _error(_call(client, f"{gw.url}/nothing/here")) == (404, -32601, "not_found")
    get = client.get(gw.endpoint(key))
    assert _error(get) == (405, -32600, "use_post")
    wrong_host = _call(client, f"{gw.url}/v1/{key}", host="eth.other.org")
    assert wrong_host.status_code == 404


def test_chain_and_method_scopes(gw: ThreadedGateway, client: httpx.Client) -> None:
    only_base = gw.key(chains=["base"]).key
    assert _error(_call(client, gw.endpoint(only_base, "eth"))) == (
        403,
        -32016,
        "chain_not_allowed",
    )
    assert _call(client, gw.endpoint(only_base, "base")).json()["result"] == hex(8453)
    free = gw.key(plan="free").key
    send = rpc("eth_sendRawTransaction", ["0x00"], id=9)
    refused = _call(client, gw.endpoint(free), send)
    assert _error(refused) == (403, -32004, "method_not_allowed")
    assert refused.json()["id"] == 9
    batch = _call(client, gw.endpoint(free), [rpc("eth_chainId", id=1), {**send, "id": 2}]).json()
    assert batch[0]["result"] == "0x1"
    assert batch[1]["error"]["code"] == -32004 and batch[1]["id"] == 2
    no_balance = gw.key(methods_deny=["eth_getBalance"]).key
    assert (
        _error(
            _call(
                client, gw.endpoint(no_balance), rpc("eth_getBalance", ["0x" + "00" * 20, "latest"])
            )
        )[0]
        == 403
    )


def test_revocation_is_immediate_and_lifecycle_applies(
    gw: ThreadedGateway, client: httpx.Client
) -> None:
    created = gw.key()
    assert _call(client, gw.endpoint(created.key)).status_code == 200
    keys = gw.runtime.keys  # type: ignore[union-attr]
    assert keys is not None
    gw.run(keys.revoke(created.id, actor="test"))
    assert _error(_call(client, gw.endpoint(created.key))) == (401, -32016, "key_revoked")

    other = gw.key()
    assert _call(client, gw.endpoint(other.key)).status_code == 200
    gw.run(keys.disable(other.id, actor="test"))
    assert _error(_call(client, gw.endpoint(other.key)))[2] == "key_disabled"
    gw.run(keys.enable(other.id, actor="test"))
    assert _call(client, gw.endpoint(other.key)).status_code == 200

    rotated = gw.run(keys.rotate(other.id, actor="test"))
    assert _error(_call(client, gw.endpoint(other.key)))[2] == "key_revoked"
    assert _call(client, gw.endpoint(rotated.key)).status_code == 200


def test_expiry(gw: ThreadedGateway, client: httpx.Client) -> None:
    short = gw.key(expires_in=timedelta(seconds=1))
    first = _call(client, gw.endpoint(short.key))
    assert first.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = _call(client, gw.endpoint(short.key))
        if response.status_code == 401:
            assert _error(response)[2] == "key_expired"
            break
        time.sleep(0.1)
    else:
        pytest.fail("the key did not expire within 5 s")


def test_origins_and_cors(gw: ThreadedGateway, client: httpx.Client) -> None:
    app = "https://app.example.com"
    limited = gw.key(origins=[app]).key
    ok = _call(client, gw.endpoint(limited), origin=app)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == app
    assert "X-RateLimit-Remaining" in ok.headers["access-control-expose-headers"]
    assert (
        _error(_call(client, gw.endpoint(limited), origin="https://evil.example"))[2]
        == "origin_not_allowed"
    )
    preflight = client.options(
        gw.endpoint(limited),
        headers={
            "origin": app,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == app
    assert "POST" in preflight.headers["access-control-allow-methods"]
    denied = client.options(gw.endpoint(limited), headers={"origin": "https://evil.example"})
    assert denied.status_code == 403
    anyone = gw.key().key
    open_preflight = client.options(f"{gw.url}/eth/v1", headers={"origin": "https://x.example"})
    assert open_preflight.headers["access-control-allow-origin"] == "https://x.example"
    assert _call(client, gw.endpoint(anyone), origin="https://x.example").status_code == 200


def test_key_never_leaks(
    gw: ThreadedGateway, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hoodrun")
    created = gw.key()
    bodies = [_call(client, gw.endpoint(created.key)).text]
    bodies.append(_call(client, gw.endpoint(created.key, "nochain")).text)
    bodies.append(_call(client, gw.endpoint(created.key), b"{not json").text)
    gw.run(gw.runtime.keys.revoke(created.id, actor="test"))  # type: ignore[union-attr]
    bodies.append(_call(client, gw.endpoint(created.key)).text)
    bodies.append(client.get(f"{gw.url}/metrics").text)
    bodies += [r.getMessage() for r in caplog.records if r.name.startswith("hoodrun")]
    for text in bodies:
        assert created.key not in text
        assert created.key[3:] not in text


def test_ip_lists_and_trusted_proxies(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    config = make_config(
        sqlite_url,
        {"eth": (1, [eth_anvil])},
        gateway={"trusted_proxies": ["127.0.0.1/32"], "ip_deny": ["203.0.113.0/24"]},
    )
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key().key
    # The peer (127.0.0.1) is a trusted proxy, so the client is the address it forwards.
    denied = _call(client, gw.endpoint(key), **{"x-forwarded-for": "203.0.113.5"})
    assert _error(denied) == (403, -32016, "ip_denied")
    assert _call(client, gw.endpoint(key), **{"x-forwarded-for": "198.51.100.1"}).status_code == 200
    # A client cannot hide behind an address it puts further left in the header.
    spoofed = _call(client, gw.endpoint(key), **{"x-forwarded-for": "198.51.100.1, 203.0.113.5"})
    assert spoofed.status_code == 403

    untrusted = make_config(
        sqlite_url, {"eth": (1, [eth_anvil])}, gateway={"ip_deny": ["203.0.113.0/24"]}
    )
    gw2: ThreadedGateway = gateway_factory(untrusted)
    key2 = gw2.key().key
    # Without trusted proxies the header is ignored: the socket peer is allowed.
    assert (
        _call(client, gw2.endpoint(key2), **{"x-forwarded-for": "203.0.113.5"}).status_code == 200
    )

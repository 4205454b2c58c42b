"""Rate limits through the gateway: in process, and shared by two gateways through Redis."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import REDIS_URL
from tests.gateway.conftest import ThreadedGateway, make_config, rpc

BODY = orjson.dumps(rpc("eth_chainId"))


def _post(client: httpx.Client, url: str, body: bytes = BODY) -> httpx.Response:
    return client.post(url, content=body)


@pytest.fixture(params=["memory", "redis"])
def limiter_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _config(sqlite_url: str, eth_anvil: Any, kind: str, prefix: str, **extra: Any) -> Any:
    redis = {"redis_url": REDIS_URL, "redis_prefix": prefix} if kind == "redis" else {}
    return make_config(sqlite_url, {"eth": (1, [eth_anvil])}, **redis, **extra)


def test_free_plan_burst_then_429(
    gateway_factory: Any,
    sqlite_url: str,
    eth_anvil: Any,
    limiter_kind: str,
    redis_prefix: str,
    client: httpx.Client,
) -> None:
    gw: ThreadedGateway = gateway_factory(
        _config(sqlite_url, eth_anvil, limiter_kind, redis_prefix)
    )
    key = gw.key(plan="free").key  # 10 rps, burst 20
    statuses = [_post(client, gw.endpoint(key)) for _ in range(30)]
    allowed = [r for r in statuses if r.status_code == 200]
    refused = [r for r in statuses if r.status_code == 429]
    # 20 in the burst plus what refilled while the 30 calls ran.
    assert 20 <= len(allowed) < 30 and refused
    first_ok = allowed[0]
    assert first_ok.headers["x-ratelimit-limit"] == "20"
    assert int(first_ok.headers["x-ratelimit-remaining"]) == 19
    denied = refused[0]
    body = denied.json()
    assert body["error"]["code"] == -32005 and body["error"]["data"]["reason"] == "rate_limited"
    assert int(denied.headers["retry-after"]) >= 1
    assert denied.headers["x-ratelimit-remaining"] == "0"
    # A second key is not affected by the first key's use.
    assert _post(client, gw.endpoint(gw.key(plan="free").key)).status_code == 200
    metrics = client.get(f"{gw.url}/metrics").text
    assert 'hoodrun_rate_limit_refusals_total{chain="eth",scope="k"}' in metrics


def test_batch_costs_its_calls(
    gateway_factory: Any,
    sqlite_url: str,
    eth_anvil: Any,
    limiter_kind: str,
    redis_prefix: str,
    client: httpx.Client,
) -> None:
    gw: ThreadedGateway = gateway_factory(
        _config(sqlite_url, eth_anvil, limiter_kind, redis_prefix)
    )
    key = gw.key(plan="free").key
    big = orjson.dumps([rpc("eth_chainId", id=i) for i in range(25)])
    refused = _post(client, gw.endpoint(key), big)
    assert refused.status_code == 429  # 25 calls > burst 20, and nothing was charged
    fits = orjson.dumps([rpc("eth_chainId", id=i) for i in range(15)])
    assert _post(client, gw.endpoint(key), fits).status_code == 200
    assert _post(client, gw.endpoint(key), fits).status_code == 429


def test_chain_global_limit_and_per_ip_public_access(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    config = make_config(
        sqlite_url, {"eth": (1, [eth_anvil])}, public={"enabled": True, "plan": "free"}
    )
    data = config.model_dump(mode="json")
    data["chains"][0]["rate"] = {"rps": 1, "burst": 30}
    gw: ThreadedGateway = gateway_factory(type(config).model_validate(data))
    keyless = [_post(client, f"{gw.url}/eth/v1") for _ in range(25)]
    assert sum(r.status_code == 200 for r in keyless) < 25  # the per-IP free limit (burst 20)
    assert keyless[-1].json()["error"]["code"] == -32005
    key = gw.key(plan="enterprise").key
    rest = [_post(client, gw.endpoint(key)) for _ in range(30)]
    # The chain's global bucket (burst 30) is shared with the keyless calls above.
    assert any(r.status_code == 429 for r in rest)


def test_two_gateways_share_one_limit_through_redis(
    gateway_factory: Any, tmp_path: Any, eth_anvil: Any, redis_prefix: str
) -> None:
    db = f"sqlite:///{tmp_path}/shared.db"
    config = make_config(
        db, {"eth": (1, [eth_anvil])}, redis_url=REDIS_URL, redis_prefix=redis_prefix
    )
    a: ThreadedGateway = gateway_factory(config)
    b: ThreadedGateway = gateway_factory(config)
    # A key allowing 50/s with burst 100: over ~2 s, at most 100 + 50 x elapsed pass in total.
    key = a.key(plan="pro", rps=50, burst=100).key
    started = time.monotonic()

    def hammer(gw: ThreadedGateway) -> list[int]:
        with httpx.Client() as c:
            return [_post(c, gw.endpoint(key)).status_code for _ in range(150)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(hammer, [a, b, a, b]))
    elapsed = time.monotonic() - started
    allowed = sum(s == 200 for r in results for s in r)
    assert all(s in (200, 429) for r in results for s in r)
    ceiling = 100 + 50 * elapsed
    assert allowed <= ceiling * 1.03 + 1
    assert allowed >= 100  # the burst is fully usable across both
    assert sum(s == 200 for s in results[0] + results[2]) > 0
    assert sum(s == 200 for s in results[1] + results[3]) > 0


def test_revocation_reaches_the_other_gateway_within_1s(
    gateway_factory: Any,
    tmp_path: Any,
    database_url: str,
    eth_anvil: Any,
    redis_prefix: str,
    client: httpx.Client,
) -> None:
    config = make_config(
        database_url, {"eth": (1, [eth_anvil])}, redis_url=REDIS_URL, redis_prefix=redis_prefix
    )
    a: ThreadedGateway = gateway_factory(config)
    b: ThreadedGateway = gateway_factory(config)
    created = a.key()
    assert _post(client, b.endpoint(created.key)).status_code == 200  # b has it cached now
    a.run(a.runtime.keys.revoke(created.id, actor="test"))  # type: ignore[union-attr]
    revoked_at = time.monotonic()
    while time.monotonic() - revoked_at < 1.0:
        if _post(client, b.endpoint(created.key)).status_code == 401:
            break
        time.sleep(0.02)
    else:
        pytest.fail("gateway b still accepted the revoked key 1 s after revocation")

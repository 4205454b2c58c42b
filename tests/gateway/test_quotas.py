"""Monthly quotas: the gateway refuses a key once its plan's quota is used, with an error that
names the quota and its reset, and takes it again after a plan upgrade, without a restart."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson

from hoodrun.config import Config

from .conftest import ThreadedGateway, make_config, rpc
from .test_telemetry import _analytics_config

PLANS = [
    {"name": "free", "rate": {"rps": 1000, "burst": 1000}},
    {"name": "small", "rate": {"rps": 1000, "burst": 1000}, "quotas": {"requests": 5}},
    {"name": "units", "rate": {"rps": 1000, "burst": 1000}, "quotas": {"compute_units": 30}},
    {"name": "big", "rate": {"rps": 1000, "burst": 1000}, "quotas": {"requests": 1000}},
    {
        "name": "no-trace",
        "rate": {"rps": 1000, "burst": 1000},
        "trace": False,
        "methods": {"deny": ["eth_getBalance"]},
        "quotas": {"requests": 5},
    },
    {
        "name": "capped",
        "rate": {"rps": 1000, "burst": 1000},
        "price": {"type": "METERED", "currency": "USD", "per": 10, "tiers": [{"unit_price": "1"}]},
        "spending_cap": "3",
    },
]


def _config(config: Config) -> Config:
    data = config.model_dump(mode="json")
    data.update(plans=PLANS, default_plan="free", cache={"enabled": False})
    return Config.model_validate(data)


def call(client: httpx.Client, url: str, method: str = "eth_blockNumber") -> httpx.Response:
    return client.post(url, content=orjson.dumps(rpc(method)))


def test_a_used_quota_refuses_until_the_plan_changes(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(
        _config(make_config(sqlite_url, {"eth": (1, [eth_anvil])}))
    )
    created = gw.key(plan="small")
    url = gw.endpoint(created.key)
    for _ in range(3):
        assert call(client, url).status_code == 200
    # A batch counts each call: 2 more make 5.
    batch = client.post(
        url, content=orjson.dumps([rpc("eth_blockNumber", id=1), rpc("eth_chainId", id=2)])
    )
    assert batch.status_code == 200 and len(batch.json()) == 2
    refused = call(client, url)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == -32005 and error["data"]["reason"] == "quota_exceeded"
    assert "plan 'small' allows 5 requests a month and 5 were used" in error["message"]
    assert "resets at 20" in error["message"] and "upgrade the plan" in error["message"]
    assert int(refused.headers["retry-after"]) > 0
    # Refused calls did not count: still 5 used.
    assert "5 were used" in call(client, url).json()["error"]["message"]
    # Another org is not affected.
    other = gw.key(plan="small", org="other-org")
    assert call(client, gw.endpoint(other.key)).status_code == 200

    assert gw.runtime is not None and gw.runtime.keys is not None
    gw.run(gw.runtime.keys.change_plan(created.id, "big", actor="test"))
    answer = _eventually_ok(client, url)
    assert answer.json()["result"].startswith("0x")


def test_compute_unit_quotas_weigh_each_method(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(
        _config(make_config(sqlite_url, {"eth": (1, [eth_anvil])}))
    )
    url = gw.endpoint(gw.key(plan="units").key)
    for _ in range(5):  # eth_chainId is free
        assert call(client, url, "eth_chainId").status_code == 200
    for _ in range(3):  # 10 units each: 30
        assert call(client, url).status_code == 200
    refused = call(client, url, "eth_chainId")
    assert refused.status_code == 429
    assert "allows 30 compute_units a month and 30 were used" in refused.json()["error"]["message"]


def test_a_spending_cap_refuses_once_reached(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(
        _config(make_config(sqlite_url, {"eth": (1, [eth_anvil])}))
    )
    url = gw.endpoint(gw.key(plan="capped").key)
    # eth_blockNumber: 10 units, 1 USD each 10 units. The amount so far is recomputed each
    # second, so a few calls more may pass before the refusal.
    answer = _eventually_refused(client, url)
    error = answer.json()["error"]
    assert error["code"] == -32005 and error["data"]["reason"] == "spending_cap_reached"
    assert "plan 'capped' stops at 3 USD a month" in error["message"]
    used = float(error["message"].split(" and ")[1].split(" USD")[0])
    assert used >= 3


def test_an_org_plan_change_lifts_the_quota_of_its_keys(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(
        _config(make_config(sqlite_url, {"eth": (1, [eth_anvil])}))
    )
    assert gw.runtime is not None and gw.runtime.keys is not None
    created = gw.key(plan=None, org="acme")  # the org's plan applies
    gw.run(gw.runtime.keys.change_org_plan(created.record.org_id, "small", actor="test"))
    url = gw.endpoint(created.key)
    _eventually_refused(client, url)
    gw.run(gw.runtime.keys.change_org_plan(created.record.org_id, "big", actor="test"))
    assert _eventually_ok(client, url).status_code == 200


def test_notifications_a_batch_refuses_are_not_counted(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    # Refused calls are not billable, answered or not: a notification gets no answer, and a
    # refused one must not count either.
    gw: ThreadedGateway = gateway_factory(
        _config(make_config(sqlite_url, {"eth": (1, [eth_anvil])}))
    )
    url = gw.endpoint(gw.key(plan="no-trace").key)
    trace = {"jsonrpc": "2.0", "method": "debug_traceTransaction", "params": ["0x" + "00" * 32]}
    denied = {"jsonrpc": "2.0", "method": "eth_getBalance", "params": ["0x" + "00" * 20]}
    subscribe = {"jsonrpc": "2.0", "method": "eth_subscribe", "params": ["newHeads"]}
    batch = client.post(
        url, content=orjson.dumps([trace, denied, subscribe, trace, rpc("eth_blockNumber", id=1)])
    )
    assert batch.status_code == 200
    assert [answer["id"] for answer in batch.json()] == [1]  # notifications get no answer
    for _ in range(4):  # 1 was used: 4 more make 5
        assert call(client, url).status_code == 200
    refused = call(client, url)
    assert refused.status_code == 429 and "5 were used" in refused.json()["error"]["message"]


def test_the_month_so_far_survives_a_restart(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client, chdb_path: Any
) -> None:
    database = f"q_{uuid.uuid4().hex[:10]}"
    config = _config(_analytics_config(sqlite_url, eth_anvil, chdb_path, database))
    first: ThreadedGateway = gateway_factory(config)
    created = first.key(plan="small")
    for _ in range(4):
        assert call(client, first.endpoint(created.key)).status_code == 200
    first.stop()  # a graceful stop writes the records
    second: ThreadedGateway = gateway_factory(config)
    url = second.endpoint(created.key)
    assert call(client, url).status_code == 200  # the 5th
    refused = call(client, url)
    assert refused.status_code == 429 and "5 were used" in refused.json()["error"]["message"]


def _eventually_ok(client: httpx.Client, url: str) -> httpx.Response:
    return _eventually(client, url, 200)


def _eventually_refused(client: httpx.Client, url: str) -> httpx.Response:
    return _eventually(client, url, 429)


def _eventually(client: httpx.Client, url: str, status: int) -> httpx.Response:
    """The key change reaches the gateway through its events (or its poll, within a second)."""
    import time

    deadline = time.monotonic() + 10
    while True:
        answer = call(client, url)
        if answer.status_code == status or time.monotonic() > deadline:
            assert answer.status_code == status, answer.text
            return answer
        time.sleep(0.05)

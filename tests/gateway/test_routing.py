"""Routing by need: old state to archive nodes, traces to trace nodes, plans gating both, and
a clear error when no node can serve a call."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.config import ChainConfig, PlanConfig, RateConfig, UpstreamConfig
from hoodrun.devnet import Anvil
from tests.gateway.conftest import CountingProxy, ThreadedGateway, make_config, rpc

ADDRESS = "0x" + "22" * 20


@pytest.fixture
def nodes(anvil_factory: Any) -> Iterator[dict[str, tuple[Anvil, CountingProxy]]]:
    made = {}
    for name in ("full", "archive"):
        node: Anvil = anvil_factory(chain_id=1)
        httpx.post(node.url, json=rpc("anvil_mine", ["0x14"]), timeout=10)  # head 20
        made[name] = (node, CountingProxy(node.url, "eth_getBalance", delay=0))
    yield made
    for _, proxy in made.values():
        proxy.stop()


def _gateway(gateway_factory: Any, sqlite_url: str, nodes: Any) -> ThreadedGateway:
    chain = ChainConfig(
        name="eth", chain_id=1, history=5,
        upstreams=(
            UpstreamConfig(name="full", url=nodes["full"][1].url),
            UpstreamConfig(name="archive", url=nodes["archive"][1].url, tags=("archive", "trace")),
        ),
    )  # fmt: skip
    config = make_config(sqlite_url, {}, gateway={"max_retries": 0})
    plans = (
        *config.plans,
        PlanConfig(name="recent", rate=RateConfig(rps=100), archive=False, trace=False),
    )
    gw: ThreadedGateway = gateway_factory(
        config.model_copy(update={"chains": (chain,), "plans": plans})
    )
    assert gw.runtime is not None and gw.runtime.gateway is not None
    pool = gw.runtime.gateway.chains["eth"].pool
    deadline = time.monotonic() + 10
    while pool.best_head() != 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.best_head() == 20
    return gw


def _balance(client: httpx.Client, url: str, block: str) -> httpx.Response:
    return client.post(url, content=orjson.dumps(rpc("eth_getBalance", [ADDRESS, block])))


def test_old_state_goes_to_the_archive_node_and_recent_state_to_the_full_node(
    gateway_factory: Any, sqlite_url: str, nodes: Any, client: httpx.Client
) -> None:
    gw = _gateway(gateway_factory, sqlite_url, nodes)
    url = gw.endpoint(gw.key(plan="pro").key)
    full, archive = nodes["full"][1], nodes["archive"][1]
    assert _balance(client, url, "0x1").json()["result"] == "0x0"  # 19 blocks back
    assert (full.count, archive.count) == (0, 1)
    for block in ("latest", "0x12", "0xf"):  # within the 5-block window: any node, the plain one
        assert _balance(client, url, block).status_code == 200
    assert (full.count, archive.count) == (3, 1)
    assert _balance(client, url, "earliest").status_code == 200
    assert (full.count, archive.count) == (3, 2)
    # In a batch, the old read takes the whole upstream batch to the archive node.
    batch = [rpc("eth_getBalance", [ADDRESS, "0x2"], id=1), rpc("eth_chainId", id=2)]
    assert [a["id"] for a in client.post(url, content=orjson.dumps(batch)).json()] == [1, 2]
    assert archive.count == 3


def test_plans_gate_archive_and_trace_access(
    gateway_factory: Any, sqlite_url: str, nodes: Any, client: httpx.Client
) -> None:
    gw = _gateway(gateway_factory, sqlite_url, nodes)
    url = gw.endpoint(gw.key(plan="recent").key)
    refused = _balance(client, url, "0x1")
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == -32004 and error["data"]["reason"] == "archive_not_allowed"
    assert "archive" in error["message"] and "'recent'" in error["message"]
    assert _balance(client, url, "latest").status_code == 200
    traced = client.post(
        url, content=orjson.dumps(rpc("debug_traceTransaction", ["0x" + "00" * 32]))
    )
    assert traced.json()["error"]["data"]["reason"] == "trace_not_allowed"
    batch = [rpc("eth_getBalance", [ADDRESS, "0x1"], id=1), rpc("eth_chainId", id=2)]
    first, second = client.post(url, content=orjson.dumps(batch)).json()
    assert first["error"]["data"]["reason"] == "archive_not_allowed" and second["result"] == "0x1"


def test_no_healthy_archive_node_is_a_clear_503(
    gateway_factory: Any, sqlite_url: str, nodes: Any, client: httpx.Client
) -> None:
    gw = _gateway(gateway_factory, sqlite_url, nodes)
    url = gw.endpoint(gw.key(plan="pro").key)
    nodes["archive"][0].stop()
    assert gw.runtime is not None and gw.runtime.gateway is not None
    pool = gw.runtime.gateway.chains["eth"].pool
    deadline = time.monotonic() + 10
    while pool.upstreams[1].healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = _balance(client, url, "0x1")
    assert answer.status_code == 503
    assert "'archive'" in answer.json()["error"]["message"]
    assert _balance(client, url, "latest").status_code == 200  # the full node still serves


def test_reads_at_the_tip_go_to_nodes_at_the_best_head(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    ahead: Anvil = anvil_factory(chain_id=1, extra_args=("--slots-in-an-epoch", "1"))
    behind: Anvil = anvil_factory(chain_id=1, extra_args=("--slots-in-an-epoch", "1"))
    httpx.post(ahead.url, json=rpc("anvil_mine", ["0x14"]), timeout=10)  # head 20
    httpx.post(behind.url, json=rpc("anvil_mine", ["0x10"]), timeout=10)  # head 16: lagging

    def at_latest(call: dict[str, Any]) -> bool:
        return call.get("params", [None])[0] == "latest"  # not the health checks' "finalized"

    proxies = {
        name: CountingProxy(node.url, "eth_getBlockByNumber", delay=0, where=at_latest)
        for name, node in (("ahead", ahead), ("behind", behind))
    }
    try:
        chain = ChainConfig(
            name="eth", chain_id=1,
            upstreams=tuple(UpstreamConfig(name=n, url=p.url) for n, p in proxies.items()),
        )  # fmt: skip
        config = make_config(sqlite_url, {}, health={"max_lag": 10})  # "behind" stays in
        gw: ThreadedGateway = gateway_factory(config.model_copy(update={"chains": (chain,)}))
        assert gw.runtime is not None and gw.runtime.gateway is not None
        pool = gw.runtime.gateway.chains["eth"].pool
        deadline = time.monotonic() + 10
        while not (pool.best_head() == 20 and all(up.healthy for up in pool.upstreams)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        url = gw.endpoint(gw.key(plan="pro").key)
        heads = []
        for _ in range(10):
            block = client.post(
                url, content=orjson.dumps(rpc("eth_getBlockByNumber", ["latest", False]))
            )
            heads.append(int(block.json()["result"]["number"], 16))
            heads.append(
                int(
                    client.post(url, content=orjson.dumps(rpc("eth_blockNumber"))).json()["result"],
                    16,
                )
            )
        assert heads == [20] * 20  # never the lagging node's 16
        assert (proxies["ahead"].count, proxies["behind"].count) == (10, 0)
        # "finalized" is pinned to a number every healthy node has: the lower one's (14).
        final = client.post(
            url, content=orjson.dumps(rpc("eth_getBlockByNumber", ["finalized", False]))
        )
        assert int(final.json()["result"]["number"], 16) == 14
    finally:
        for proxy in proxies.values():
            proxy.stop()

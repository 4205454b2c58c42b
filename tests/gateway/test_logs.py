"""eth_getLogs guards: the plan's block range (tags resolved) and result size, with clear errors;
long ranges split into the nodes' chunk size and merged in order."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from hoodrun.config import Config, PlanConfig, RateConfig
from hoodrun.devnet import Anvil
from tests.gateway.conftest import CountingProxy, ThreadedGateway, make_config, rpc

SENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's first funded account
EMITTER = "0x600080a000"  # init code: LOG0(0, 0), then stop: one log per deployment


def _direct(client: httpx.Client, node: Anvil, method: str, params: list[Any]) -> Any:
    return client.post(node.url, json=rpc(method, params)).json()


@pytest.fixture
def logs_node(anvil_factory: Any) -> Anvil:
    """A chain whose blocks 1..6 each hold one log, then 4 empty blocks (head 10)."""
    node: Anvil = anvil_factory(chain_id=1)
    with httpx.Client(timeout=10) as client:
        for _ in range(6):
            _direct(client, node, "eth_sendTransaction", [{"from": SENDER, "data": EMITTER}])
        _direct(client, node, "anvil_mine", ["0x4"])
    return node


def _config(sqlite_url: str, node: Anvil, **chain: Any) -> Config:
    config = make_config(sqlite_url, {"eth": (1, [node])}, gateway={"max_logs_range": 8})
    plans = (
        *config.plans,
        PlanConfig(name="tiny", rate=RateConfig(rps=100), max_logs_range=3, max_logs_results=2),
    )
    chains = tuple(c.model_copy(update=chain) for c in config.chains)
    return config.model_copy(update={"plans": plans, "chains": chains})


def _logs(client: httpx.Client, url: str, query: dict[str, Any]) -> httpx.Response:
    return client.post(url, content=orjson.dumps(rpc("eth_getLogs", [query])))


def test_ranges_over_the_limit_are_refused_naming_it(
    gateway_factory: Any, sqlite_url: str, logs_node: Anvil, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(_config(sqlite_url, logs_node))
    url = gw.endpoint(gw.key(plan="pro").key)
    fine = _logs(client, url, {"fromBlock": "0x1", "toBlock": "0x8"})
    direct = _direct(client, logs_node, "eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x8"}])
    assert fine.status_code == 200 and fine.json() == direct and len(direct["result"]) == 6
    refused = _logs(client, url, {"fromBlock": "0x1", "toBlock": "0x9"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == -32005 and error["data"]["reason"] == "logs_range_exceeded"
    assert "9 blocks asked" in error["message"] and "allows 8" in error["message"]
    # Tags are resolved to this chain's numbers: earliest..latest is 11 blocks.
    tagged = _logs(client, url, {"fromBlock": "earliest", "toBlock": "latest"})
    assert tagged.json()["error"]["data"]["reason"] == "logs_range_exceeded"
    assert _logs(client, url, {"fromBlock": "0x3"}).status_code == 200  # 3..latest = 8 blocks
    # By block hash: one block, no range to check.
    block = _direct(client, logs_node, "eth_getBlockByNumber", ["0x2", False])["result"]
    by_hash = _logs(client, url, {"blockHash": block["hash"]})
    assert len(by_hash.json()["result"]) == 1


def test_plans_set_their_own_limits_also_inside_batches(
    gateway_factory: Any, sqlite_url: str, logs_node: Anvil, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(_config(sqlite_url, logs_node))
    url = gw.endpoint(gw.key(plan="tiny").key)
    assert _logs(client, url, {"fromBlock": "0x1", "toBlock": "0x4"}).status_code == 400
    too_many = _logs(client, url, {"fromBlock": "0x1", "toBlock": "0x3"})  # 3 logs, plan: 2
    assert too_many.status_code == 400
    error = too_many.json()["error"]
    assert error["data"]["reason"] == "logs_results_exceeded" and "allows 2" in error["message"]
    assert len(_logs(client, url, {"fromBlock": "0x7", "toBlock": "0x9"}).json()["result"]) == 0
    batch = [
        rpc("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x9"}], id=1),
        rpc("eth_chainId", id=2),
    ]
    first, second = client.post(url, content=orjson.dumps(batch)).json()
    assert first["error"]["data"]["reason"] == "logs_range_exceeded" and first["id"] == 1
    assert second["result"] == "0x1"


def test_long_ranges_are_split_into_the_nodes_chunks_and_merged_in_order(
    gateway_factory: Any, sqlite_url: str, logs_node: Anvil, client: httpx.Client
) -> None:
    from hoodrun.config import ChainConfig, UpstreamConfig

    proxy = CountingProxy(logs_node.url, "eth_getLogs", delay=0)
    try:
        config = _config(sqlite_url, logs_node)
        chain = ChainConfig(
            name="eth", chain_id=1, logs_chunk=2,
            upstreams=(UpstreamConfig(name="eth-0", url=proxy.url),),
        )  # fmt: skip
        gw: ThreadedGateway = gateway_factory(config.model_copy(update={"chains": (chain,)}))
        url = gw.endpoint(gw.key(plan="pro").key)
        query = {"fromBlock": "0x0", "toBlock": "0x7"}
        merged = _logs(client, url, query)
        direct = _direct(client, logs_node, "eth_getLogs", [query])
        assert merged.status_code == 200 and merged.json() == direct
        numbers = [int(log["blockNumber"], 16) for log in merged.json()["result"]]
        assert numbers == [1, 2, 3, 4, 5, 6]
        assert proxy.count == 4  # blocks 0-1, 2-3, 4-5, 6-7
    finally:
        proxy.stop()

"""The response cache serves only final answers, stays right across a reorg, and identical reads
in flight share one upstream call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.devnet import Anvil
from hoodrun.gateway.cache import Coalescer, MemoryCache, plan_cache
from tests.gateway.conftest import CountingProxy, ThreadedGateway, make_config, rpc

ADDRESS = "0x" + "11" * 20
HASH = "0x" + "ab" * 32


# --- what may be cached ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params", "cached"),
    [
        ("eth_chainId", [], True),
        ("eth_getBlockByNumber", ["0x5", False], True),  # at or below finalized (8)
        ("eth_getBlockByNumber", ["0x8", True], True),
        ("eth_getBlockByNumber", ["0x9", False], False),  # above finalized: may be reorged
        ("eth_getBlockByNumber", ["latest", False], False),
        ("eth_getBlockByNumber", ["finalized", False], False),  # the tag moves
        ("eth_getBlockByNumber", ["safe", False], False),
        ("eth_getBlockByNumber", ["pending", False], False),
        ("eth_getBlockByNumber", ["earliest", False], True),
        ("eth_getBlockByHash", [HASH, False], True),
        ("eth_getBalance", [ADDRESS], False),  # no block: latest
        ("eth_getBalance", [ADDRESS, "0x3"], True),
        ("eth_getBalance", [ADDRESS, {"blockHash": HASH}], True),  # EIP-1898
        ("eth_getBalance", [ADDRESS, {"blockNumber": "0x9"}], False),
        ("eth_call", [{"to": ADDRESS, "data": "0x"}, "0x2"], True),
        ("eth_call", [{"to": ADDRESS, "data": "0x"}, "latest"], False),
        ("eth_getStorageAt", [ADDRESS, "0x0", "0x4"], True),
        ("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x8"}], True),
        ("eth_getLogs", [{"fromBlock": "0x1", "toBlock": "0x9"}], False),
        ("eth_getLogs", [{"fromBlock": "0x1"}], False),  # toBlock defaults to latest
        ("eth_getLogs", [{"fromBlock": "earliest", "toBlock": "0x2"}], False),
        ("eth_getLogs", [{"blockHash": HASH}], True),
        ("eth_getTransactionReceipt", [HASH], True),  # subject to the answer's block
        ("eth_sendRawTransaction", ["0x00"], False),
        ("eth_blockNumber", [], False),
        ("eth_getFilterChanges", ["0x1"], False),
        ("debug_traceTransaction", [HASH], False),
    ],
)
def test_only_answers_that_cannot_change_are_cacheable(
    method: str, params: list[Any], cached: bool
) -> None:
    assert (plan_cache("eth", method, params, finalized=8) is not None) is cached


def test_nothing_at_a_height_is_cached_before_the_chain_reports_finality() -> None:
    assert plan_cache("eth", "eth_getBlockByNumber", ["0x1", False], None) is None
    assert plan_cache("eth", "eth_chainId", [], None) is not None


def test_answers_are_stored_only_when_final_and_not_null() -> None:
    receipt = plan_cache("eth", "eth_getTransactionReceipt", [HASH], finalized=8)
    assert receipt is not None
    assert receipt.admits({"blockNumber": "0x8"}, 8)
    assert not receipt.admits({"blockNumber": "0x9"}, 8)  # included, not final yet
    assert not receipt.admits(None, 8)  # unknown (yet)
    block = plan_cache("eth", "eth_getBlockByHash", [HASH, False], finalized=8)
    assert block is not None and not block.admits(None, 8)
    code = plan_cache("eth", "eth_getCode", [ADDRESS, "0x1"], finalized=8)
    assert code is not None and code.admits("0x", 8)  # an account without code: a real answer
    assert (
        plan_cache("eth", "eth_getCode", [ADDRESS, "0x1"], 8).key
        != plan_cache(  # type: ignore[union-attr]
            "base", "eth_getCode", [ADDRESS, "0x1"], 8
        ).key
    )  # type: ignore[union-attr]


def test_memory_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    cache = MemoryCache(max_bytes=8000)
    for n in range(10):
        cache.put(f"k{n}", b"x" * 900)
    assert cache.size <= 8000 and cache.evictions >= 2
    assert cache.get("k0") is None and cache.get("k9") is not None
    cache.get("k3")  # recently used: survives the next evictions
    cache.put("k10", b"y" * 900)
    cache.put("k11", b"y" * 900)
    assert cache.get("k3") is not None
    cache.put("huge", b"z" * 5000)  # more than an eighth of the cache: not kept
    assert cache.get("huge") is None


async def test_coalescer_shares_one_call_and_its_failure() -> None:
    coalescer = Coalescer()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "answer"

    outcomes = await asyncio.gather(*(coalescer.run(b"k", slow) for _ in range(20)))
    assert calls == 1 and [o for o, _ in outcomes] == ["answer"] * 20
    assert sum(shared for _, shared in outcomes) == 19

    async def failing() -> str:
        await asyncio.sleep(0.02)
        raise ValueError("node down")

    results = await asyncio.gather(
        *(coalescer.run(b"f", failing) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    # The leader's client leaves: the ones waiting make the call themselves.
    leader = asyncio.ensure_future(coalescer.run(b"c", slow))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(coalescer.run(b"c", slow))
    await asyncio.sleep(0.01)
    leader.cancel()
    assert (await follower) == ("answer", False)


# --- through the gateway, against anvil --------------------------------------------------------


def _rpc(client: httpx.Client, url: str, method: str, params: list[Any]) -> httpx.Response:
    return client.post(url, json=rpc(method, params))  # anvil wants the content type


def _mine(node: Anvil, client: httpx.Client, blocks: int) -> None:
    _rpc(client, node.url, "anvil_mine", [hex(blocks)])


def _finalized(gw: ThreadedGateway) -> int | None:
    assert gw.runtime is not None and gw.runtime.gateway is not None
    return gw.runtime.gateway.chains["eth"].pool.finalized_head()


def test_final_blocks_come_from_the_cache_and_a_reorg_is_never_served_stale(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    node: Anvil = anvil_factory(chain_id=1, extra_args=("--slots-in-an-epoch", "1"))
    gw: ThreadedGateway = gateway_factory(make_config(sqlite_url, {"eth": (1, [node])}))
    url = gw.endpoint(gw.key().key)
    _mine(node, client, 10)  # head 10, finalized 8
    deadline = time.monotonic() + 10
    while _finalized(gw) != 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _finalized(gw) == 8

    first = _rpc(client, url, "eth_getBlockByNumber", ["0x5", False])
    again = _rpc(client, url, "eth_getBlockByNumber", ["0x5", False])
    direct = _rpc(client, node.url, "eth_getBlockByNumber", ["0x5", False])
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert again.json() == first.json() == direct.json()

    # Block 10 is not final: never cached, so after anvil replaces it the new one is served.
    before = _rpc(client, url, "eth_getBlockByNumber", ["0xa", False]).json()["result"]["hash"]
    assert "x-cache" not in _rpc(client, url, "eth_getBlockByNumber", ["0xa", False]).headers
    _rpc(client, node.url, "anvil_reorg", [2, []])
    after = _rpc(client, url, "eth_getBlockByNumber", ["0xa", False]).json()["result"]["hash"]
    fresh = _rpc(client, node.url, "eth_getBlockByNumber", ["0xa", False]).json()["result"]["hash"]
    assert after == fresh and after != before
    # The final block is still right (anvil_reorg of 2 left it alone).
    assert _rpc(client, url, "eth_getBlockByNumber", ["0x5", False]).json() == direct.json()

    metrics = client.get(f"{gw.url}/metrics").text
    assert 'hoodrun_cache_lookups_total{chain="eth",result="hit"}' in metrics


def test_cache_hits_are_marked_in_the_telemetry_record(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil, client: httpx.Client
) -> None:
    from tests.gateway.test_telemetry import ListSink

    sink = ListSink()
    gw: ThreadedGateway = gateway_factory(
        make_config(sqlite_url, {"eth": (1, [eth_anvil])}), (sink,)
    )
    url = gw.endpoint(gw.key().key)
    answers = [_rpc(client, url, "eth_chainId", []) for _ in range(3)]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "HIT", "HIT"]
    assert [a.json()["result"] for a in answers] == ["0x1"] * 3
    assert [r.cache_hit for r in sink.records] == [False, True, True]
    assert sink.records[1].upstream is None  # no node was asked


@pytest.fixture
def proxy(eth_anvil: Anvil) -> Iterator[CountingProxy]:
    counting = CountingProxy(eth_anvil.url, "eth_getBalance", delay=0.5)
    yield counting
    counting.stop()


def test_a_hundred_identical_concurrent_reads_make_one_upstream_call(
    gateway_factory: Any, sqlite_url: str, proxy: CountingProxy
) -> None:
    from hoodrun.config import ChainConfig, UpstreamConfig

    config = make_config(sqlite_url, {})
    config = config.model_copy(
        update={"chains": (ChainConfig(name="eth", chain_id=1, upstreams=(UpstreamConfig(name="eth-0", url=proxy.url),)),)}
    )  # fmt: skip
    gw: ThreadedGateway = gateway_factory(config)
    url = gw.endpoint(gw.key().key)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(url, content=orjson.dumps(rpc("eth_getBalance", [ADDRESS, "latest"], id=n)))
                    for n in range(100)
                )
            )  # fmt: skip

    answers = asyncio.run(burst())
    assert proxy.count == 1
    assert [a.json()["id"] for a in answers] == list(range(100))  # each caller's own id
    assert {a.json()["result"] for a in answers} == {"0x0"}
    assert all("x-cache" not in a.headers for a in answers)  # "latest" is not cacheable


def test_a_read_slower_than_the_hedge_delay_goes_to_a_second_upstream(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil, client: httpx.Client
) -> None:
    from hoodrun.config import ChainConfig, HedgeConfig, UpstreamConfig

    proxies = [CountingProxy(eth_anvil.url, "eth_getBalance", delay=0.3) for _ in range(2)]
    try:
        chain = ChainConfig(
            name="eth", chain_id=1, hedge=HedgeConfig(delay=0.05),
            upstreams=tuple(UpstreamConfig(name=f"eth-{n}", url=p.url) for n, p in enumerate(proxies)),
        )  # fmt: skip
        config = make_config(sqlite_url, {}).model_copy(update={"chains": (chain,)})
        gw: ThreadedGateway = gateway_factory(config)
        url = gw.endpoint(gw.key().key)
        answer = _rpc(client, url, "eth_getBalance", [ADDRESS, "latest"])
        assert answer.json()["result"] == "0x0"
        assert [p.count for p in proxies] == [1, 1]  # the first was slow: both were asked
        metrics = client.get(f"{gw.url}/metrics").text
        assert 'hoodrun_hedged_requests_total{chain="eth"} 1.0' in metrics
    finally:
        for proxy in proxies:
            proxy.stop()


async def _keys(prefix: str) -> list[bytes]:
    import redis.asyncio as redis

    from tests.conftest import REDIS_URL

    connection = redis.Redis.from_url(REDIS_URL)
    try:
        return [k async for k in connection.scan_iter(match=f"{prefix}:cache:*")]
    finally:
        await connection.aclose()


def test_gateways_share_final_answers_through_redis(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, redis_prefix: str,
    redis_client: Any, client: httpx.Client,
) -> None:  # fmt: skip
    from hoodrun.config import ChainConfig, UpstreamConfig
    from tests.conftest import REDIS_URL

    node: Anvil = anvil_factory(chain_id=1, extra_args=("--slots-in-an-epoch", "1"))
    _mine(node, client, 10)
    proxy = CountingProxy(
        node.url, "eth_getBlockByNumber", delay=0, where=lambda c: c["params"][0] == "0x3"
    )
    try:
        chain = ChainConfig(
            name="eth", chain_id=1, upstreams=(UpstreamConfig(name="eth-0", url=proxy.url),)
        )
        config = make_config(sqlite_url, {}, redis_url=REDIS_URL, redis_prefix=redis_prefix)
        config = config.model_copy(
            update={
                "chains": (chain,),
                "cache": config.cache.model_copy(update={"backend": "redis"}),
            }
        )
        first: ThreadedGateway = gateway_factory(config)
        second: ThreadedGateway = gateway_factory(config)
        for gw in (first, second):
            deadline = time.monotonic() + 10
            while _finalized(gw) != 8:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        key = first.key().key
        one = _rpc(client, first.endpoint(key), "eth_getBlockByNumber", ["0x3", False])
        assert one.headers["x-cache"] == "MISS" and proxy.count == 1
        deadline = time.monotonic() + 10  # stored in Redis in the background
        while not asyncio.run(_keys(redis_prefix)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        two = _rpc(client, second.endpoint(key), "eth_getBlockByNumber", ["0x3", False])
        assert two.headers["x-cache"] == "HIT" and two.json() == one.json()
        assert proxy.count == 1  # the second gateway never asked the node
    finally:
        proxy.stop()

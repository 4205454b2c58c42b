"""Health checks and retry classification, with tiny scripted nodes where anvil cannot help."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from hoodrun.devnet import Anvil
from hoodrun.upstreams import (
    BreakerState,
    ChainPool,
    HttpPool,
    UpstreamBadResponse,
    UpstreamRateLimited,
    check_upstream,
)

from .support import (
    Handler,
    MakeServer,
    Request,
    call_body,
    chain_config,
    gateway_config,
    health_config,
    http_response,
    mini_node,
    rpc_result,
)


def deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def level(pool: ChainPool) -> None:
    for up in pool.upstreams:
        up.ewma_latency = 0.001


async def test_check_of_a_real_node(eth_anvil: Anvil) -> None:
    http = HttpPool(eth_anvil.url, max_connections=1)
    try:
        report = await check_upstream(http, 2.0, want_chain_id=True)
        assert report.ok and report.error is None
        assert report.chain_id == 1
        assert report.head is not None and report.head >= 0
        assert report.syncing is False
        assert report.peers is None  # anvil answers net_peerCount with "Method not found"
        assert report.txpool_pending == 0 and report.txpool_queued == 0
        assert report.client_version is not None and report.client_version.startswith("anvil/")
        assert report.batch and report.latency > 0
        # Once the chain id is verified, the client version is not asked again.
        later = await check_upstream(http, 2.0, want_chain_id=False)
        assert later.ok and later.chain_id is None and later.client_version is None
    finally:
        await http.aclose()


async def test_the_node_monitor_sees_the_transaction_pool_fill(anvil_factory: Any) -> None:
    node = anvil_factory(chain_id=1, extra_args=("--no-mining",))
    async with ChainPool(chain_config(node.url), health_config(), gateway_config()) as pool:
        up = pool.upstreams[0]
        assert up.txpool_pending == 0 and up.client_version.startswith("anvil/")
        http = HttpPool(node.url, max_connections=1)
        try:
            accounts = orjson.loads((await http.post(call_body("eth_accounts"), 2.0))[1])
            sender, receiver = accounts["result"][:2]
            for _ in range(3):
                tx = {"from": sender, "to": receiver, "value": "0x1"}
                status, _ = await http.post(call_body("eth_sendTransaction", [tx]), 2.0)
                assert status == 200
        finally:
            await http.aclose()
        await pool.check_now()
        snapshot = pool.snapshot()[0]
        assert snapshot["txpool_pending"] == 3 and snapshot["txpool_queued"] == 0
        assert snapshot["check_latency_ms"] is not None and snapshot["check_latency_ms"] > 0


async def test_nodes_refusing_batches_are_asked_one_call_at_a_time(tiny_server: MakeServer) -> None:
    server = await tiny_server(mini_node(chain_id=1, head=42, batches=False))
    async with ChainPool(chain_config(server.url), health_config(), gateway_config()) as pool:
        up = pool.upstreams[0]
        assert up.healthy and up.head == 42 and up.peers == 5
        assert not up.batch_ok
        asked = len(server.requests)
        await pool.check_now()
        # Remembered: no batch is tried again; the chain id is not asked again once verified.
        methods = [r.json()["method"] for r in server.requests[asked:]]
        assert methods == [
            "eth_blockNumber", "eth_syncing", "net_peerCount", "eth_getBlockByNumber",
            "txpool_status",
        ]  # fmt: skip


async def test_a_provider_refusing_optional_methods_its_own_way_stays_healthy(
    tiny_server: MakeServer,
) -> None:
    """A provider that refuses a batch holding a method off its list with a non-JSON 403, and
    the method alone the same way: only eth_blockNumber and eth_chainId must work."""
    node = mini_node(head=7)

    def handler(request: Request) -> bytes | None:
        parsed = request.json()
        calls = parsed if isinstance(parsed, list) else [parsed]
        if any(call.get("method") == "txpool_status" for call in calls):
            return http_response(b"<html>403 method not on the allow list</html>", 403)
        return node(request)

    server = await tiny_server(handler)
    async with ChainPool(chain_config(server.url), health_config(), gateway_config()) as pool:
        up = pool.upstreams[0]
        assert up.healthy and up.head == 7 and not up.batch_ok
        assert up.txpool_pending is None and up.reason is None


async def test_syncing_and_peerless_nodes_are_out(tiny_server: MakeServer) -> None:
    good = mini_node(head=100)
    syncing = mini_node(head=100, syncing={"currentBlock": "0x64", "highestBlock": "0x200"})
    lonely = mini_node(head=100, peers=1)
    urls = [(await tiny_server(node)).url for node in (good, syncing, lonely)]
    health = health_config(min_peers=2)
    async with ChainPool(chain_config(*urls), health, gateway_config()) as pool:
        reasons = [s["reason"] for s in pool.snapshot()]
        assert reasons == [None, "syncing", "1 peers (fewer than 2)"]
        # A syncing node's head does not set the best head.
        syncing.head = 10_000  # type: ignore[attr-defined]
        syncing.syncing = True  # type: ignore[attr-defined]
        await pool.check_now()
        assert pool.best_head() == 100
        # Recovery puts them back.
        syncing.syncing = False  # type: ignore[attr-defined]
        syncing.head = 101  # type: ignore[attr-defined]
        lonely.peers = 2  # type: ignore[attr-defined]
        await pool.check_now()
        assert [s["healthy"] for s in pool.snapshot()] == [True, True, True]
        assert pool.best_head() == 101


async def test_a_node_that_comes_up_on_the_wrong_chain_stays_out(tiny_server: MakeServer) -> None:
    node = mini_node(chain_id=1)
    broken = [True]

    def handler(request: Request) -> bytes | None:
        return http_response(b"oops", 503) if broken[0] else node(request)

    server = await tiny_server(handler)
    async with ChainPool(chain_config(server.url), health_config(), gateway_config()) as pool:
        up = pool.upstreams[0]
        assert up.reason is not None and "HTTP 503" in up.reason
        node.chain_id = 137  # type: ignore[attr-defined]
        broken[0] = False
        await pool.check_now()
        assert up.reason == "wrong chain id 137 (expected 1)"
        node.chain_id = 1  # type: ignore[attr-defined]
        await pool.check_now()
        assert up.healthy


@pytest.mark.parametrize(
    "reply",
    [
        b'[{"jsonrpc":"2.0","id":[1],"result":"0x1"}]',  # an unhashable id
        b'[{"jsonrpc":"2.0","id":1,"result":"0xzz"}]',  # not a quantity
        b'[{"jsonrpc":"2.0","id":1,"result":null}]',
        b"[]",
        b"<html>",
    ],
)
async def test_malformed_health_answers_fail_the_check_cleanly(
    tiny_server: MakeServer, reply: bytes
) -> None:
    server = await tiny_server(lambda request: http_response(reply))
    http = HttpPool(server.url)
    try:
        report = await check_upstream(http, 2.0, want_chain_id=False)
        assert not report.ok and report.error
    finally:
        await http.aclose()


async def test_5xx_and_non_json_answers_are_retried_elsewhere(tiny_server: MakeServer) -> None:
    bad_status = mini_node()
    html = mini_node()
    good = mini_node(other=lambda call: rpc_result(call, "0xgood"))

    def answering(node: Handler, reply: bytes) -> Handler:
        def handler(request: Request) -> Any:
            parsed = request.json()
            if isinstance(parsed, dict) and parsed["method"] == "eth_call":
                return reply
            return node(request)

        return handler

    first = await tiny_server(answering(bad_status, http_response(b"upstream down", 502)))
    second = await tiny_server(answering(html, http_response(b"<html>maintenance</html>")))
    third = await tiny_server(good)
    config = chain_config(("x", first.url, 100.0), ("y", second.url, 10.0), ("z", third.url, 1.0))
    async with ChainPool(config, health_config(), gateway_config(max_retries=2)) as pool:
        level(pool)  # so that the weights alone decide the order: x, then y, then z
        reply = await pool.call(call_body("eth_call"), deadline=deadline())
        assert (reply.status, reply.upstream, reply.attempts) == (200, "z", 3)
        assert orjson.loads(reply.body)["result"] == "0xgood"
        x, y, _ = pool.upstreams
        assert x.error_rate > 0 and y.error_rate > 0
        assert x.breaker.failures == 1 and y.breaker.failures == 1

    # With fewer retries than bad nodes, the last error is raised.
    async with ChainPool(config, health_config(), gateway_config(max_retries=1)) as pool:
        level(pool)
        try:
            await pool.call(call_body("eth_call"), deadline=deadline())
        except UpstreamBadResponse as exc:
            assert exc.upstream == "y" and exc.status == 200 and "not JSON" in str(exc)
        else:
            raise AssertionError("expected UpstreamBadResponse")


async def test_429_counts_against_the_score_but_not_the_breaker(tiny_server: MakeServer) -> None:
    node = mini_node()

    def handler(request: Request) -> bytes | None:
        parsed = request.json()
        if isinstance(parsed, dict) and parsed["method"] == "eth_call":
            return http_response(b'{"error":"slow down"}', 429)
        return node(request)

    server = await tiny_server(handler)
    health = health_config(breaker_failures=1)
    async with ChainPool(chain_config(server.url), health, gateway_config()) as pool:
        for _ in range(3):
            try:
                await pool.call(call_body("eth_call"), deadline=deadline())
            except UpstreamRateLimited as exc:
                assert exc.http_status == 503 and exc.status == 429
            else:
                raise AssertionError("expected UpstreamRateLimited")
        up = pool.upstreams[0]
        assert up.breaker.state is BreakerState.CLOSED and up.healthy
        assert up.error_rate > 0.2


async def test_4xx_passes_through_without_counting(tiny_server: MakeServer) -> None:
    node = mini_node()

    def handler(request: Request) -> bytes | None:
        parsed = request.json()
        if isinstance(parsed, dict) and parsed["method"] == "eth_call":
            return http_response(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32600}}', 400)
        return node(request)

    server = await tiny_server(handler)
    second = await tiny_server(mini_node())
    config = chain_config(("x", server.url, 100.0), ("y", second.url, 1.0))
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        level(pool)
        reply = await pool.call(call_body("eth_call"), deadline=deadline())
        assert (reply.status, reply.upstream, reply.attempts) == (400, "x", 1)
        assert pool.upstreams[0].error_rate == 0

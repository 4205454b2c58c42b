"""A call slow by nature (a wide eth_getLogs) that times out says nothing about the node's health
for other calls: it does not open the breaker or raise the error rate; a plain call does."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from hoodrun.upstreams import ChainPool, UpstreamTimeout

from .support import (
    HANG,
    MakeServer,
    Request,
    chain_config,
    gateway_config,
    health_config,
    mini_node,
    wait_until,
)

LOGS = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [{}]})


def _hangs_on_logs() -> Any:
    node = mini_node()

    def handler(request: Request) -> Any:
        parsed = request.json()
        if isinstance(parsed, dict) and parsed.get("method") == "eth_getLogs":
            return HANG
        return node(request)

    return handler


async def test_slow_call_timeouts_leave_the_node_healthy(tiny_server: MakeServer) -> None:
    server = await tiny_server(_hangs_on_logs())
    config = chain_config(server.url)
    async with ChainPool(config, health_config(breaker_failures=2), gateway_config()) as pool:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            with pytest.raises(UpstreamTimeout):
                await pool.call(LOGS, deadline=loop.time() + 0.2, slow_ok=True)
        up = pool.upstreams[0]
        assert up.healthy and up.breaker.state.name == "CLOSED" and up.error_rate == 0.0
        for _ in range(2):  # the same timeouts on an ordinary call do count
            with pytest.raises(UpstreamTimeout):
                await pool.call(LOGS, deadline=loop.time() + 0.2)
        assert up.breaker.state.name == "OPEN"


def _slow_on(method: str, seconds: float) -> Any:
    node = mini_node(other=lambda call: {"jsonrpc": "2.0", "id": call.get("id"), "result": "0x1"})

    async def slow(request: Request) -> Any:
        await asyncio.sleep(seconds)
        return node(request)

    def handler(request: Request) -> Any:
        parsed = request.json()
        if isinstance(parsed, dict) and parsed.get("method") == method:
            return slow(request)
        return node(request)

    return handler


CALL = orjson.dumps({"jsonrpc": "2.0", "id": 7, "method": "eth_call", "params": []})


async def test_a_slow_first_upstream_is_hedged_and_the_fast_answer_wins(
    tiny_server: MakeServer,
) -> None:
    slow = await tiny_server(_slow_on("eth_call", 2.0))
    fast = await tiny_server(_slow_on("eth_call", 0.0))
    config = chain_config(("slow", slow.url, 10.0), ("fast", fast.url, 1.0))
    async with ChainPool(config, health_config(), gateway_config(upstream_timeout=10)) as pool:
        pool.upstreams[1].ewma_latency = 1.0  # make "slow" the first choice
        loop = asyncio.get_running_loop()
        reply = await pool.call_hedged(CALL, deadline=loop.time() + 8, delay=0.05)
        # The fast node's answer, while the slow node still holds its copy of the call.
        assert (reply.upstream, reply.hedged, reply.hedge_won) == ("fast", True, True)
        # The losing call is cancelled (not waited for): its slot comes back.
        await wait_until(lambda: pool.upstreams[0].inflight == 0, timeout=1.0)
        assert orjson.loads(reply.body)["result"] == "0x1"
        # A first answer inside the delay: no second request.
        quick = await pool.call_hedged(CALL, deadline=loop.time() + 8, delay=10)
        assert not quick.hedged


async def test_no_second_upstream_means_no_hedge(tiny_server: MakeServer) -> None:
    only = await tiny_server(_slow_on("eth_call", 0.3))
    async with ChainPool(chain_config(only.url), health_config(), gateway_config()) as pool:
        loop = asyncio.get_running_loop()
        reply = await pool.call_hedged(CALL, deadline=loop.time() + 5, delay=0.05)
        assert not reply.hedged and reply.upstream == "a"


async def test_paid_fallbacks_serve_only_when_own_nodes_cannot(tiny_server: MakeServer) -> None:
    from hoodrun.config import ChainConfig, UpstreamConfig

    own = await tiny_server(_slow_on("eth_call", 0.3))
    paid = await tiny_server(_slow_on("eth_call", 0.0))
    config = ChainConfig(
        name="eth", chain_id=1,
        upstreams=(
            UpstreamConfig(name="own", url=own.url, max_inflight=1),
            UpstreamConfig(name="paid", url=paid.url, tier="fallback", weight=100),
        ),
    )  # fmt: skip
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        loop = asyncio.get_running_loop()
        # The own node wins although the paid one is "faster" by weight.
        assert (await pool.call(CALL, deadline=loop.time() + 5)).upstream == "own"
        # Saturated (max_inflight reached): the overflow spills to the paid node.
        replies = await asyncio.gather(
            pool.call(CALL, deadline=loop.time() + 5), pool.call(CALL, deadline=loop.time() + 5)
        )
        assert sorted(r.upstream for r in replies) == ["own", "paid"]
        # Own node down: the paid node serves.
        pool.upstreams[0].out_reason = "test: taken out"
        assert (await pool.call(CALL, deadline=loop.time() + 5)).upstream == "paid"

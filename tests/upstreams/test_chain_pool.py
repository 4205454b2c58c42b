"""ChainPool against real anvil nodes: start-up checks, failover, lag, breaker, fast 503."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from hoodrun.devnet import Anvil, free_port
from hoodrun.upstreams import (
    BreakerState,
    ChainIdMismatch,
    ChainPool,
    NoHealthyUpstream,
    UpstreamConnectError,
    UpstreamTimeout,
)

from .support import (
    FakeClock,
    MakeAnvil,
    call_body,
    chain_config,
    gateway_config,
    health_config,
    pause,
    wait_until,
)


def deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_wrong_chain_id_is_refused_with_a_clear_message(anvil_factory: MakeAnvil) -> None:
    right = anvil_factory(chain_id=1)
    wrong = anvil_factory(chain_id=5)
    pool = ChainPool(
        chain_config(right.url, ("sepolia-node", wrong.url, 1.0), name="eth"),
        health_config(),
        gateway_config(),
    )
    with pytest.raises(ChainIdMismatch) as info:
        await pool.start()
    message = str(info.value)
    assert "chain 'eth'" in message
    assert "upstream 'sepolia-node'" in message
    assert wrong.url in message
    assert "reports chain id 5, expected 1" in message
    with pytest.raises(RuntimeError, match="not running"):
        await pool.call(call_body("eth_chainId"), deadline=deadline())


async def test_unreachable_upstream_is_not_fatal_and_joins_later(
    anvil_factory: MakeAnvil,
    eth_anvil: Anvil,
) -> None:
    port = free_port()
    config = chain_config(eth_anvil.url, f"http://127.0.0.1:{port}/")
    async with ChainPool(config, health_config(interval=0.1), gateway_config()) as pool:
        snap = {s["name"]: s for s in pool.snapshot()}
        assert snap["a"]["healthy"] and snap["a"]["reason"] is None
        assert not snap["b"]["healthy"]
        assert snap["b"]["reason"].startswith("health check failed: UpstreamConnectError")
        for _ in range(5):
            reply = await pool.call(call_body("eth_chainId"), deadline=deadline())
            assert (reply.status, reply.upstream, reply.attempts) == (200, "a", 1)
        late = anvil_factory(chain_id=1, port=port)
        await wait_until(lambda: pool.upstreams[1].healthy)
        assert pool.upstreams[1].chain_verified
        assert late.rpc("eth_chainId") == "0x1"


async def test_calls_keep_succeeding_when_one_node_dies(anvil_factory: MakeAnvil) -> None:
    a, b = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    config = chain_config(a.url, b.url)
    health = health_config(interval=0.1, breaker_failures=3, breaker_cooldown=0.3)
    async with ChainPool(config, health, gateway_config()) as pool:
        body = call_body("eth_chainId")
        replies = await asyncio.gather(*(pool.call(body, deadline=deadline()) for _ in range(50)))
        assert {r.upstream for r in replies} == {"a", "b"}  # load spreads over both
        a.stop()
        for _ in range(3):
            replies = await asyncio.gather(
                *(pool.call(body, deadline=deadline()) for _ in range(30))
            )
            assert all(r.status == 200 and orjson.loads(r.body)["result"] == "0x1" for r in replies)
            assert {r.upstream for r in replies} == {"b"}
        await wait_until(lambda: pool.upstreams[0].out_reason is not None)
        assert pool.upstreams[0].reason.startswith("health check failed")
        assert pool.upstreams[0].error_rate > 0
        a.start()
        # Back once its checks pass and (if the failures opened it) its breaker's probe did.
        await wait_until(lambda: pool.upstreams[0].healthy)
        b.stop()
        reply = await pool.call(body, deadline=deadline())
        assert (reply.status, reply.upstream) == (200, "a")


async def test_a_hanging_node_does_not_hold_up_calls(anvil_factory: MakeAnvil) -> None:
    a, b = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    config = chain_config(a.url, b.url)
    gateway = gateway_config(upstream_timeout=0.3)
    health = health_config(interval=0.1, timeout=0.3, breaker_cooldown=0.3)
    async with ChainPool(config, health, gateway) as pool:
        pause(a)
        try:
            body = call_body("eth_blockNumber")
            replies = await asyncio.gather(
                *(pool.call(body, deadline=deadline()) for _ in range(20))
            )
            assert all(r.status == 200 and r.upstream == "b" for r in replies)
            await wait_until(lambda: pool.upstreams[0].out_reason is not None)
            assert "UpstreamTimeout" in pool.upstreams[0].out_reason
            reply = await pool.call(body, deadline=deadline())
            assert (reply.upstream, reply.attempts) == ("b", 1)
        finally:
            a.resume()
        await wait_until(lambda: pool.upstreams[0].healthy)


async def test_the_lower_node_is_taken_out_when_it_lags(anvil_factory: MakeAnvil) -> None:
    a, b = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    config = chain_config(a.url, b.url)
    async with ChainPool(config, health_config(interval=0.1, max_lag=5), gateway_config()) as pool:
        assert all(up.healthy for up in pool.upstreams)
        a.rpc("anvil_mine", [20])
        await wait_until(lambda: not pool.upstreams[1].healthy)
        lagging = pool.snapshot()[1]
        assert lagging["lag"] == 20
        assert lagging["reason"] == f"20 blocks behind the best head {pool.best_head()}"
        assert pool.best_head() == 20
        assert pool.upstreams[0].healthy
        body = call_body("eth_blockNumber")
        replies = await asyncio.gather(*(pool.call(body, deadline=deadline()) for _ in range(20)))
        assert {r.upstream for r in replies} == {"a"}
        assert {orjson.loads(r.body)["result"] for r in replies} == {"0x14"}
        # Catching up puts it back.
        b.rpc("anvil_mine", [18])
        await wait_until(lambda: pool.upstreams[1].healthy)


async def test_no_healthy_upstream_fails_at_once(anvil_factory: MakeAnvil) -> None:
    a, b = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    config = chain_config(a.url, b.url)
    async with ChainPool(config, health_config(interval=0.1), gateway_config()) as pool:
        a.stop()
        b.stop()
        await wait_until(lambda: not any(up.healthy for up in pool.upstreams))
        async with asyncio.timeout(5):  # a hang guard, not a timing assertion
            with pytest.raises(NoHealthyUpstream) as info:
                await pool.call(call_body("eth_chainId"), deadline=deadline(60))
        assert info.value.http_status == 503
        assert "'eth'" in str(info.value)
        assert all(s["reason"].startswith("health check failed") for s in pool.snapshot())


async def test_the_last_error_is_raised_when_every_attempt_fails(anvil_factory: MakeAnvil) -> None:
    a, b = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    config = chain_config(a.url, b.url)
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        a.stop()
        b.stop()  # the health loop (interval 1 h) has not noticed
        with pytest.raises(UpstreamConnectError) as info:
            await pool.call(call_body("eth_chainId"), deadline=deadline())
        assert info.value.upstream in {"a", "b"}
        assert info.value.http_status == 502
        assert all(up.error_rate > 0 for up in pool.upstreams)


async def test_deadline_gives_a_timeout(anvil_factory: MakeAnvil) -> None:
    node = anvil_factory(chain_id=1)
    async with ChainPool(chain_config(node.url), health_config(), gateway_config()) as pool:
        with pytest.raises(UpstreamTimeout) as info:
            await pool.call(call_body("eth_chainId"), deadline=deadline(-1))
        assert not info.value.maybe_delivered
        pause(node)
        try:
            with pytest.raises(UpstreamTimeout) as info:
                await pool.call(call_body("eth_chainId"), deadline=deadline(0.3))
            assert info.value.http_status == 504
            assert info.value.maybe_delivered
        finally:
            node.resume()


async def test_breaker_opens_then_closes_when_the_node_returns(anvil_factory: MakeAnvil) -> None:
    node = anvil_factory(chain_id=1)
    clock = FakeClock()
    health = health_config(breaker_failures=2, breaker_cooldown=30.0)
    pool = ChainPool(chain_config(node.url), health, gateway_config(), clock=clock)
    async with pool:
        up = pool.upstreams[0]
        body = call_body("eth_chainId")
        node.stop()
        for _ in range(2):
            with pytest.raises(UpstreamConnectError):
                await pool.call(body, deadline=deadline())
        assert up.breaker.state is BreakerState.OPEN
        assert not up.healthy
        assert pool.snapshot()[0]["breaker"] == BreakerState.OPEN == 2
        assert pool.snapshot()[0]["reason"] == "circuit breaker open"
        with pytest.raises(NoHealthyUpstream):  # refused without touching the node
            await pool.call(body, deadline=deadline())

        node.start()
        await pool.check_now()  # healthy again, but still inside the cool-down
        assert up.breaker.state is BreakerState.OPEN
        with pytest.raises(NoHealthyUpstream):
            await pool.call(body, deadline=deadline())

        clock.advance(30.0)
        assert up.breaker.state is BreakerState.HALF_OPEN
        await pool.check_now()  # the health check is the probe
        assert up.breaker.state is BreakerState.CLOSED
        reply = await pool.call(body, deadline=deadline())
        assert (reply.status, reply.upstream) == (200, "a")


async def test_a_request_may_be_the_probe_when_nothing_else_is_left(
    anvil_factory: MakeAnvil,
) -> None:
    node = anvil_factory(chain_id=1)
    clock = FakeClock()
    health = health_config(breaker_failures=1, breaker_cooldown=5.0)
    async with ChainPool(chain_config(node.url), health, gateway_config(), clock=clock) as pool:
        pause(node)
        try:
            with pytest.raises(UpstreamTimeout):
                await pool.call(call_body("eth_chainId"), deadline=deadline(0.3))
        finally:
            node.resume()
        breaker = pool.upstreams[0].breaker
        assert breaker.state is BreakerState.OPEN
        clock.advance(5.0)
        reply = await pool.call(call_body("eth_chainId"), deadline=deadline())
        assert reply.status == 200
        assert breaker.state is BreakerState.CLOSED


async def test_json_rpc_errors_pass_through_and_are_not_failures(eth_anvil: Anvil) -> None:
    async with ChainPool(chain_config(eth_anvil.url), health_config(), gateway_config()) as pool:
        reply = await pool.call(call_body("no_such_method", ident=7), deadline=deadline())
        assert reply.status == 200 and reply.attempts == 1
        assert orjson.loads(reply.body)["error"]["code"] == -32601
        assert pool.upstreams[0].error_rate == 0
        assert pool.upstreams[0].breaker.failures == 0


async def test_notifications_get_the_nodes_empty_answer(eth_anvil: Anvil) -> None:
    notification = b'{"jsonrpc":"2.0","method":"eth_chainId","params":[]}'
    async with ChainPool(chain_config(eth_anvil.url), health_config(), gateway_config()) as pool:
        reply = await pool.call(notification, deadline=deadline())
        assert (reply.status, reply.body, reply.attempts) == (204, b"", 1)
        assert pool.upstreams[0].error_rate == 0


async def test_snapshot_describes_each_upstream(eth_anvil: Anvil) -> None:
    async with ChainPool(chain_config(eth_anvil.url), health_config(), gateway_config()) as pool:
        await pool.call(call_body("eth_chainId"), deadline=deadline())
        (snap,) = pool.snapshot()
        assert snap["name"] == "a" and snap["url"] == eth_anvil.url
        assert snap["healthy"] is True and snap["reason"] is None
        assert snap["head"] == pool.best_head() and snap["lag"] == 0
        assert snap["syncing"] is False
        assert snap["peers"] is None  # anvil has no net_peerCount: unknown, which is fine
        assert snap["breaker_state"] == "closed" and int(snap["breaker"]) == 0
        assert snap["latency_ms"] > 0 and snap["error_rate"] == 0 and snap["inflight"] == 0
        assert orjson.loads(orjson.dumps(pool.snapshot()))[0]["breaker"] == 0

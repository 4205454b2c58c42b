"""WebSockets: JSON-RPC and subscriptions through the gateway, the same checks and limits as
HTTP, and subscriptions that survive their upstream's death."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hoodrun.config import PlanConfig, RateConfig
from hoodrun.devnet import Anvil
from tests.gateway.conftest import ThreadedGateway, make_config, rpc
from tests.gateway.test_telemetry import ListSink

SENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
EMITTER = "0x600080a000"  # init code: LOG0(0, 0): one log per deployment


def _ws(gw: ThreadedGateway, key: str, chain: str = "eth") -> str:
    return gw.url.replace("http://", "ws://") + f"/{chain}/v1/{key}"


def _mine(node: Anvil, blocks: int = 1) -> None:
    httpx.post(node.url, json=rpc("anvil_mine", [hex(blocks)]), timeout=10)


async def _call(ws: Any, method: str, params: list[Any] | None = None, id: int = 1) -> Any:
    await ws.send(orjson.dumps(rpc(method, params, id=id)).decode())
    return orjson.loads(await asyncio.wait_for(ws.recv(), 10))


async def _next(ws: Any, timeout: float = 10) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


def test_calls_and_subscriptions_match_the_node(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any
) -> None:
    node: Anvil = anvil_factory(chain_id=1)
    sink = ListSink()
    gw: ThreadedGateway = gateway_factory(make_config(sqlite_url, {"eth": (1, [node])}), (sink,))
    created = gw.key(plan="pro")

    async def scenario() -> None:
        direct_url = node.url.replace("http://", "ws://")
        async with connect(_ws(gw, created.key)) as ws, connect(direct_url) as direct:
            assert (await _call(ws, "eth_chainId"))["result"] == "0x1"
            batch = [rpc("eth_chainId", id=1), rpc("eth_blockNumber", id=2)]
            await ws.send(orjson.dumps(batch).decode())
            assert [a["id"] for a in await _next(ws)] == [1, 2]
            heads = (await _call(ws, "eth_subscribe", ["newHeads"]))["result"]
            logs = (await _call(ws, "eth_subscribe", ["logs", {}], id=2))["result"]
            mine = (await _call(direct, "eth_subscribe", ["newHeads"]))["result"]
            assert heads != logs and heads.startswith("0x")
            _mine(node, 3)
            got = [await _next(ws) for _ in range(3)]
            want = [await _next(direct) for _ in range(3)]
            assert [g["params"]["subscription"] for g in got] == [heads] * 3
            assert [g["params"]["result"] for g in got] == [w["params"]["result"] for w in want]
            assert all(w["params"]["subscription"] == mine for w in want)
            await _call(direct, "eth_sendTransaction", [{"from": SENDER, "data": EMITTER}])
            seen = [await _next(ws) for _ in range(2)]  # the new head and the log, either order
            by_sub = {m["params"]["subscription"]: m["params"]["result"] for m in seen}
            assert by_sub[logs]["data"] == "0x" and by_sub[heads]["number"] == "0x4"
            in_batch = [rpc("eth_subscribe", ["newHeads"], id=7), rpc("eth_chainId", id=8)]
            await ws.send(orjson.dumps(in_batch).decode())
            refused, fine = await _next(ws)
            assert refused["error"]["data"]["reason"] == "use_websocket" and fine["result"] == "0x1"
            assert (await _call(ws, "eth_unsubscribe", [logs], id=3))["result"] is True
            assert (await _call(ws, "eth_unsubscribe", [logs], id=4))["result"] is False

    asyncio.run(scenario())
    notified = [r for r in sink.records if r.method == "eth_subscription"]
    assert len(notified) >= 5 and all(r.bytes_out > 0 for r in notified)
    assert {r.key_id for r in notified} == {created.id}
    assert any(r.method == "eth_chainId" for r in sink.records)  # calls are recorded as usual


def test_a_subscription_survives_its_upstream_dying(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any
) -> None:
    first: Anvil = anvil_factory(chain_id=1)
    second: Anvil = anvil_factory(chain_id=1)
    for node in (first, second):
        _mine(node, 5)
    config = make_config(sqlite_url, {"eth": (1, [first, second])})
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key(plan="pro").key

    async def scenario() -> list[int]:
        numbers: list[int] = []
        async with connect(_ws(gw, key)) as ws:
            sub = (await _call(ws, "eth_subscribe", ["newHeads"]))["result"]
            assert gw.runtime is not None and gw.runtime.gateway is not None
            gateway = gw.runtime.gateway
            hub = gateway.sockets.hub(gateway.chains["eth"])
            assert hub.upstream is not None
            serving = {"eth-0": first, "eth-1": second}[hub.upstream.name]
            other = second if serving is first else first
            _mine(serving)  # head 6 from the serving node
            numbers.append(int((await _next(ws))["params"]["result"]["number"], 16))
            serving.stop()  # its socket drops: the session moves to the other node
            deadline = time.monotonic() + 10
            while hub.upstream is None or hub.upstream.name != (
                "eth-1" if other is second else "eth-0"
            ):
                assert time.monotonic() < deadline, "the subscription did not move"
                await asyncio.sleep(0.05)
            _mine(other, 3)  # 6 (already seen: skipped), 7, 8
            for _ in range(2):
                message = await _next(ws)
                assert message["params"]["subscription"] == sub  # the client's id kept
                numbers.append(int(message["params"]["result"]["number"], 16))
        return numbers

    assert asyncio.run(scenario()) == [6, 7, 8]


def test_handshakes_are_checked_like_calls(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil, client: httpx.Client
) -> None:
    config = make_config(sqlite_url, {"eth": (1, [eth_anvil])})
    no_ws = config.plan("free").model_copy(update={"name": "http-only", "websocket": False})  # type: ignore[union-attr]
    config = config.model_copy(
        update={
            "ws": config.ws.model_copy(update={"max_connections_per_key": 2}),
            "plans": (*config.plans, no_ws),
        }
    )
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key(plan="pro").key
    http_only = gw.key(plan="http-only").key

    async def scenario() -> None:
        for url, status in (
            (_ws(gw, "hr_unknownunknownunknown12"), 401),
            (_ws(gw, key, chain="nope"), 404),
            (_ws(gw, http_only), 403),  # the plan has no WebSockets
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == status
        async with connect(_ws(gw, key)), connect(_ws(gw, key)):
            with pytest.raises(InvalidStatus) as third:
                async with connect(_ws(gw, key)):
                    pass
            assert third.value.response.status_code == 429
        async with connect(_ws(gw, key)):  # the two before were closed: room again
            pass

    asyncio.run(scenario())
    over_http = client.post(
        gw.endpoint(key), content=orjson.dumps(rpc("eth_subscribe", ["newHeads"]))
    )
    assert over_http.status_code == 400
    assert over_http.json()["error"]["data"]["reason"] == "use_websocket"


def test_limits_count_each_message_and_revocation_closes_the_socket(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil
) -> None:
    config = make_config(sqlite_url, {"eth": (1, [eth_anvil])})
    plans = (*config.plans, PlanConfig(name="slow", rate=RateConfig(rps=1, burst=3)))
    config = config.model_copy(
        update={"plans": plans, "ws": config.ws.model_copy(update={"max_subscriptions": 1})}
    )
    gw: ThreadedGateway = gateway_factory(config)
    created = gw.key(plan="slow")

    async def scenario() -> None:
        async with connect(_ws(gw, created.key)) as ws:
            answers = [await _call(ws, "eth_chainId", id=n) for n in range(5)]
            refused = [a for a in answers if "error" in a]
            assert refused and refused[0]["error"]["data"]["reason"] == "rate_limited"
        async with connect(_ws(gw, gw.key(plan="pro").key)) as ws:
            assert "result" in await _call(ws, "eth_subscribe", ["newHeads"])
            second = await _call(ws, "eth_subscribe", ["newHeads"], id=2)
            assert second["error"]["data"]["reason"] == "subscriptions_exceeded"
        doomed = gw.key(plan="pro")
        async with connect(_ws(gw, doomed.key)) as ws:
            assert (await _call(ws, "eth_chainId"))["result"] == "0x1"
            assert gw.runtime is not None
            gw.run(gw.runtime.keys.revoke(doomed.id, actor="test"))  # type: ignore[union-attr]
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    asyncio.run(scenario())


def test_web3_websocket_provider_through_the_gateway(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any
) -> None:
    from web3 import AsyncWeb3, WebSocketProvider

    node: Anvil = anvil_factory(chain_id=1)
    gw: ThreadedGateway = gateway_factory(make_config(sqlite_url, {"eth": (1, [node])}))
    url = _ws(gw, gw.key(plan="pro").key)

    async def scenario() -> list[int]:
        async with AsyncWeb3(WebSocketProvider(url)) as w3:
            assert await w3.eth.chain_id == 1
            balance = await w3.eth.get_balance(SENDER)
            assert balance > 0
            await w3.eth.subscribe("newHeads")
            _mine(node, 2)
            heads = []
            async for payload in w3.socket.process_subscriptions():
                heads.append(payload["result"]["number"])
                if len(heads) == 2:
                    break
            return heads

    assert asyncio.run(scenario()) == [1, 2]


def test_identical_subscriptions_share_one_upstream_subscription(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any
) -> None:
    node: Anvil = anvil_factory(chain_id=1)
    gw: ThreadedGateway = gateway_factory(make_config(sqlite_url, {"eth": (1, [node])}))
    key = gw.key(plan="pro").key
    assert gw.runtime is not None and gw.runtime.gateway is not None
    hub = gw.runtime.gateway.sockets.hub(gw.runtime.gateway.chains["eth"])

    async def scenario() -> None:
        async with connect(_ws(gw, key)) as one, connect(_ws(gw, key)) as two:
            a = (await _call(one, "eth_subscribe", ["newHeads"]))["result"]
            b = (await _call(two, "eth_subscribe", ["newHeads"]))["result"]
            assert a != b and len(hub.topics) == 1 and hub.subscribers == 2
            _mine(node)
            assert (await _next(one))["params"]["subscription"] == a
            assert (await _next(two))["params"]["subscription"] == b
            assert (await _call(one, "eth_unsubscribe", [a], id=2))["result"] is True
            assert len(hub.topics) == 1 and hub.subscribers == 1
        deadline = time.monotonic() + 10  # the last socket closed: the upstream one goes too
        while hub.topics or hub.upstream is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_idle_sockets_are_closed_and_pending_transactions_stream(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any
) -> None:
    node: Anvil = anvil_factory(chain_id=1, extra_args=("--no-mining",))
    config = make_config(sqlite_url, {"eth": (1, [node])})
    ws_settings = config.ws.model_copy(update={"idle_timeout": 0.5, "ping_interval": 0.2})
    gw: ThreadedGateway = gateway_factory(config.model_copy(update={"ws": ws_settings}))
    key = gw.key(plan="pro").key

    async def scenario() -> None:
        async with connect(_ws(gw, key)) as ws:
            sub = (await _call(ws, "eth_subscribe", ["newPendingTransactions"]))["result"]
            sent = httpx.post(
                node.url,
                json=rpc("eth_sendTransaction", [{"from": SENDER, "to": SENDER, "value": "0x1"}]),
                timeout=10,
            ).json()["result"]
            pending = await _next(ws)
            assert pending["params"] == {"subscription": sub, "result": sent}
            await asyncio.sleep(1.0)  # a listener answering pings is not idle: still open
            assert (await _call(ws, "eth_unsubscribe", [sub], id=2))["result"] is True
            # No subscription and no message: closed as idle (1001), pongs or not.
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    asyncio.run(scenario())


def test_refused_subscriptions_carry_their_reason_and_are_not_billed(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil
) -> None:
    config = make_config(sqlite_url, {"eth": (1, [eth_anvil])})
    config = config.model_copy(update={"ws": config.ws.model_copy(update={"max_subscriptions": 1})})
    sink = ListSink()
    gw: ThreadedGateway = gateway_factory(config, (sink,))
    key = gw.key(plan="pro").key

    async def scenario() -> list[dict[str, Any]]:
        answers = []
        async with connect(_ws(gw, key)) as socket:
            for params in (["noSuchKind"], ["newHeads"], ["newHeads"]):
                await socket.send(orjson.dumps(rpc("eth_subscribe", params)))
                answers.append(orjson.loads(await socket.recv()))
        return answers

    bad, ok, over = asyncio.run(scenario())
    assert bad["error"]["code"] == -32602 and bad["error"]["data"]["reason"] == "invalid_params"
    assert ok["result"].startswith("0x")
    assert over["error"]["code"] == -32005
    assert over["error"]["data"]["reason"] == "subscriptions_exceeded"
    subscribes = [r for r in sink.records if r.method == "eth_subscribe"]
    assert [r.reason for r in subscribes] == ["invalid_params", None, "subscriptions_exceeded"]

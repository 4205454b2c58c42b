"""eth_sendRawTransaction is never blindly replayed, and a replay's "already known" is a success."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from eth_account import Account

from hoodrun.devnet import Anvil
from hoodrun.upstreams import ChainPool, HttpPool, UpstreamDisconnected
from hoodrun.upstreams._writes import tx_hash

from .support import (
    MakeAnvil,
    MakeServer,
    Request,
    TinyServer,
    call_body,
    chain_config,
    gateway_config,
    health_config,
    http_response,
    mini_node,
    rpc_error,
    rpc_result,
)

# anvil's first dev account (the default mnemonic), as documented by anvil.
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


def signed_tx(chain_id: int = 1, nonce: int = 0) -> bytes:
    return sign(chain_id, nonce).raw_transaction  # type: ignore[no-any-return]


def sign(chain_id: int = 1, nonce: int = 0) -> Any:
    account = Account.from_key(DEV_KEY)
    tx = {
        "type": 2,
        "chainId": chain_id,
        "nonce": nonce,
        "to": account.address,
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 1,
    }
    return Account.sign_transaction(tx, DEV_KEY)


def send_body(raw: bytes, ident: Any = "tx-1") -> bytes:
    return call_body("eth_sendRawTransaction", ["0x" + raw.hex()], ident=ident)


def deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def level(pool: ChainPool) -> None:
    """Equal latencies, so that the configured weights alone decide the order."""
    for up in pool.upstreams:
        up.ewma_latency = 0.001


def sends(server: TinyServer) -> list[Request]:
    return [
        r
        for r in server.requests
        if isinstance(r.json(), dict) and r.json()["method"] == "eth_sendRawTransaction"
    ]


async def test_the_synthetic_hash_is_the_one_anvil_computes(anvil_factory: MakeAnvil) -> None:
    node = anvil_factory(chain_id=1)
    signed = sign()
    raw = signed.raw_transaction
    async with ChainPool(chain_config(node.url), health_config(), gateway_config()) as pool:
        reply = await pool.call(send_body(raw), deadline=deadline(), write_tx=raw)
    from_anvil = orjson.loads(reply.body)["result"]
    assert tx_hash(raw) == from_anvil == "0x" + signed.hash.hex().removeprefix("0x")
    assert node.rpc("eth_getTransactionByHash", [from_anvil]) is not None


def dropping_first_send(message: str = "already known") -> Any:
    """A node that swallows the first eth_sendRawTransaction (reads it, drops the connection)
    and answers every later one with ``message``."""
    seen = [0]

    def other(call: dict[str, Any]) -> dict[str, Any] | None:
        if call["method"] != "eth_sendRawTransaction":
            return rpc_result(call, "0x1")
        seen[0] += 1
        return None if seen[0] == 1 else rpc_error(call, message)

    return mini_node(other=other)


@pytest.mark.parametrize(
    "message",
    ["already known", "Known transaction: 0xabc", "ErrAlreadyKnown", "transaction already exists"],
)
async def test_a_dropped_write_retried_elsewhere_and_already_known_is_a_success(
    tiny_server: MakeServer,
    message: str,
) -> None:
    server = await tiny_server(dropping_first_send(message))
    # Two names for one server: two replicas sharing a mempool.
    config = chain_config(("x", server.url, 10.0), ("y", server.url, 1.0))
    raw = signed_tx()
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        level(pool)
        reply = await pool.call(send_body(raw, ident=77), deadline=deadline(), write_tx=raw)
    assert (reply.status, reply.upstream, reply.attempts) == (200, "y", 2)
    assert orjson.loads(reply.body) == {"jsonrpc": "2.0", "id": 77, "result": tx_hash(raw)}
    assert len(sends(server)) == 2


async def test_a_resend_on_a_stale_connection_is_also_covered(tiny_server: MakeServer) -> None:
    server = await tiny_server(dropping_first_send())
    raw = signed_tx()
    async with ChainPool(chain_config(server.url), health_config(), gateway_config()) as pool:
        await pool.call(call_body("eth_chainId"), deadline=deadline())  # a warm connection
        reply = await pool.call(send_body(raw), deadline=deadline(), write_tx=raw)
    # The pool resent on a new connection by itself: one attempt, yet maybe delivered twice.
    assert (reply.status, reply.attempts) == (200, 1)
    assert orjson.loads(reply.body)["result"] == tx_hash(raw)
    first, second = sends(server)
    assert first.seq == 1  # on the warm connection
    assert second.seq == 0 and second.conn != first.conn  # resent on a new one


async def test_already_known_on_a_first_attempt_passes_through(tiny_server: MakeServer) -> None:
    server = await tiny_server(mini_node(other=lambda call: rpc_error(call, "already known")))
    raw = signed_tx()
    async with ChainPool(chain_config(server.url), health_config(), gateway_config()) as pool:
        reply = await pool.call(send_body(raw), deadline=deadline(), write_tx=raw)
    assert orjson.loads(reply.body)["error"]["message"] == "already known"


async def test_after_a_certainly_undelivered_attempt_already_known_passes_through(
    tiny_server: MakeServer,
) -> None:
    gone = await tiny_server(mini_node())
    alive = await tiny_server(mini_node(other=lambda call: rpc_error(call, "already known")))
    config = chain_config(("x", gone.url, 10.0), ("y", alive.url, 1.0))
    raw = signed_tx()
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        level(pool)
        await gone.close()  # healthy a moment ago; now refuses connections
        reply = await pool.call(send_body(raw), deadline=deadline(), write_tx=raw)
        assert (reply.upstream, reply.attempts) == ("y", 2)
        assert orjson.loads(reply.body)["error"]["message"] == "already known"
        assert pool.upstreams[0].error_rate > 0


@pytest.mark.parametrize(
    ("mining", "node_says"),
    [((), "nonce too low"), (("--no-mining",), "transaction already imported")],
)
async def test_a_write_whose_answer_was_lost_on_a_real_node(
    anvil_factory: MakeAnvil,
    tiny_server: MakeServer,
    mining: tuple[str, ...],
    node_says: str,
) -> None:
    node: Anvil = anvil_factory(chain_id=1, extra_args=mining)
    forward = HttpPool(node.url)

    async def lossy_front(request: Request) -> bytes | None:
        # Passes everything to the node; loses the answer to eth_sendRawTransaction.
        status, body = await forward.post(request.body, 5.0)
        parsed = request.json()
        if isinstance(parsed, dict) and parsed["method"] == "eth_sendRawTransaction":
            if not mining:  # automine: wait for the block, so that the retry is "too low"
                digest = tx_hash(bytes.fromhex(parsed["params"][0][2:]))
                query = call_body("eth_getTransactionReceipt", [digest])
                while orjson.loads((await forward.post(query, 5.0))[1])["result"] is None:
                    await asyncio.sleep(0.005)
            return None
        return http_response(body, status)

    front = await tiny_server(lossy_front)
    config = chain_config(("front", front.url, 10.0), ("direct", node.url, 1.0))
    raw = signed_tx()
    try:
        async with ChainPool(config, health_config(), gateway_config()) as pool:
            level(pool)
            reply = await pool.call(send_body(raw, ident=5), deadline=deadline(), write_tx=raw)
            assert (reply.upstream, reply.attempts) == ("direct", 2)
            assert orjson.loads(reply.body) == {"jsonrpc": "2.0", "id": 5, "result": tx_hash(raw)}
            # What the node said to the retry, which the pool turned into that success:
            assert node_says in await node_answer(node, raw)
    finally:
        await forward.aclose()


async def node_answer(node: Anvil, raw: bytes) -> str:
    http = HttpPool(node.url)
    try:
        _, body = await http.post(send_body(raw), 5.0)
    finally:
        await http.aclose()
    return str(orjson.loads(body)["error"]["message"])


async def test_nonce_too_low_for_another_transaction_is_not_rewritten(
    tiny_server: MakeServer,
) -> None:
    def other(call: dict[str, Any]) -> dict[str, Any] | None:
        if call["method"] == "eth_getTransactionByHash":
            return rpc_result(call, None)  # the node does not know our hash
        if call["method"] == "eth_sendRawTransaction":
            other.sends += 1  # type: ignore[attr-defined]
            return None if other.sends == 1 else rpc_error(call, "nonce too low")  # type: ignore[attr-defined]
        return rpc_result(call, "0x1")

    other.sends = 0  # type: ignore[attr-defined]
    server = await tiny_server(mini_node(other=other))
    config = chain_config(("x", server.url, 10.0), ("y", server.url, 1.0))
    raw = signed_tx()
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        level(pool)
        reply = await pool.call(send_body(raw), deadline=deadline(), write_tx=raw)
    assert orjson.loads(reply.body)["error"]["message"] == "nonce too low"


async def test_every_attempt_failing_keeps_maybe_delivered(tiny_server: MakeServer) -> None:
    server = await tiny_server(mini_node(other=lambda call: None))  # swallows every call
    config = chain_config(("x", server.url, 10.0), ("y", server.url, 1.0))
    raw = signed_tx()
    async with ChainPool(config, health_config(), gateway_config()) as pool:
        with pytest.raises(UpstreamDisconnected) as info:
            await pool.call(send_body(raw), deadline=deadline(), write_tx=raw)
    assert info.value.maybe_delivered

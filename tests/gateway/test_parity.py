"""Through the gateway, clients get what they get from the node itself."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from web3 import Web3

from hoodrun.devnet import Anvil
from tests.gateway.conftest import ThreadedGateway, make_config, rpc

ACCOUNT0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
ACCOUNT1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
def gw(gateway_factory: Any, sqlite_url: str, anvil_factory: Any) -> ThreadedGateway:
    eth = anvil_factory(chain_id=1)
    base = anvil_factory(chain_id=8453)
    gw: ThreadedGateway = gateway_factory(
        make_config(sqlite_url, {"eth": (1, [eth]), "base": (8453, [base])})
    )
    gw.eth, gw.base = eth, base  # type: ignore[attr-defined]
    return gw


def _post(client: httpx.Client, url: str, payload: Any) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return client.post(url, content=body, headers={"content-type": "application/json"})


def test_web3_reads_match_the_node(gw: ThreadedGateway) -> None:
    key = gw.key().key
    node: Anvil = gw.eth  # type: ignore[attr-defined]
    via = Web3(Web3.HTTPProvider(gw.endpoint(key)))
    direct = Web3(Web3.HTTPProvider(node.url))
    assert via.eth.chain_id == direct.eth.chain_id == 1
    assert via.eth.block_number == direct.eth.block_number
    assert via.eth.get_balance(ACCOUNT0) == direct.eth.get_balance(ACCOUNT0)
    assert via.eth.get_block("latest")["hash"] == direct.eth.get_block("latest")["hash"]
    base = Web3(Web3.HTTPProvider(gw.endpoint(key, "base")))
    assert base.eth.chain_id == 8453


def test_send_transaction_and_read_receipt(gw: ThreadedGateway) -> None:
    key = gw.key(plan="pro").key
    via = Web3(Web3.HTTPProvider(gw.endpoint(key)))
    direct = Web3(Web3.HTTPProvider(gw.eth.url))  # type: ignore[attr-defined]
    before = direct.eth.get_balance(ACCOUNT1)
    tx_hash = via.eth.send_transaction({"from": ACCOUNT0, "to": ACCOUNT1, "value": 12345})
    receipt = via.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 1
    assert direct.eth.get_transaction_receipt(tx_hash)["blockHash"] == receipt["blockHash"]
    assert direct.eth.get_balance(ACCOUNT1) == before + 12345


def test_raw_single_calls_pass_through_unchanged(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    node_url = gw.eth.url  # type: ignore[attr-defined]
    for payload in (
        rpc("eth_chainId"),
        rpc("eth_getBalance", [ACCOUNT0, "latest"], id="abc"),
        rpc("no_suchMethod", id=7),  # the node's own -32601
        rpc("eth_getBalance", ["0x1"], id=8),  # the node's own -32602
        {"jsonrpc": "2.0", "id": None, "method": "eth_chainId", "params": []},
    ):
        via = _post(client, gw.endpoint(key), payload)
        direct = _post(client, node_url, payload)
        assert via.status_code == direct.status_code == 200
        assert via.json() == direct.json()
    unknown = _post(client, gw.endpoint(key), rpc("no_suchMethod")).json()
    assert unknown["error"]["code"] == -32601


def test_batch_keeps_order_and_answers_invalid_entries(
    gw: ThreadedGateway, client: httpx.Client
) -> None:
    key = gw.key().key
    node_url = gw.eth.url  # type: ignore[attr-defined]
    valid = [
        rpc("eth_chainId", id=1),
        rpc("eth_getBalance", [ACCOUNT0, "latest"], id="two"),
        rpc("no_suchMethod", id=3),
        rpc("eth_blockNumber", id=1),  # duplicate ids are legal
    ]
    via = _post(client, gw.endpoint(key), valid).json()
    direct = _post(client, node_url, valid).json()
    assert via == direct
    # Invalid entries get -32600 each (JSON-RPC 2.0 §6); the valid ones their node answers.
    # anvil itself rejects a whole batch for one bad entry; the gateway follows the spec.
    mixed = [valid[0], 1, {"foo": "bar"}, {"jsonrpc": "2.0", "method": "eth_chainId"}, valid[1]]
    answers = _post(client, gw.endpoint(key), mixed).json()
    assert len(answers) == 4  # the notification gets no answer
    assert answers[0] == direct[0]
    assert answers[1]["error"]["code"] == -32600 and answers[1]["id"] is None
    assert answers[2]["error"]["code"] == -32600
    assert answers[3] == direct[1]


def test_gateway_rejects_with_spec_codes(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    malformed = _post(client, gw.endpoint(key), b'{"jsonrpc": "2.0", "id": 1, "method"')
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == -32700
    empty = _post(client, gw.endpoint(key), [])
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == -32600
    not_a_call = _post(client, gw.endpoint(key), {"hello": "world"})
    assert not_a_call.status_code == 400
    assert not_a_call.json()["error"]["code"] == -32600
    scalar = _post(client, gw.endpoint(key), b"42")
    assert scalar.status_code == 400 and scalar.json()["error"]["code"] == -32600


def test_notifications_get_no_answer(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    single = _post(
        client, gw.endpoint(key), {"jsonrpc": "2.0", "method": "eth_chainId", "params": []}
    )
    assert single.status_code == 204 and single.content == b""
    batch = _post(
        client, gw.endpoint(key), [{"jsonrpc": "2.0", "method": "eth_chainId", "params": []}]
    )
    assert batch.status_code == 204 and batch.content == b""


def test_block_number_never_goes_backwards(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    node: Anvil = gw.eth  # type: ignore[attr-defined]
    node.rpc("anvil_mine", ["0x5"])
    snapshot = node.rpc("evm_snapshot")
    node.rpc("anvil_mine", ["0x3"])
    high = _post(client, gw.endpoint(key), rpc("eth_blockNumber")).json()["result"]
    node.rpc("evm_revert", [snapshot])  # the node's head drops by 3
    assert int(str(node.rpc("eth_blockNumber")), 16) < int(high, 16)
    again = _post(client, gw.endpoint(key), rpc("eth_blockNumber")).json()["result"]
    assert int(again, 16) == int(high, 16)
    in_batch = _post(client, gw.endpoint(key), [rpc("eth_blockNumber")]).json()
    assert int(in_batch[0]["result"], 16) == int(high, 16)


def test_odd_inputs_get_spec_errors_not_500s(gw: ThreadedGateway, client: httpx.Client) -> None:
    key = gw.key().key
    deep: Any = 0
    for _ in range(300):  # readable by the JSON parser, deeper than its writer allows
        deep = [deep]
    batch = [rpc("eth_call", [deep], id=1), rpc("eth_chainId", id=2)]
    answers = _post(client, gw.endpoint(key), json.dumps(batch).encode())
    assert answers.status_code == 200
    first, second = answers.json()
    assert first["error"]["code"] == -32600 and first["id"] == 1
    assert second["result"] == "0x1"
    single = _post(client, gw.endpoint(key), json.dumps(rpc("eth_call", [deep])).encode())
    assert single.status_code == 200 and "error" in single.json()  # forwarded as sent
    odd_id = _post(
        client, gw.endpoint(key), [{"jsonrpc": "2.0", "id": True, "method": "eth_chainId"}]
    )
    assert odd_id.json()[0]["id"] is None and odd_id.json()[0]["error"]["code"] == -32600
    swapped = _post(client, f"{gw.url}/{key}/v1", rpc("eth_chainId"))
    assert swapped.status_code == 404 and key not in swapped.text


def test_a_batch_with_a_signed_write_answers_the_write_with_its_hash(
    gw: ThreadedGateway, client: httpx.Client
) -> None:
    from eth_account import Account

    key = gw.key(plan="pro").key
    node: Anvil = gw.eth  # type: ignore[attr-defined]
    nonce = int(str(node.rpc("eth_getTransactionCount", [ACCOUNT0, "pending"])), 16)
    signed = Account.sign_transaction(
        {
            "to": ACCOUNT1,
            "value": 1,
            "gas": 21000,
            "gasPrice": 10**10,
            "nonce": nonce,
            "chainId": 1,
        },
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    )
    raw = "0x" + signed.raw_transaction.hex().removeprefix("0x")
    # Writes leave a batch as calls of their own (never replayed blindly); the answers come
    # back in the client's order.
    answers = _post(
        client,
        gw.endpoint(key),
        [rpc("eth_chainId", id=1), rpc("eth_sendRawTransaction", [raw], id=2)],
    ).json()
    assert answers[0]["result"] == "0x1"
    assert answers[1]["result"] == "0x" + signed.hash.hex().removeprefix("0x")

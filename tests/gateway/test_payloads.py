"""Payload capture: excerpts of params and answers for projects that turn it on, with secrets
never stored. First the excerpts alone, then a real gateway over anvil writing them into chDB on
SQLite and PostgreSQL, read back through the request explorer's API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.api.logs_query import logs_query_router
from hoodrun.api.projects import project_scope
from hoodrun.config import Config
from hoodrun.gateway.jsonrpc import parse_body
from hoodrun.gateway.payloads import REDACTED, excerpts, is_signing, redact
from hoodrun.keys.orgs import OrgBook
from hoodrun.keys.service import CreatedKey
from hoodrun.keys.verifier import KeyVerifier
from hoodrun.telemetry.store import ChdbStore
from tests.gateway.conftest import ThreadedGateway, make_config, rpc

R = orjson.dumps(REDACTED).decode()  # '"[redacted]"': what a redacted value is, as JSON
ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # anvil's first dev account
TARGET = "0x00000000000000000000000000000000000000aa"
PRIVATE_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
MNEMONIC = "abandon ability able about above absent absorb abstract absurd abuse access accident"
PASSWORD = "correct-horse-battery-staple"


def calls_of(body: Any) -> list[Any]:
    return parse_body(orjson.dumps(body), 100)[1]


# --- the excerpts -------------------------------------------------------------------------------


def test_params_and_answer_are_kept_as_json_text() -> None:
    call = rpc("eth_call", [{"to": TARGET, "data": "0x"}, "latest"])
    answer = b'{"jsonrpc":"2.0","id":1,"result":"0x"}'
    assert excerpts(calls_of(call), None, answer, 2048) == (
        (orjson.dumps(call["params"]).decode(), answer.decode()),
    )
    no_params = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}
    assert excerpts(calls_of(no_params), None, b"", 2048) == (("null", ""),)


def test_long_text_is_cut_at_the_limit_and_says_so() -> None:
    data = "0x" + "ab" * 300
    call = rpc("eth_call", [{"to": TARGET, "data": data}, "latest"])
    whole = orjson.dumps(call["params"])
    answer = b'{"jsonrpc":"2.0","id":1,"result":"' + b"cd" * 400 + b'"}'
    [(params, response)] = excerpts(calls_of(call), None, answer, 64)
    assert params == f"{whole[:64].decode()}…[cut: {len(whole)} bytes]"
    assert response == f"{answer[:64].decode()}…[cut: {len(answer)} bytes]"
    # A cut through a character drops that character, not the text.
    text = rpc("eth_call", ["é" * 40])
    [(params, _)] = excerpts(calls_of(text), None, b"", 63)
    head = params.split("…[cut:")[0]
    assert head.encode() == orjson.dumps(text["params"])[:62]  # '["' and 30 whole "é" of 30.5


@pytest.mark.parametrize(
    "method",
    [
        "eth_sign",
        "eth_signTransaction",
        "eth_signTypedData",
        "eth_signTypedData_v3",
        "eth_signTypedData_v4",
        "personal_sign",
        "personal_unlockAccount",
        "personal_importRawKey",
        "personal_sendTransaction",
        # In any case: nodes may take them so, and they carry the same secrets.
        "ETH_SIGN",
        "Eth_SignTransaction",
        "ETH_SIGNTYPEDDATA_V4",
        "Personal_unlockAccount",
        "PERSONAL_IMPORTRAWKEY",
        # Secrets given positionally, or keys answered: every method of these namespaces.
        "parity_newAccountFromPhrase",
        "parity_newAccountFromSecret",
        "parity_exportAccount",
        "parity_signMessage",
        "PARITY_changePassword",
        "signer_confirmRequest",
        "signer_confirmRequestRaw",
        "account_new",
        "account_signTransaction",
        "account_signData",
        "Account_Import",
        "wallet_requestPermissions",
    ],
)
def test_signing_and_account_methods_keep_neither_params_nor_answer(method: str) -> None:
    call = rpc(method, [ACCOUNT, PASSWORD])
    assert is_signing(method)
    answer = b'{"jsonrpc":"2.0","id":1,"result":"0xsignature"}'
    assert excerpts(calls_of(call), None, answer, 2048) == ((R, R),)


def test_other_account_methods_are_kept() -> None:
    assert not is_signing("eth_accounts") and not is_signing("eth_sendRawTransaction")
    assert not is_signing(None) and not is_signing(7)
    [(params, answer)] = excerpts(calls_of(rpc("eth_accounts")), None, b'{"result":[]}', 2048)
    assert (params, answer) == ("[]", '{"result":[]}')


def test_eth_send_transaction_is_kept() -> None:
    # The node signs it with a key it holds: its params are a transaction, not a secret, and
    # its answer the transaction's hash (personal_sendTransaction is the one with a password).
    assert not is_signing("eth_sendTransaction") and not is_signing("ETH_SENDTRANSACTION")
    tx = {"from": ACCOUNT, "to": TARGET, "value": "0x1", "data": "0x", "gas": "0x5208"}
    answer = b'{"jsonrpc":"2.0","id":1,"result":"0xhash"}'
    [(params, response)] = excerpts(calls_of(rpc("eth_sendTransaction", [tx])), None, answer, 2048)
    assert orjson.loads(params) == [tx] and response == answer.decode()


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "passwd",
        "PassWd",
        "pwd",
        "userPwd",
        "passphrase",
        "pass_phrase",
        "privateKey",
        "private key",
        "Private-Key",
        "PRIVATE.KEY",
        "privKey",
        "pk",
        "PK",
        "p_k",
        "ownerPk",
        "secret",
        "secretKey",
        "secret_key",
        "clientSecret",
        "mnemonic",
        "seed",
        "seedPhrase",
        "seed phrase",
        "apiKey",
        "api-key",
        "X-API-KEY",
        "token",
        "accessToken",
        "auth_token",
        "authorization",
        "Authorization",
        "ＰＡＳＳＷＯＲＤ",  # fullwidth: NFKC makes it "PASSWORD"
        "paſſword",  # a long s casefolds to "s"
    ],
)
def test_every_secret_name_is_redacted(name: str) -> None:
    params = [{"to": TARGET, name: PASSWORD}, "latest"]
    [(text, _)] = excerpts(calls_of(rpc("eth_call", params)), None, b"", 2048)
    assert orjson.loads(text) == [{"to": TARGET, name: REDACTED}, "latest"]
    assert PASSWORD not in text


@pytest.mark.parametrize(
    "name",
    ["to", "from", "data", "tokenAddress", "tokenId", "tokens", "upkeepId", "pubkey", "keys"],
)
def test_names_that_only_look_alike_are_kept(name: str) -> None:
    params = [{name: "0x1"}, "latest"]
    [(text, _)] = excerpts(calls_of(rpc("eth_call", params)), None, b"", 2048)
    assert orjson.loads(text) == params
    assert redact(params) is params  # nothing to redact: nothing copied


def test_an_invalid_entry_naming_a_signing_method_in_any_case() -> None:
    entry = {"jsonrpc": "1.0", "id": 3, "method": "PARITY_exportAccount", "params": [ACCOUNT]}
    [(text, _)] = excerpts(calls_of([entry]), [None], b"", 2048)
    assert orjson.loads(text)["params"] == REDACTED and ACCOUNT not in text


def test_fields_named_like_secrets_are_redacted_at_any_depth() -> None:
    params = [
        {
            "to": TARGET,
            "privateKey": PRIVATE_KEY,
            "deeper": [{"PRIVATE_KEY": PRIVATE_KEY, "private-key": 1, "privKey": {"a": 1}}],
            "wallet": {"mnemonic": MNEMONIC, "seedPhrase": MNEMONIC, "Passphrase": PASSWORD},
            "password": PASSWORD,
            "clientSecret": "s3cr3t",
            "value": "0x1",
        },
        "latest",
    ]
    [(text, _)] = excerpts(calls_of(rpc("eth_call", params)), None, b"", 16384)
    kept = orjson.loads(text)
    assert kept == [
        {
            "to": TARGET,
            "privateKey": REDACTED,
            "deeper": [{"PRIVATE_KEY": REDACTED, "private-key": REDACTED, "privKey": REDACTED}],
            "wallet": {"mnemonic": REDACTED, "seedPhrase": REDACTED, "Passphrase": REDACTED},
            "password": REDACTED,
            "clientSecret": REDACTED,
            "value": "0x1",
        },
        "latest",
    ]
    for secret in (PRIVATE_KEY, MNEMONIC, PASSWORD, "s3cr3t"):
        assert secret not in text
    assert redact(params) is not params and params[0]["privateKey"] == PRIVATE_KEY  # a copy


def test_a_batch_gets_an_excerpt_per_call() -> None:
    batch = [
        rpc("eth_chainId", id=1),
        {"jsonrpc": "2.0", "method": "eth_blockNumber", "params": []},  # a notification
        rpc("personal_sign", ["0xdead", ACCOUNT, PASSWORD], id=2),
        5,  # an invalid entry: shown as sent
        {"jsonrpc": "1.0", "id": 3, "method": "eth_sign", "params": [ACCOUNT, "0x1"]},
    ]
    answers = [
        {"jsonrpc": "2.0", "id": 1, "result": "0x1"},
        None,
        {"jsonrpc": "2.0", "id": 2, "result": "0xsig"},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}},
        {"jsonrpc": "2.0", "id": 3, "error": {"code": -32600, "message": "Invalid Request"}},
    ]
    got = excerpts(calls_of(batch), answers, b"ignored", 2048)
    assert got[0] == ("[]", '{"jsonrpc":"2.0","id":1,"result":"0x1"}')
    assert got[1] == ("[]", "")
    assert got[2] == (R, R)
    assert got[3] == ("5", orjson.dumps(answers[3]).decode())
    # An invalid entry naming a signing method: its params are redacted inside it.
    assert orjson.loads(got[4][0])["params"] == REDACTED and ACCOUNT not in got[4][0]
    # A batch refused as a whole: every call's answer is the one response.
    refused = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32005,"message":"Rate limited"}}'
    whole = excerpts(calls_of(batch[:2]), None, refused, 2048)
    assert [answer for _, answer in whole] == [refused.decode()] * 2


# --- through a real gateway ---------------------------------------------------------------------

TOKEN = "payloads-admin-token"
_ROWS = (
    "SELECT request_id, call_index, key_id, project_id, method, params_excerpt, response_excerpt"
    " FROM {db}.requests_raw FINAL"
)


@dataclass
class World:
    gw: ThreadedGateway
    store: ChdbStore
    capture: CreatedKey  # project "capture": payload capture on (256 bytes)
    plain: CreatedKey  # project "plain" of the same org: off

    def post(self, client: httpx.Client, key: CreatedKey, body: Any) -> httpx.Response:
        answer = client.post(self.gw.endpoint(key.key), content=orjson.dumps(body))
        assert answer.status_code in (200, 204), answer.text
        return answer

    def rows(self, request_id: str | None = None) -> list[dict[str, Any]]:
        assert self.gw.runtime is not None and self.gw.runtime.telemetry is not None
        self.gw.run(self.gw.runtime.telemetry.flush())
        if request_id is None:
            return self.gw.run(self.store.query(_ROWS + " ORDER BY request_id, call_index"))
        sql = _ROWS + " WHERE request_id = {rid:String} ORDER BY call_index"
        return self.gw.run(self.store.query(sql, {"rid": request_id}))

    def read(self, path: str, secret: str, **params: str) -> httpx.Response:
        """GET ``path`` of the logs API (in process, on the gateway's loop) as ``secret``."""
        runtime = self.gw.runtime
        assert runtime is not None and runtime.keys is not None
        keys = runtime.keys

        async def get() -> httpx.Response:
            app = create_api_app(keys.config, keys, token=TOKEN)
            scope = project_scope(KeyVerifier(keys.lookup), TOKEN)
            app.include_router(logs_query_router(lambda: self.store, scope))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
                return await c.get(
                    path, params=params, headers={"Authorization": f"Bearer {secret}"}
                )

        return self.gw.run(get())


def _analytics_config(database_url: str, anvil: Any, chdb_path: Path, database: str) -> Config:
    config = make_config(database_url, {"eth": (1, [anvil])})
    telemetry = config.telemetry.model_copy(
        update={"enabled": True, "spool_dir": chdb_path.parent / f"spool-{database}"}
    )
    return config.model_copy(
        update={"telemetry": telemetry, "analytics_path": chdb_path, "analytics_database": database}
    )


@pytest.fixture
def world(
    gateway_factory: Any, database_url: str, eth_anvil: Any, chdb_path: Path
) -> Iterator[World]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    gw: ThreadedGateway = gateway_factory(
        _analytics_config(database_url, eth_anvil, chdb_path, database)
    )
    capture = gw.key(plan="pro", org="acme", project="capture")
    plain = gw.key(plan="pro", org="acme", project="plain")
    store = ChdbStore(chdb_path, database)
    yield World(gw, store, capture, plain)
    gw.run(store.drop())
    gw.run(store.aclose())


def _turn_capture_on(world: World, size: int) -> None:
    runtime = world.gw.runtime
    assert runtime is not None and runtime.keys is not None
    record = world.capture.record
    world.gw.run(
        OrgBook(runtime.keys.store).update_project(
            record.org_id, record.project_id, capture_payloads=True, capture_bytes=size,
            actor="test",
        )
    )  # fmt: skip
    world.gw.run(runtime.keys.announce_project(record.project_id))  # the gateway reads it again


def test_captured_calls_land_in_requests_raw_with_secrets_redacted(
    world: World, client: httpx.Client
) -> None:
    call = rpc("eth_call", [{"to": TARGET, "data": "0x"}, "latest"])
    before = world.post(client, world.capture, call).headers["x-request-id"]
    _turn_capture_on(world, 256)

    # A single call: its params and the answer as sent.
    single = world.post(client, world.capture, call)
    [row] = world.rows(single.headers["x-request-id"])
    assert row["params_excerpt"] == orjson.dumps(call["params"]).decode()
    assert orjson.loads(row["response_excerpt"]) == single.json()
    assert (row["key_id"], row["project_id"]) == (world.capture.id, world.capture.record.project_id)

    # Longer than capture_bytes: cut at 256 bytes, and marked.
    long_call = rpc("eth_call", [{"to": TARGET, "data": "0x" + "ab" * 400}, "latest"])
    block = rpc("eth_getBlockByNumber", ["0x0", True], id=7)
    cut = []
    for body in (long_call, block):
        answer = world.post(client, world.capture, body)
        [row] = world.rows(answer.headers["x-request-id"])
        params, response = orjson.dumps(body["params"]), answer.content
        for excerpt, whole in (
            (row["params_excerpt"], params),
            (row["response_excerpt"], response),
        ):
            if len(whole) > 256:
                assert excerpt == f"{whole[:256].decode()}…[cut: {len(whole)} bytes]"
                cut.append(excerpt)
            else:
                assert excerpt == whole.decode()
    assert len(cut) >= 2  # the long params, the genesis block with its transactions

    # A batch: one excerpt per call; the notification got no answer.
    batch = [
        rpc("eth_chainId", id=1),
        rpc("eth_call", [{"to": TARGET, "data": "0x"}, "latest"], id=2),
        {"jsonrpc": "2.0", "method": "eth_blockNumber", "params": []},
        rpc("eth_getBalance", [ACCOUNT, "latest"], id=3),
    ]
    answered = world.post(client, world.capture, batch)
    by_id = {item["id"]: item for item in answered.json()}
    rows = world.rows(answered.headers["x-request-id"])
    assert [(r["call_index"], r["method"]) for r in rows] == [
        (0, "eth_chainId"), (1, "eth_call"), (2, "eth_blockNumber"), (3, "eth_getBalance"),
    ]  # fmt: skip
    assert [r["params_excerpt"] for r in rows] == [
        "[]", orjson.dumps(batch[1]["params"]).decode(), "[]",
        orjson.dumps([ACCOUNT, "latest"]).decode(),
    ]  # fmt: skip
    assert orjson.loads(rows[0]["response_excerpt"]) == by_id[1]
    assert orjson.loads(rows[1]["response_excerpt"]) == by_id[2]
    assert rows[2]["response_excerpt"] == ""
    assert orjson.loads(rows[3]["response_excerpt"]) == by_id[3]

    # Signing and account methods: neither params nor answers; secret fields: redacted.
    signed = world.post(client, world.capture, rpc("eth_sign", [ACCOUNT, "0xdeadbeef"]))
    signature = signed.json().get("result")
    unlock = rpc("personal_unlockAccount", [ACCOUNT, PASSWORD, 60])
    world.post(client, world.capture, unlock)
    typed = rpc("eth_signTypedData_v4", [ACCOUNT, {"types": {}, "message": {"pass": PASSWORD}}])
    world.post(client, world.capture, typed)
    nested = rpc(
        "eth_call",
        [{"to": TARGET, "data": "0x", "privateKey": PRIVATE_KEY, "x": {"mnemonic": MNEMONIC}},
         "latest"],
    )  # fmt: skip
    nested_answer = world.post(client, world.capture, nested)
    secret_batch = [rpc("personal_sign", ["0xdead", ACCOUNT, PASSWORD], id=1), nested]
    world.post(client, world.capture, secret_batch)

    rows = world.rows()
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    for method in ("eth_sign", "personal_unlockAccount", "eth_signTypedData_v4", "personal_sign"):
        assert by_method[method], method
        for row in by_method[method]:
            assert (row["params_excerpt"], row["response_excerpt"]) == (R, R), row
    [nested_row] = [r for r in rows if r["request_id"] == nested_answer.headers["x-request-id"]]
    assert orjson.loads(nested_row["params_excerpt"])[0] == {
        "to": TARGET, "data": "0x", "privateKey": REDACTED, "x": {"mnemonic": REDACTED},
    }  # fmt: skip
    dump = orjson.dumps(rows).decode()
    for secret in (PRIVATE_KEY, MNEMONIC, PASSWORD, world.capture.key, world.plain.key):
        assert secret not in dump
    if isinstance(signature, str):  # anvil signs with its unlocked dev account
        assert signature not in dump

    # Capture off: before it was turned on, and another project's key all along.
    plain = world.post(client, world.plain, call)
    for request_id in (before, plain.headers["x-request-id"]):
        [row] = world.rows(request_id)
        assert (row["params_excerpt"], row["response_excerpt"]) == ("", "")


def test_only_the_projects_own_key_reads_its_payloads(world: World, client: httpx.Client) -> None:
    _turn_capture_on(world, 2048)
    call = rpc("eth_call", [{"to": TARGET, "data": "0x"}, "latest"])
    request_id = world.post(client, world.capture, call).headers["x-request-id"]
    plain_id = world.post(client, world.plain, call).headers["x-request-id"]
    world.rows()  # flushed

    path = f"/logs/v1/requests/{request_id}"
    mine = world.read(path, world.capture.key)
    assert mine.status_code == 200, mine.text
    detail = mine.json()
    assert detail["payloads_captured"] is True and detail["payloads_note"] is None
    [only] = detail["calls"]
    assert only["params_excerpt"] == orjson.dumps(call["params"]).decode()
    assert orjson.loads(only["response_excerpt"])["result"] == "0x"
    # Another project's key, and the admin token naming another project: not found.
    theirs = world.read(path, world.plain.key)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "not_found"
    assert TARGET not in theirs.text
    named = world.read(path, TOKEN, project=world.plain.record.project_id)
    assert named.status_code == 404
    admin = world.read(path, TOKEN, project=world.capture.record.project_id)
    assert admin.json()["calls"][0]["params_excerpt"] == only["params_excerpt"]
    # The other project reads its own request: no payloads, and why.
    own = world.read(f"/logs/v1/requests/{plain_id}", world.plain.key).json()
    assert own["payloads_captured"] is False
    assert own["payloads_note"].startswith("payload capture is off for this project")
    assert own["calls"][0]["params_excerpt"] is None

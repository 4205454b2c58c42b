"""In-process units of the pipeline: JSON-RPC parsing, client IP, the key verifier's cache."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoodrun.gateway.clientip import IpPolicy
from hoodrun.gateway.errors import BatchTooLarge, InvalidRequest, ParseError
from hoodrun.gateway.jsonrpc import parse_body
from hoodrun.keys.record import KeyRecord
from hoodrun.keys.secret import generate_key, hash_key
from hoodrun.keys.verifier import KeyDenied, KeyStoreDown, KeyVerifier

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_any_json_value_parses_or_gets_a_spec_error(value: Any) -> None:
    body = orjson.dumps(value)
    try:
        is_batch, calls = parse_body(body, 1000)
    except InvalidRequest as exc:
        assert exc.code == -32600
        assert not isinstance(value, dict) and (not isinstance(value, list) or not value)
        return
    assert is_batch == isinstance(value, list)
    assert len(calls) == (len(value) if is_batch else 1)
    for call, item in zip(calls, value if is_batch else [value], strict=True):
        if call.method is not None:
            assert (
                isinstance(item, dict)
                and item["method"] == call.method
                and item["jsonrpc"] == "2.0"
            )


@given(st.binary(max_size=64))
def test_garbage_is_a_parse_error_or_parses(raw: bytes) -> None:
    try:
        parse_body(raw, 10)
    except ParseError as exc:
        assert exc.code == -32700 and exc.status == 400
    except InvalidRequest as exc:
        assert exc.code == -32600


def test_batch_cap() -> None:
    body = orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(6)])
    with pytest.raises(BatchTooLarge) as caught:
        parse_body(body, 5)
    assert caught.value.status == 413 and "6 calls" in caught.value.message
    assert len(parse_body(body, 6)[1]) == 6


def test_notifications_and_ids() -> None:
    _, calls = parse_body(
        b'[{"jsonrpc":"2.0","method":"a_b"},{"jsonrpc":"2.0","id":true,"method":"a_b"}]', 10
    )
    assert calls[0].notification and calls[0].method == "a_b"
    assert calls[1].method is None  # a boolean id is not allowed


def test_client_ip_behind_trusted_proxies() -> None:
    policy = IpPolicy(trusted=["10.0.0.0/8"], deny=["203.0.113.0/24"])
    assert (
        policy.client_ip("198.51.100.7", "1.2.3.4") == "198.51.100.7"
    )  # untrusted peer: ignore XFF
    assert policy.client_ip("10.0.0.2", "1.2.3.4, 198.51.100.9, 10.0.0.5") == "198.51.100.9"
    assert policy.client_ip("10.0.0.2", "not-an-ip") == "10.0.0.2"
    assert policy.client_ip("10.0.0.2", None) == "10.0.0.2"
    assert not policy.allowed("203.0.113.9") and policy.allowed("198.51.100.9")
    only = IpPolicy(allow=["192.0.2.0/24"])
    assert only.allowed("192.0.2.1") and not only.allowed("192.0.3.1")
    assert IpPolicy().allowed("anything")


def _record(key: str, **changes: Any) -> KeyRecord:
    fields: dict[str, Any] = dict(
        id="key_1", hash=hash_key(key), start=key[:7], org_id="org_1", org="acme", project_id="prj_1",
        project="default", name=None, plan="pro", chains=None, origins=None, methods_allow=None,
        methods_deny=frozenset(), rps=None, burst=None, created_at=datetime.now(UTC),
        expires_at=None, disabled=False, revoked_at=None,
    )  # fmt: skip
    fields.update(changes)
    return KeyRecord(**fields)


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.calls = 0
        self.down = False

    async def lookup(self, key_hash: str) -> KeyRecord | None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("store down")
        return self.records.get(key_hash)


async def test_verifier_caches_coalesces_and_degrades() -> None:
    now = [1000.0]
    store = FakeStore()
    verifier = KeyVerifier(
        store.lookup, ttl=30, negative_ttl=5, degrade_ttl=600, clock=lambda: now[0]
    )
    key = generate_key()
    store.records[hash_key(key)] = _record(key)
    results = await asyncio.gather(*(verifier.verify(key) for _ in range(20)))
    assert {r.id for r in results} == {"key_1"} and store.calls == 1  # one lookup for 20 waiters
    assert verifier.check(key) is not None and store.calls == 1
    now[0] += 31
    assert verifier.check(key) is None  # stale: must ask again
    store.down = True
    assert (await verifier.verify(key)).id == "key_1"  # degrade mode: stale entry serves
    assert verifier.degraded
    other = generate_key()
    with pytest.raises(KeyStoreDown):
        await verifier.verify(other)  # never seen: refused while the store is down
    now[0] += 601
    with pytest.raises(KeyStoreDown):
        await verifier.verify(key)  # past the degrade TTL
    store.down = False
    with pytest.raises(KeyDenied) as unknown:
        await verifier.verify(other)
    assert unknown.value.reason == "key_invalid"
    calls = store.calls
    with pytest.raises(KeyDenied):
        await verifier.verify(other)  # remembered as unknown
    assert store.calls == calls


async def test_verifier_purge_and_lifecycle() -> None:
    store = FakeStore()
    verifier = KeyVerifier(store.lookup)
    key = generate_key()
    store.records[hash_key(key)] = _record(key)
    await verifier.verify(key)
    store.records[hash_key(key)] = _record(key, revoked_at=datetime.now(UTC) - timedelta(seconds=1))
    assert verifier.check(key) is not None  # cached until purged...
    verifier.purge(hash_key(key))
    with pytest.raises(KeyDenied) as revoked:
        await verifier.verify(key)
    assert revoked.value.reason == "key_revoked"
    expiring = generate_key()
    store.records[hash_key(expiring)] = _record(
        expiring, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(KeyDenied) as expired:
        await verifier.verify(expiring)
    assert expired.value.reason == "key_expired"
    with pytest.raises(KeyDenied):
        verifier.check("hr_short")
    assert store.calls == 3  # one per real lookup; junk never reached the store


async def test_degraded_keys_do_not_wait_for_the_store_on_every_request() -> None:
    now = [0.0]
    store = FakeStore()
    verifier = KeyVerifier(store.lookup, ttl=30, degrade_ttl=600, clock=lambda: now[0])
    key = generate_key()
    store.records[hash_key(key)] = _record(key)
    await verifier.verify(key)
    now[0] += 31
    store.down = True
    calls = store.calls
    for _ in range(10):
        await verifier.verify(key)
    assert store.calls == calls + 1  # one failed lookup, then served stale for a while
    now[0] += 6
    await verifier.verify(key)
    assert store.calls == calls + 2


async def test_unknown_keys_cannot_evict_verified_ones() -> None:
    store = FakeStore()
    verifier = KeyVerifier(store.lookup, max_entries=10)
    key = generate_key()
    store.records[hash_key(key)] = _record(key)
    await verifier.verify(key)
    for _ in range(50):
        with pytest.raises(KeyDenied):
            await verifier.verify(generate_key())
    calls = store.calls
    assert verifier.check(key) is not None and store.calls == calls


class _Pool:
    """A pool whose batches fail (as a timed-out node would) while single calls succeed."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def call(self, body: bytes, *, deadline: float, **options: Any) -> Any:
        from hoodrun.upstreams import UpstreamTimeout
        from hoodrun.upstreams.pool import UpstreamReply

        self.bodies.append(body)
        if body.startswith(b"["):
            raise UpstreamTimeout("no answer")
        reply = orjson.dumps({"jsonrpc": "2.0", "id": orjson.loads(body)["id"], "result": "0xabc"})
        return UpstreamReply(200, reply, "a", 1, 0.001)

    def best_head(self) -> int:
        return 1

    def snapshot(self) -> list[Any]:
        return []


async def test_failed_reads_do_not_hide_a_batch_write_answer() -> None:
    import time as _time

    from hoodrun.config import load_config
    from hoodrun.gateway.app import Gateway
    from hoodrun.gateway.http import Request
    from hoodrun.gateway.metrics import GatewayMetrics, MetricsSink

    config = load_config(
        None,
        env={},
        overrides={
            "chains": [
                {
                    "name": "eth",
                    "chain_id": 1,
                    "upstreams": [{"name": "a", "url": "http://127.0.0.1:1/"}],
                }
            ]
        },
    )
    key = generate_key()
    record = _record(key)

    async def lookup(_: str) -> KeyRecord:
        return record

    metrics = GatewayMetrics()
    pool = _Pool()
    gateway = Gateway(
        config,
        verifier=KeyVerifier(lookup),
        pools={"eth": pool},
        sink=MetricsSink(metrics),
        metrics=metrics,
    )  # type: ignore[dict-item]
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_sendRawTransaction", "params": ["0x01"]},
    ]

    def request(body: bytes) -> Request:
        return Request("POST", f"/eth/v1/{key}", "", {}, body, "127.0.0.1", True, _time.monotonic())

    response = await gateway.handle(request(orjson.dumps(batch)))
    answers = orjson.loads(response.body)
    assert response.status == 200
    assert answers[0]["error"]["code"] == -32015 and answers[0]["id"] == 1
    assert answers[1] == {"jsonrpc": "2.0", "id": 2, "result": "0xabc"}
    # Without a write in the batch, a failure of the node is the whole answer, with its status.
    only_reads = await gateway.handle(request(orjson.dumps(batch[:1])))
    assert only_reads.status == 504

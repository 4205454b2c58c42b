"""Every request leaves a record for the telemetry sink: key id, never the key."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from hoodrun.telemetry import RequestRecord
from tests.gateway.conftest import ThreadedGateway, make_config, rpc


class ListSink:
    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.closed = False

    def emit(self, record: RequestRecord) -> None:
        self.records.append(record)

    async def aclose(self) -> None:
        self.closed = True


def test_records_for_forwarded_batched_and_refused_requests(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client
) -> None:
    sink = ListSink()
    gw: ThreadedGateway = gateway_factory(
        make_config(sqlite_url, {"eth": (1, [eth_anvil])}), (sink,)
    )
    created = gw.key(plan="free")
    client.post(gw.endpoint(created.key), content=orjson.dumps(rpc("eth_chainId")))
    client.post(
        gw.endpoint(created.key),
        content=orjson.dumps(
            [rpc("eth_blockNumber"), rpc("eth_sendRawTransaction", ["0x00"], id=2), 5]
        ),
    )
    client.post(f"{gw.url}/eth/v1/hr_unknownunknownunknown12", content=b"{}")
    single, batch, refused = sink.records
    assert (single.chain, single.method, single.status, single.calls) == (
        "eth",
        "eth_chainId",
        200,
        1,
    )
    assert single.key_id == created.id and single.org_id and single.upstream == "eth-0"
    assert (
        single.bytes_in > 0 and single.bytes_out > 0 and single.latency > 0 and single.attempts == 1
    )
    assert single.reason is None and single.client_ip == "127.0.0.1"
    assert batch.method == "batch" and batch.methods == (
        "eth_blockNumber",
        "eth_sendRawTransaction",
        "",
    )
    assert batch.calls == 3 and batch.rpc_errors == 2  # the refused write and the invalid entry
    assert refused.status == 401 and refused.reason == "key_invalid" and refused.key_id is None
    for record in sink.records:
        assert created.key not in repr(record)
    gw.stop()
    assert sink.closed  # flushed on a graceful stop


# --- records in the analytics store ----------------------------------------------------------


def _analytics_config(sqlite_url: str, anvil: Any, chdb_path: Any, database: str, **extra: Any):  # type: ignore[no-untyped-def]
    config = make_config(sqlite_url, {"eth": (1, [anvil])}, **extra)
    telemetry = config.telemetry.model_copy(
        update={"enabled": True, "spool_dir": chdb_path.parent / f"spool-{database}"}
    )
    return config.model_copy(
        update={"telemetry": telemetry, "analytics_path": chdb_path, "analytics_database": database}
    )


def test_every_call_lands_in_the_analytics_store_exactly_once(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, client: httpx.Client, chdb_path: Any
) -> None:
    import uuid

    from hoodrun.telemetry.store import ChdbStore

    database = f"t_{uuid.uuid4().hex[:12]}"
    gw: ThreadedGateway = gateway_factory(
        _analytics_config(sqlite_url, eth_anvil, chdb_path, database)
    )
    free = gw.key(plan="free")
    pro = gw.key(plan="pro")
    url = gw.endpoint(pro.key)
    request_ids = set()
    for _ in range(5):
        answer = client.post(url, content=orjson.dumps(rpc("eth_chainId")))
        request_ids.add(answer.headers["x-request-id"])
    for _ in range(3):
        client.post(url, content=orjson.dumps(rpc("eth_blockNumber")))
    client.post(url, content=orjson.dumps(rpc("eth_notAMethod")))  # the node's -32601
    batch = client.post(
        url, content=orjson.dumps([rpc("eth_chainId"), rpc("eth_blockNumber", id=2), 7])
    )
    client.post(  # free plan: no transactions
        gw.endpoint(free.key), content=orjson.dumps(rpc("eth_sendRawTransaction", ["0x00"]))
    )
    client.post(f"{gw.url}/eth/v1/hr_unknownunknownunknown12", content=orjson.dumps(rpc("x_y")))
    assert len(request_ids) == 5 and batch.status_code == 200

    assert gw.runtime is not None and gw.runtime.telemetry is not None
    gw.run(gw.runtime.telemetry.flush())
    store = ChdbStore(chdb_path, database)

    async def query(sql: str) -> list[dict[str, Any]]:
        return await store.query(sql)

    rows = gw.run(
        query(
            "SELECT method, outcome, error_code, status, count() AS n, sum(compute_units) AS cu,"
            " uniqExact(request_id) AS requests, max(batch_size) AS batch"
            " FROM {db}.requests_raw FINAL GROUP BY ALL ORDER BY method, outcome"
        )
    )
    got = {(r["method"], r["outcome"]): r for r in rows}
    assert got.keys() == {
        ("-", "invalid_request"),
        ("eth_blockNumber", "ok"),
        ("eth_chainId", "ok"),
        ("eth_notAMethod", "rpc_error"),
        ("eth_sendRawTransaction", "method_not_allowed"),
        ("-", "key_invalid"),  # refused before its body is read
    }
    assert got["eth_chainId", "ok"]["n"] == 6 and got["eth_chainId", "ok"]["cu"] == 0
    assert got["eth_blockNumber", "ok"]["n"] == 4 and got["eth_blockNumber", "ok"]["cu"] == 40
    assert got["eth_notAMethod", "rpc_error"]["error_code"] == -32601
    assert got["eth_notAMethod", "rpc_error"]["cu"] == 20  # a node answer: the default weight
    assert got["-", "invalid_request"]["error_code"] == -32600
    assert got["-", "invalid_request"]["batch"] == 3
    refused = got["eth_sendRawTransaction", "method_not_allowed"]
    assert (refused["status"], refused["error_code"], refused["cu"]) == (403, -32004, 0)
    assert got["-", "key_invalid"]["status"] == 401
    assert sum(r["n"] for r in rows) == 14

    ids = gw.run(query("SELECT DISTINCT request_id FROM {db}.requests_raw FINAL"))
    assert request_ids <= {r["request_id"] for r in ids}
    keys = gw.run(query("SELECT DISTINCT key_id FROM {db}.requests_raw FINAL"))
    assert {r["key_id"] for r in keys} == {free.id, pro.id, ""}
    dump = gw.run(query("SELECT * FROM {db}.requests_raw FINAL"))
    assert not any(k in orjson.dumps(dump).decode() for k in (free.key, pro.key))

    hourly = gw.run(query("SELECT sum(requests) AS n FROM {db}.usage_hourly FINAL"))
    assert hourly[0]["n"] == 14  # flush() also rolls up

    metrics = client.get(f"{gw.url}/metrics").text
    assert 'hoodrun_telemetry_records_total{state="written"} 14.0' in metrics
    gw.run(store.drop())
    gw.run(store.aclose())

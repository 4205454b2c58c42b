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

"""Traces and logs: a span per request and per upstream call, one correlation id shared by the
response header, the log lines and the span, and the key nowhere in any of them."""

from __future__ import annotations

import io
import logging
from typing import Any

import httpx
import orjson
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hoodrun.logs import JsonFormatter, redact
from tests.gateway.conftest import ThreadedGateway, make_config, rpc


def test_spans_and_log_lines_share_the_request_id_and_never_hold_the_key(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Any, anvil_factory: Any,
    client: httpx.Client,
) -> None:  # fmt: skip
    dead = anvil_factory(chain_id=8453)
    config = make_config(
        sqlite_url,
        {"eth": (1, [eth_anvil]), "base": (8453, [dead])},
        health={"interval": 60},  # the checker must not take the dead node out first
    )
    config = config.model_copy(
        update={"tracing": config.tracing.model_copy(update={"enabled": True})}
    )
    exporter = InMemorySpanExporter()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("hoodrun")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        gw: ThreadedGateway = gateway_factory(config, span_exporter=exporter)
        created = gw.key(plan="pro")
        dead.stop()  # calls to base fail inside their request, and log it
        request_ids = []
        for _ in range(6):
            answer = client.post(
                gw.endpoint(created.key), content=orjson.dumps(rpc("eth_blockNumber"))
            )
            assert answer.status_code == 200
            request_ids.append(answer.headers["x-request-id"])
        client.post(  # the key in a header this time, and an unknown key in the path
            f"{gw.url}/eth/v1", headers={"authorization": f"Bearer {created.key}"},
            content=orjson.dumps(rpc("eth_blockNumber")),
        )  # fmt: skip
        failed = client.post(
            gw.endpoint(created.key, chain="base"),
            content=orjson.dumps(rpc("eth_chainId")),
        )
        assert failed.status_code == 502
        client.post(f"{gw.url}/eth/v1/{created.key}x", content=orjson.dumps(rpc("eth_chainId")))
        gw.stop()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)

    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.name == "jsonrpc"]
    upstreams = [s for s in spans if s.name == "upstream"]
    assert len(servers) == 9 and len(upstreams) == 8
    assert [s.attributes["hoodrun.request_id"] for s in servers[:6]] == request_ids
    for span in upstreams:  # children of their request's span
        assert span.parent is not None
        assert span.parent.span_id in {s.context.span_id for s in servers}
    assert servers[0].attributes["hoodrun.key_id"] == created.id
    assert servers[-1].attributes["hoodrun.outcome"] == "key_invalid"
    everything = "".join(span.to_json() for span in spans) + lines.getvalue()
    assert created.key not in everything and created.key[3:] not in everything

    logged = [orjson.loads(line) for line in lines.getvalue().splitlines()]
    failures = [e for e in logged if "failed" in e["message"] and "request_id" in e]
    assert failures, "the dead node's failures were logged"
    for entry in failures:
        assert entry["request_id"] in {s.attributes["hoodrun.request_id"] for s in servers}
        trace_ids = {format(s.context.trace_id, "032x") for s in servers}
        assert entry["trace_id"] in trace_ids


def test_redact_hides_anything_shaped_like_a_key() -> None:
    text = "GET /eth/v1/hr_3mJr7AoUXx2Wqd3Zx8Bz5k7PqRsT9 failed, key hr_abc kept"
    assert redact(text) == "GET /eth/v1/hr_…redacted failed, key hr_abc kept"

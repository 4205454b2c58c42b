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

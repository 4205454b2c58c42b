"""The key store goes down: keys already verified keep working, new keys are refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import scratch_pg_database
from tests.gateway.conftest import ThreadedGateway, make_config, rpc

BODY = orjson.dumps(rpc("eth_chainId"))


class TcpProxy:
    """A TCP relay to PostgreSQL that a test can cut, like a network partition."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(5)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        async def _cut() -> None:
            assert self._server is not None
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(_cut(), self.loop).result(5)


@pytest.fixture
def proxied_pg() -> Iterator[tuple[str, TcpProxy]]:
    with scratch_pg_database("hoodrun_degrade") as url:
        proxy = TcpProxy(5432)
        yield url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), proxy


def test_cached_keys_survive_a_store_outage(
    gateway_factory: Any, proxied_pg: tuple[str, TcpProxy], eth_anvil: Any, client: httpx.Client
) -> None:
    url, proxy = proxied_pg
    gw: ThreadedGateway = gateway_factory(
        make_config(
            url, {"eth": (1, [eth_anvil])}, gateway={"key_cache_ttl": 1, "key_degrade_ttl": 600}
        )
    )
    known = gw.key().key
    never_used = gw.key().key
    assert client.post(gw.endpoint(known), content=BODY).status_code == 200
    proxy.cut()
    time.sleep(1.2)  # let the cache entry go past its fresh TTL, so the store must be asked
    degraded = client.post(gw.endpoint(known), content=BODY)
    assert degraded.status_code == 200, degraded.text
    refused = client.post(gw.endpoint(never_used), content=BODY)
    assert refused.status_code == 503
    assert refused.json()["error"]["data"]["reason"] == "key_store_unavailable"
    unknown = client.post(gw.endpoint("hr_" + "1" * 27), content=BODY)
    assert unknown.status_code in (401, 503)
    ready = client.get(f"{gw.url}/health/ready")
    assert ready.status_code == 503 and ready.json()["checks"]["store"]["ok"] is False

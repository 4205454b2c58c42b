"""A real gateway on a real socket, run on its own event loop in a thread.

Sync clients (web3.py, httpx) and async tests can both call it; ``gw.run(coro)`` runs a coroutine
(e.g. ``gw.runtime.keys.create(...)``) on the gateway's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from hoodrun.config import Config, load_config
from hoodrun.devnet import Anvil, free_port
from hoodrun.gateway.runtime import GatewayRuntime
from hoodrun.keys.service import CreatedKey
from hoodrun.store import upgrade

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class ThreadedGateway:
    def __init__(self, config: Config, sinks: tuple[Any, ...] = (), **runtime: Any) -> None:
        self.config = config
        self.sinks = sinks
        self.runtime_options = runtime
        self.loop = asyncio.new_event_loop()
        self.runtime: GatewayRuntime | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await upgrade(self.config.database_url)
            async with GatewayRuntime(
                self.config,
                port=0,
                key_poll_interval=0.5,
                sinks=self.sinks,
                **self.runtime_options,
            ) as runtime:
                self.runtime = runtime
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> ThreadedGateway:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(30)

    @property
    def url(self) -> str:
        assert self.runtime is not None
        return f"http://127.0.0.1:{self.runtime.port}"

    def endpoint(self, key: str, chain: str = "eth") -> str:
        return f"{self.url}/{chain}/v1/{key}"

    def key(self, plan: str = "pro", **kwargs: Any) -> CreatedKey:
        assert self.runtime is not None and self.runtime.keys is not None
        kwargs.setdefault("org", "acme")
        return self.run(self.runtime.keys.create(plan=plan, **kwargs))


def make_config(
    database_url: str,
    chains: dict[str, tuple[int, list[Anvil]]],
    *,
    health: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    **overrides: Any,
) -> Config:
    """The sample config, with the given chains and a test database."""
    base = load_config(ROOT / "hoodrun.example.yaml", env={})
    data = base.model_dump(mode="json")
    data.update(
        database_url=database_url,
        chains=[
            {
                "name": name,
                "chain_id": chain_id,
                "upstreams": [{"name": f"{name}-{i}", "url": n.url} for i, n in enumerate(nodes)],
            }
            for name, (chain_id, nodes) in chains.items()
        ],
        health={**data["health"], "interval": 0.3, "breaker_cooldown": 1.0, **(health or {})},
        gateway={**data["gateway"], **(gateway or {})},
        # Telemetry tests turn it on (with the process's one chDB directory); others skip it.
        telemetry={**data["telemetry"], "enabled": False},
        **overrides,
    )
    return Config.model_validate(data)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/hoodrun.db"
        return
    from tests.conftest import scratch_pg_database

    with scratch_pg_database("hoodrun_gw") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/hoodrun.db"


@pytest.fixture
def gateway_factory() -> Iterator[Any]:
    started: list[ThreadedGateway] = []

    def make(config: Config, sinks: tuple[Any, ...] = (), **runtime: Any) -> ThreadedGateway:
        gw = ThreadedGateway(config, sinks, **runtime).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def rpc(method: str, params: list[Any] | None = None, id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params or []}


class CountingProxy:
    """In front of a node: counts the calls of one method and holds them ``delay`` seconds, so
    that concurrent callers overlap at the gateway."""

    def __init__(
        self,
        target: str,
        method: str,
        delay: float,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.target, self.method, self.delay = target, method, delay
        self.where = where  # counts only the calls this accepts
        self.count = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._main, daemon=True).start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.run_forever()

    async def _serve(self) -> None:
        self.session = aiohttp.ClientSession()

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            parsed = orjson.loads(body)
            calls = parsed if isinstance(parsed, list) else [parsed]
            matching = sum(
                1
                for c in calls
                if isinstance(c, dict)
                and c.get("method") == self.method
                and (self.where is None or self.where(c))
            )
            if matching:
                self.count += matching
                await asyncio.sleep(self.delay)
            async with self.session.post(
                self.target, data=body, headers={"content-type": "application/json"}
            ) as reply:
                return web.Response(body=await reply.read(), content_type="application/json")

        app = web.Application()
        app.router.add_post("/", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self._ready.set()

    def stop(self) -> None:
        async def close() -> None:
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

"""The gateway process's lifespan: open every store, pool and client once, close in reverse.

``GatewayRuntime`` is an async context manager; ``hoodrun gateway`` runs one, ``hoodrun up`` runs
one beside the api role (sharing its store and key events), and the tests run many.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from hoodrun.config import Config, parse_listen
from hoodrun.configdiff import Change, reloadable
from hoodrun.gateway.app import Gateway
from hoodrun.gateway.cache import RedisCache
from hoodrun.gateway.http import HttpServer
from hoodrun.gateway.metrics import GatewayMetrics, MetricsSink
from hoodrun.keys.events import KeyEvents, LocalKeyEvents
from hoodrun.keys.redis_events import RedisKeyEvents
from hoodrun.keys.service import CHANGES_OVERLAP, KeyService
from hoodrun.keys.verifier import KeyVerifier
from hoodrun.limits import Limiter, MemoryLimiter, RedisLimiter
from hoodrun.limits._resp import RespClient
from hoodrun.metering.entitlements import Entitlements, UsageCounters, billable_since
from hoodrun.ops.cordons import CordonBook
from hoodrun.store import Store
from hoodrun.telemetry.service import Telemetry, compute_units, open_telemetry
from hoodrun.telemetry.sink import FanoutSink, TelemetrySink
from hoodrun.tracing import open_tracer
from hoodrun.upstreams import ChainPool

__all__ = ["GatewayRuntime", "open_key_events"]

log = logging.getLogger("hoodrun.gateway")


async def open_key_events(config: Config, stack: AsyncExitStack) -> KeyEvents:
    """The key change bus: Redis pub/sub when configured, else in-process."""
    if config.redis_url is None:
        return LocalKeyEvents()
    events = RedisKeyEvents(config.redis_url, config.redis_prefix)
    await events.start()
    stack.push_async_callback(events.aclose)
    return events


class GatewayRuntime:
    """Everything one gateway process holds. Use ``async with``; ``port`` is the bound port."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        events: KeyEvents | None = None,
        sinks: tuple[TelemetrySink, ...] = (),
        telemetry: Telemetry | None = None,
        span_exporter: Any = None,
        port: int | None = None,
        reuse_port: bool = False,
        key_poll_interval: float = 1.0,
        cordon_poll_interval: float | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._events = events
        self._extra_sinks = sinks
        self.telemetry = telemetry
        self._span_exporter = span_exporter
        self._port = port
        self._reuse_port = reuse_port
        self._poll_interval = key_poll_interval
        self._cordon_poll = (
            cordon_poll_interval if cordon_poll_interval is not None else config.gateway.cordon_poll
        )
        # The cordons last read from the store, per chain (applied to every pool, new ones too).
        self.cordons: dict[str, frozenset[str]] = {}
        self._cordons_failing = False
        self._stack = AsyncExitStack()
        self.port = 0
        self.gateway: Gateway | None = None
        self.keys: KeyService | None = None
        self.server: HttpServer | None = None
        self.metrics = GatewayMetrics()
        self.usage: UsageCounters | None = None

    async def __aenter__(self) -> GatewayRuntime:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _open(self) -> None:
        config, stack = self.config, self._stack
        store = self._store
        if store is None:
            store = await stack.enter_async_context(Store(config.database_url))
            await store.sync_plans(config.plans)
        events = self._events or await open_key_events(config, stack)
        self.keys = keys = KeyService(store, config, events)
        verifier = KeyVerifier(
            keys.lookup,
            ttl=config.gateway.key_cache_ttl,
            negative_ttl=config.gateway.key_negative_ttl,
            degrade_ttl=config.gateway.key_degrade_ttl,
        )
        events.subscribe(verifier.purge)
        self.verifier = verifier

        limiter: Limiter
        shared_cache: RedisCache | None = None
        readiness: dict[str, Any] = {"store": store.ping}
        if config.redis_url is not None:
            import redis.asyncio as redis

            # redis-py for the readiness ping; the limiter's hot command goes through the lean
            # pipelined client (see hoodrun/limits/_resp.py for why).
            client = redis.Redis.from_url(
                config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            stack.push_async_callback(client.aclose)
            if config.redis_url.startswith(("redis://", "unix://")):
                lean = RespClient(config.redis_url)
                stack.push_async_callback(lean.aclose)
                limiter = RedisLimiter(lean, config.redis_prefix)
                execute: Any = lean.execute
            else:  # TLS (rediss://): the lean client speaks plain TCP only
                limiter = RedisLimiter(client, config.redis_prefix)
                execute = client.execute_command
            if config.cache.backend == "redis":
                shared_cache = RedisCache(execute, config.redis_prefix, config.cache.redis_ttl)

            async def redis_ping() -> None:
                await client.ping()

            readiness["redis"] = redis_ping
        else:
            limiter = MemoryLimiter()
        stack.push_async_callback(limiter.aclose)

        pools: dict[str, ChainPool] = {}
        for chain in config.chains:
            pool = ChainPool(chain, config.health_for(chain), config.gateway)
            await pool.start()
            stack.push_async_callback(pool.aclose)
            pools[chain.name] = pool

        if self.telemetry is None:  # a gateway on its own: its own pipeline
            self.telemetry = await open_telemetry(config, stack, produce=True)
        self.metrics.registry.register(self.telemetry.stats)
        self.usage = usage = UsageCounters(compute_units(config))
        await self._seed_usage(usage)
        sinks: list[TelemetrySink] = [MetricsSink(self.metrics), usage, *self._extra_sinks]
        if self.telemetry.writer is not None:
            sinks.append(self.telemetry.writer)
        sink = FanoutSink(sinks)
        tracing = open_tracer(config, self._span_exporter)
        tracer = None
        if tracing is not None:
            tracer, provider = tracing
            stack.callback(provider.shutdown)
        stack.push_async_callback(sink.aclose)
        self.gateway = gateway = Gateway(
            config,
            verifier=verifier,
            pools=pools,
            sink=sink,
            metrics=self.metrics,
            limiter=limiter,
            readiness=readiness,
            tracer=tracer,
            shared_cache=shared_cache,
            entitlements=Entitlements(usage),
        )
        stack.push_async_callback(gateway.close_pools)  # the pools a reload added too
        # Cordons apply before the first request: a restarted gateway never sends one to an
        # upstream an operator took out.
        cordons = CordonBook(store)
        await self._read_cordons(cordons)
        stack.push_async_callback(gateway.sockets.aclose)  # after the server stopped
        server = HttpServer(
            gateway.handle,
            gateway.fallback,
            max_body=config.gateway.max_body_bytes,
            log_exception=lambda message: log.exception(message),
            upgrade=gateway.sockets.upgrade if config.ws.enabled else None,
        )
        host, port = parse_listen(config.listen)
        self.port = await server.serve(
            host, self._port if self._port is not None else port, reuse_port=self._reuse_port
        )
        self.server = server
        stack.push_async_callback(server.shutdown)
        loop = asyncio.get_running_loop()
        pollers = [
            loop.create_task(self._poll_key_changes(keys, verifier)),
            loop.create_task(self._poll_cordons(cordons)),
        ]

        async def stop_pollers() -> None:
            for poller in pollers:
                poller.cancel()
            for poller in pollers:
                with contextlib.suppress(asyncio.CancelledError):
                    await poller

        stack.push_async_callback(stop_pollers)
        # Everything built so far lives as long as the process: keep the garbage collector from
        # re-scanning it on every collection (a measured share of the per-request cost).
        gc.collect()
        gc.freeze()

    async def _seed_usage(self, usage: UsageCounters) -> None:
        """The month so far from the analytics store this process writes to (when it has one
        it may read): quotas count from there, not from zero, after a restart."""
        store = self.telemetry.store if self.telemetry is not None else None
        if store is None:
            return
        try:
            usage.seed(await billable_since(store, usage.month_start))
        except Exception as exc:  # noqa: BLE001 (quotas then count from now; say so)
            log.warning("quotas count from zero: the month so far could not be read (%s)", exc)

    async def _poll_key_changes(self, keys: KeyService, verifier: KeyVerifier) -> None:
        """Safety net beside the events bus: purge keys changed by any process (CLI included)."""
        watermark = datetime.now(UTC) - CHANGES_OVERLAP
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                hashes, newest = await keys.changed_since(watermark)
            except Exception as exc:  # noqa: BLE001 (store down: degrade mode covers the keys)
                log.debug("key change poll failed: %s", type(exc).__name__)
                continue
            for key_hash in hashes:
                verifier.purge(key_hash)
            # changed_since already trails "now" by its overlap; never move backwards.
            watermark = max(watermark, newest)

    async def _read_cordons(self, book: CordonBook) -> None:
        """Read the cordons and apply them; when the store does not answer, the last ones
        read stay applied (none at start: every upstream serves)."""
        try:
            self.cordons = await book.by_chain()
        except Exception as exc:  # noqa: BLE001 (store down: keep what was applied)
            # Said once per outage, not at every poll.
            level = logging.DEBUG if self._cordons_failing else logging.WARNING
            log.log(level, "cordons not read (%s): the last ones read stay", type(exc).__name__)
            self._cordons_failing = True
        else:
            if self._cordons_failing:
                log.info("cordons read again")
            self._cordons_failing = False
        self._apply_cordons()

    def _apply_cordons(self) -> None:
        if self.gateway is None:
            return
        for state in self.gateway.chains.values():
            state.pool.set_cordoned(self.cordons.get(state.name, ()))

    async def _poll_cordons(self, book: CordonBook) -> None:
        """Cordons made by any process (the admin API, the control center) reach this gateway
        within one interval."""
        while True:
            await asyncio.sleep(self._cordon_poll)
            await self._read_cordons(book)

    async def reload(self, config: Config) -> list[Change]:
        """Adopt ``config``'s chains, upstreams, plans, health checks and public access without
        dropping a request (``Gateway.reload``); plans are synced to the database. Returns the
        other changes, which need a restart (they are not applied)."""
        if self.gateway is None or self.keys is None:
            raise RuntimeError("the gateway is not running")
        merged, restart = reloadable(self.config, config)
        await self.keys.store.sync_plans(merged.plans)
        self.keys.config = merged
        await self.gateway.reload(merged)
        self._apply_cordons()  # to the chains and upstreams the reload added
        self.config = merged
        return restart

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

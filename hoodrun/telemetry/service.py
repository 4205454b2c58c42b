"""The telemetry side of one process, opened once in its lifespan.

| role | without ``nats_url`` (embedded) | with ``nats_url`` |
| --- | --- | --- |
| gateway | writer → analytics store, rollups here | writer → JetStream |
| worker | rollups only | JetStream → analytics store, rollups |
| ``hoodrun up`` | writer → analytics store, rollups | writer → JetStream → store (both here) |

The process that writes rows also rebuilds their rollups (``Rollups``), every
``telemetry.rollup_interval`` seconds, after a catch-up at start for hours a stopped process left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from contextlib import AsyncExitStack
from typing import Any

from hoodrun.config import Config
from hoodrun.telemetry.pipeline import BatchTarget, StoreTarget, TelemetryStats, TelemetryWriter
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.spool import Spool
from hoodrun.telemetry.store import AnalyticsStore, open_analytics
from hoodrun.telemetry.units import ComputeUnits

__all__ = ["Telemetry", "compute_units", "open_telemetry", "row_builder"]

log = logging.getLogger("hoodrun.telemetry")


def compute_units(config: Config) -> ComputeUnits:
    cu = config.compute_units
    return ComputeUnits(
        cu.default, cu.methods, cu.chains, cu.cache_hit_percent, cu.notification_bytes_per_unit
    )


def row_builder(config: Config) -> RowBuilder:
    return RowBuilder(
        compute_units(config),
        config.telemetry.client_ip,
        # A salt per deployment, kept beside the data: hashes stay comparable across restarts
        # and cannot be reversed by trying every address without it.
        _ip_salt(config) if config.telemetry.client_ip == "hash" else b"",
    )


def _ip_salt(config: Config) -> bytes:
    path = config.data_dir / "ip-salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip().encode()


class Telemetry:
    """What one process runs of the pipeline; ``flush()`` pushes everything through."""

    def __init__(self) -> None:
        self.stats = TelemetryStats()
        self.writer: TelemetryWriter | None = None
        self.store: AnalyticsStore | None = None
        self.rollups: Rollups | None = None
        self.consumer: Any = None  # hoodrun.telemetry.nats.NatsConsumer when consuming

    async def flush(self) -> None:
        if self.writer is not None:
            await self.writer.flush()
        if self.consumer is not None:
            await self.consumer.drain()
        if self.rollups is not None:
            await self.rollups.run()

    def _start_rollups(self, rollups: Rollups, stack: AsyncExitStack, interval: float) -> None:
        async def loop() -> None:
            try:
                await rollups.catch_up()
            except Exception as exc:  # noqa: BLE001 (the store may be down: the loop retries)
                log.warning("rollup catch-up failed: %s", exc)
            while True:
                await asyncio.sleep(interval)
                try:
                    await rollups.run()
                except Exception as exc:  # noqa: BLE001 (hours stay marked for next time)
                    log.warning("rollup failed: %s", exc)

        task = asyncio.get_running_loop().create_task(loop())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:  # the last rows written get their rollup
                await rollups.run()
            except Exception as exc:  # noqa: BLE001 (the catch-up of the next start covers it)
                log.warning("final rollup failed: %s", exc)

        stack.push_async_callback(stop)


async def open_telemetry(
    config: Config,
    stack: AsyncExitStack,
    *,
    produce: bool = True,
    consume: bool = False,
    store: AnalyticsStore | None = None,
) -> Telemetry:
    """Open what this process's roles need; everything closes with ``stack``.

    ``produce``: this process emits records (a gateway). ``consume``: it owns the analytics
    store's writes (a worker, or ``hoodrun up``). ``store``: an already open store to use.
    """
    settings = config.telemetry
    telemetry = Telemetry()
    if not settings.enabled:
        return telemetry
    nats_url = config.nats_url
    target: BatchTarget | None = None
    if (produce and nats_url is None) or consume:
        if store is None:
            store = open_analytics(config)
            stack.push_async_callback(store.aclose)
        await store.setup(settings.retention)
        rollups = Rollups(store, settings.retention.raw_days)
        telemetry.store, telemetry.rollups = store, rollups
        # Started before the consumer so that it stops after it: the last rows get rolled up.
        telemetry._start_rollups(rollups, stack, settings.rollup_interval)
        if nats_url is None:
            target = StoreTarget(store, rollups)
        elif consume:
            from hoodrun.telemetry.nats import NatsConsumer

            consumer = NatsConsumer(
                nats_url, settings.stream, store, rollups, ack_wait=settings.ack_wait
            )
            await consumer.start()
            stack.push_async_callback(consumer.aclose)
            telemetry.consumer = consumer
    if produce:
        if nats_url is not None:
            from hoodrun.telemetry.nats import NatsTarget

            target = NatsTarget(nats_url, settings.stream)
        if target is None:  # unreachable: producing without NATS opened the store above
            raise RuntimeError("no telemetry target")
        writer = TelemetryWriter(
            target,
            row_builder(config),
            Spool.claim(settings.spool_dir or config.data_dir / "spool"),
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            stats=telemetry.stats,
        )
        await writer.start()
        stack.push_async_callback(writer.aclose)
        telemetry.writer = writer
    return telemetry

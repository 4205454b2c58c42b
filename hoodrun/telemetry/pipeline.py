"""The telemetry pipeline: records leave the hot path through a bounded queue and reach the
analytics store (or NATS) in batches, with a spool for when the target is down.

``TelemetryWriter`` is the gateway's sink. ``emit`` appends the record to columns and returns
(``ColumnBuffer``: no Python object per queued record but its id); a background task writes a
batch whenever ``batch_size`` records are waiting or ``flush_interval`` has passed, so a
``kill -9`` loses at most one interval. A failed write goes to the spool, and while the spool
holds anything every new batch queues behind it, so batches arrive in order once the target is
back. A graceful stop writes (or spools) everything. Counters for each state are on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import ColumnBuffer, RowBuilder, conform, flatten
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.spool import Spool
from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["BatchTarget", "StoreTarget", "TelemetryStats", "TelemetryWriter", "hours_of"]

log = logging.getLogger("hoodrun.telemetry")
_MAX_RETRY_DELAY = 30.0
_BUILD_SLICE = 1_000


class BatchTarget(Protocol):
    async def write(self, table: pa.Table) -> None:
        """Deliver a batch of rows, or raise."""

    async def aclose(self) -> None: ...


class TelemetryStats(Collector):
    """Record counts by state, for ``/metrics`` and for tests."""

    STATES = ("queued", "written", "spilled", "replayed", "dropped", "failed_writes")

    def __init__(self) -> None:
        self.queued = self.written = self.spilled = self.replayed = self.dropped = 0
        self.failed_writes = 0
        self.queue_depth: Callable[[], int] = lambda: 0
        self.spool_files: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        records = CounterMetricFamily(
            "hoodrun_telemetry_records",
            "Request rows by pipeline state (failed_writes counts write attempts)",
            labels=["state"],
        )
        for state in self.STATES:
            records.add_metric([state], getattr(self, state))
        yield records
        yield GaugeMetricFamily(
            "hoodrun_telemetry_queue_depth", "Records waiting for the next write",
            value=self.queue_depth(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "hoodrun_telemetry_spool_batches", "Batches waiting in the spool",
            value=self.spool_files(),
        )  # fmt: skip


def hours_of(table: pa.Table) -> range:
    """Epoch seconds of every hour start the batch's rows fall in."""
    if table.num_rows == 0:
        return range(0)
    bounds = pc.min_max(table["ts"].cast(pa.int64()))
    first, last = bounds["min"].as_py() // 1000, bounds["max"].as_py() // 1000
    return range(first - first % 3600, last - last % 3600 + 1, 3600)


class StoreTarget:
    """Writes batches into ``requests_raw`` and marks their hours for the rollups."""

    def __init__(self, store: AnalyticsStore, rollups: Rollups | None = None) -> None:
        self.store = store
        self.rollups = rollups

    async def write(self, table: pa.Table) -> None:
        await self.store.insert(table)
        if self.rollups is not None:
            self.rollups.mark(hours_of(table))

    async def aclose(self) -> None:
        return None


class TelemetryWriter:
    """The gateway's telemetry sink (see the module's docstring)."""

    def __init__(
        self,
        target: BatchTarget,
        builder: RowBuilder,
        spool: Spool,
        *,
        queue_size: int = 200_000,
        batch_size: int = 10_000,
        flush_interval: float = 1.0,
        stats: TelemetryStats | None = None,
    ) -> None:
        self.target = target
        self.builder = builder
        self.spool = spool
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.stats = stats or TelemetryStats()
        self.stats.queue_depth = lambda: self._waiting
        self.stats.spool_files = lambda: len(self.spool)
        # The queue: single calls as columns, batches as flat tuples (see hoodrun.telemetry.rows).
        self._columns = ColumnBuffer()
        self._batches: list[tuple[Any, ...]] = []
        self._waiting = 0
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._retry_delay = flush_interval
        self._stopping = False
        self._closed = False

    # --- the hot path ------------------------------------------------------------------------

    def emit(self, record: RequestRecord) -> None:
        waiting = self._waiting
        if waiting >= self.queue_size:
            self.stats.dropped += max(record.calls, 1)
            return
        if record.calls <= 1 and record.call_results is None and record.excerpts is None:
            self._columns.add(record)
        else:
            self._batches.append(flatten(record))
        self._waiting = waiting = waiting + 1
        if waiting == self.batch_size:
            self._wake.set()

    # --- the writer ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # keep the writer alive; the batch is spooled
                log.exception("telemetry flush failed")

    async def flush(self) -> None:
        """Write everything queued now (spooling what cannot be written)."""
        async with self._flushing:
            # Only what is queued now: records arriving meanwhile wait for the next flush, so
            # writes stay batch-sized however fast they come.
            columns, batches = self._columns, self._batches
            self._columns, self._batches, self._waiting = ColumnBuffer(), [], 0
            if len(columns) or batches:
                table = await self._build(columns, batches)
                for start in range(0, table.num_rows, self.batch_size):
                    part = table.slice(start, self.batch_size)
                    self.stats.queued += part.num_rows
                    await self._deliver(part)
            if len(self.spool) and time.monotonic() >= self._retry_at:
                await self._drain()

    async def _build(self, columns: ColumnBuffer, batches: list[tuple[Any, ...]]) -> pa.Table:
        """The rows of what was queued, built on the event loop.

        Not in a worker thread: a thread running Python beside the loop takes the GIL each time
        the loop enters a system call and keeps it for the switch interval (5 ms), which cost
        the gateway a tenth of its throughput and 10 ms at p99 (bench/README.md). The single
        calls are built from their columns' memory in one step (about 0.1 µs a row); batches,
        rare, a slice of ``_BUILD_SLICE`` records at a time (about a millisecond each)."""
        tables = [self.builder.table_of_columns(columns)] if len(columns) else []
        for start in range(0, len(batches), _BUILD_SLICE):
            await asyncio.sleep(0)
            tables.append(self.builder.table_of_flat(batches[start : start + _BUILD_SLICE]))
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    async def _deliver(self, table: pa.Table) -> None:
        if len(self.spool) and time.monotonic() >= self._retry_at:
            await self._drain()
        if len(self.spool):  # still behind: keep the order
            self._spill(table)
            return
        try:
            await self.target.write(table)
        except Exception as exc:  # noqa: BLE001 (any failure of the target: spool, retry later)
            self._failed(exc)
            self._spill(table)
        else:
            self.stats.written += table.num_rows
            self._retry_delay = self.flush_interval

    async def _drain(self) -> None:
        while (path := self.spool.oldest()) is not None:
            table = await asyncio.to_thread(self.spool.read, path)
            # A batch an older version spooled lacks the columns added since (other columns:
            # the write refuses them, as before).
            with contextlib.suppress(ValueError):
                table = conform(table)
            try:
                await self.target.write(table)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
                return
            self.spool.remove(path)
            self.stats.replayed += table.num_rows
            self._retry_delay = self.flush_interval
        log.info("telemetry spool drained")

    def _spill(self, table: pa.Table) -> None:
        self.spool.append(table)
        self.stats.spilled += table.num_rows

    def _failed(self, exc: BaseException) -> None:
        self.stats.failed_writes += 1
        log.warning(
            "telemetry write failed (%s); spooling, next try in %.1f s", exc, self._retry_delay
        )
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, _MAX_RETRY_DELAY)

    async def aclose(self) -> None:
        """Stop the writer and write (or spool) everything still queued. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # No cancel: a flush cut in the middle would lose the batch it holds.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self._retry_at = 0.0  # one last try at the spool
        await self.flush()
        await self.target.aclose()
        self.spool.release()

"""The writer: batches off the hot path, a spool while the store is down, exactly-once rows."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from hoodrun.telemetry.pipeline import StoreTarget, TelemetryWriter, hours_of
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.spool import Spool
from hoodrun.telemetry.store import BACKGROUND_NICE, ChdbStore, StoreError
from hoodrun.telemetry.units import ComputeUnits
from tests.telemetry.support import call_record


def record(n: int, *, method: str = "eth_call", ts: float | None = None) -> RequestRecord:
    return call_record(f"req{n:08d}", ts=ts, method=method)


class FlakyTarget(StoreTarget):
    """The real store behind a switch: ``down`` fails every write (the store stopped);
    ``lose_ack`` writes the batch and then fails (a timeout after the store took it)."""

    def __init__(self, store: ChdbStore, rollups: Rollups | None = None) -> None:
        super().__init__(store, rollups)
        self.down = False
        self.lose_ack = False
        self.batches: list[int] = []

    async def write(self, table: pa.Table) -> None:
        if self.down:
            raise StoreError("connection refused")
        await super().write(table)
        self.batches.append(table.num_rows)
        if self.lose_ack:
            raise StoreError("timed out")


async def count(store: ChdbStore) -> tuple[int, int, int]:
    rows = await store.query(
        "SELECT count() AS final, uniqExact(request_id, call_index) AS ids"
        " FROM {db}.requests_raw FINAL"
    )
    raw = await store.query("SELECT count() AS n FROM {db}.requests_raw")
    return rows[0]["final"], rows[0]["ids"], raw[0]["n"]


def writer(target: Any, spool_dir: Path, **kwargs: Any) -> TelemetryWriter:
    return TelemetryWriter(target, RowBuilder(ComputeUnits()), Spool.claim(spool_dir), **kwargs)


async def test_store_down_mid_load_then_back_every_row_once(
    analytics_store: ChdbStore, tmp_path: Path
) -> None:
    target = FlakyTarget(analytics_store)
    w = writer(target, tmp_path / "spool", batch_size=100, flush_interval=60)
    for n in range(250):
        w.emit(record(n))
    await w.flush()
    target.down = True
    for n in range(250, 700):
        w.emit(record(n))
    await w.flush()
    assert w.stats.spilled == 450 and len(w.spool) == 5
    target.down = False
    for n in range(700, 800):
        w.emit(record(n))
    w._retry_at = 0.0  # the backoff has passed
    await w.flush()
    assert len(w.spool) == 0
    assert w.stats.replayed == 450 and w.stats.written == 350
    assert await count(analytics_store) == (800, 800, 800)
    # The spool went first: batches reached the store in the order they were made.
    assert target.batches == [100, 100, 50, 100, 100, 100, 100, 50, 100]
    await w.aclose()


async def test_a_batch_written_twice_counts_once(
    analytics_store: ChdbStore, tmp_path: Path
) -> None:
    target = FlakyTarget(analytics_store)
    w = writer(target, tmp_path / "spool", flush_interval=60)
    target.lose_ack = True  # the store took the batch, the writer saw a failure
    for n in range(300):
        w.emit(record(n))
    await w.flush()
    assert w.stats.spilled == 300
    target.lose_ack = False
    w._retry_at = 0.0
    await w.flush()
    assert w.stats.replayed == 300
    final, ids, _ = await count(analytics_store)
    assert (final, ids) == (300, 300)
    await w.aclose()


async def test_graceful_stop_writes_everything_queued(
    analytics_store: ChdbStore, tmp_path: Path
) -> None:
    w = writer(StoreTarget(analytics_store), tmp_path / "spool", flush_interval=60)
    await w.start()
    for n in range(1234):
        w.emit(record(n))
    await w.aclose()
    await w.aclose()  # idempotent
    assert await count(analytics_store) == (1234, 1234, 1234)


async def test_the_writer_flushes_on_its_own_within_the_interval(
    analytics_store: ChdbStore, tmp_path: Path
) -> None:
    import asyncio

    w = writer(StoreTarget(analytics_store), tmp_path / "spool", flush_interval=0.2)
    await w.start()
    for n in range(10):
        w.emit(record(n))
    deadline = time.monotonic() + 10
    while w.stats.written < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert w.stats.written == 10
    assert (await count(analytics_store))[0] == 10
    await w.aclose()


async def test_the_spool_outlives_a_crash(analytics_store: ChdbStore, tmp_path: Path) -> None:
    target = FlakyTarget(analytics_store)
    target.down = True
    crashed = writer(target, tmp_path / "spool", flush_interval=60)
    for n in range(500):
        crashed.emit(record(n))
    await crashed.flush()
    assert len(crashed.spool) == 1
    crashed.spool.release()  # the process died: its claim on the directory ends with it
    restarted = writer(StoreTarget(analytics_store), tmp_path / "spool", flush_interval=60)
    assert restarted.spool.directory == crashed.spool.directory and len(restarted.spool) == 1
    await restarted.aclose()
    assert restarted.stats.replayed == 500
    assert await count(analytics_store) == (500, 500, 500)


async def test_writes_run_below_the_request_paths_priority(analytics_store: ChdbStore) -> None:
    """The embedded store writes (and starts its engine's threads) in a thread of nice 10."""
    await analytics_store.execute("SELECT 1")
    writers = [t for t in threading.enumerate() if t.name.startswith("analytics-writer")]
    assert writers
    for thread in writers:
        stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[16]) == BACKGROUND_NICE > 0


def test_each_live_process_gets_its_own_spool_directory(tmp_path: Path) -> None:
    first = Spool.claim(tmp_path)
    second = Spool.claim(tmp_path)
    assert first.directory != second.directory
    first.release()
    assert Spool.claim(tmp_path).directory == first.directory


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    w = writer(object(), tmp_path / "spool", queue_size=10)
    for n in range(15):
        w.emit(record(n))
    assert w.stats.dropped == 5 and w.stats.queue_depth() == 10


async def test_rollups_match_raw_and_survive_rebuilds(
    analytics_store: ChdbStore, tmp_path: Path
) -> None:
    now = int(time.time())
    base = now - now % 3600 - 3 * 3600  # an hour start, UTC, inside the raw retention
    methods = ("eth_call", "eth_getLogs")
    records = [record(n, ts=base + n * 90, method=methods[n % 2]) for n in range(100)]
    table = RowBuilder(ComputeUnits()).table(records)
    rollups = Rollups(analytics_store)
    await analytics_store.insert(table)
    rollups.mark(hours_of(table))
    assert rollups.pending == 3  # 100 records 90 s apart span three hours
    await rollups.run()
    await analytics_store.insert(table)  # a duplicate delivery
    rollups.mark(hours_of(table))
    await rollups.run()  # a rebuild replaces, never adds
    hourly = await analytics_store.query(
        "SELECT method, sum(requests) AS n, sum(compute_units) AS cu, sum(bytes_in) AS b"
        " FROM {db}.usage_hourly FINAL GROUP BY method ORDER BY method"
    )
    assert hourly == [
        {"method": "eth_call", "n": 50, "cu": 50 * 26, "b": 50 * 60},
        {"method": "eth_getLogs", "n": 50, "cu": 50 * 75, "b": 50 * 60},
    ]
    daily = await analytics_store.query(
        "SELECT sum(requests) AS n, sum(compute_units) AS cu FROM {db}.usage_daily FINAL"
    )
    assert daily == [{"n": 100, "cu": 50 * 26 + 50 * 75}]
    # Rows the rollups never heard of (another process died first) are found and rolled up.
    late = RowBuilder(ComputeUnits()).table([record(1000 + n, ts=base + 10) for n in range(7)])
    await analytics_store.insert(late)
    assert await Rollups(analytics_store).catch_up(now=_utc(now)) == 1
    total = await analytics_store.query("SELECT sum(requests) AS n FROM {db}.usage_hourly FINAL")
    assert total == [{"n": 107}]


def _utc(ts: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


def test_rows_expand_batches_and_anonymize_addresses() -> None:
    batch = RequestRecord(
        ts=1_790_000_000.5, chain="eth", method="batch",
        methods=("eth_call", "eth_sendRawTransaction", ""), calls=3, status=200, reason=None,
        key_id="k", org_id="o", project_id="p", client_ip="2001:db8:1234:5678::1",
        latency=0.01, upstream="eth-a", upstream_latency=0.005, attempts=2, bytes_in=300,
        bytes_out=500, request_id="abc",
        call_results=((0, None), (-32004, "method_not_allowed"), (-32600, "invalid_request")),
    )  # fmt: skip
    rows = RowBuilder(ComputeUnits(methods={"eth_call": 30})).table([batch]).to_pylist()
    assert [r["call_index"] for r in rows] == [0, 1, 2]
    assert [r["outcome"] for r in rows] == ["ok", "method_not_allowed", "invalid_request"]
    assert [r["compute_units"] for r in rows] == [30, 0, 0]
    assert [r["bytes_in"] for r in rows] == [300, 0, 0]  # sums stay exact
    assert {r["client_ip"] for r in rows} == {"2001:db8:1234::"}
    assert rows[0]["latency_ms"] == pytest.approx(10.0)
    hashed = RowBuilder(ComputeUnits(), "hash", b"salt").table([record(1)]).to_pylist()
    assert hashed[0]["client_ip"] != "203.0.113.77" and len(hashed[0]["client_ip"]) == 16
    truncated = RowBuilder(ComputeUnits()).table([record(1)]).to_pylist()
    assert truncated[0]["client_ip"] == "203.0.113.0"


def test_compute_units_per_chain_override() -> None:
    units = ComputeUnits(default=5, methods={"eth_call": 30}, chains={"base": {"eth_call": 7}})
    assert units.of("eth", "eth_call") == 30
    assert units.of("base", "eth_call") == 7
    assert units.of("base", "eth_getLogs") == 75
    assert units.of("eth", "custom_method") == 5

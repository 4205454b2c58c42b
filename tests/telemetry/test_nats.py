"""The JetStream path on real NATS servers: gateway writer → stream → worker → chDB, every row
once, through a server killed mid-load, a worker that dies before its ack, a store that fails.

Tests share the NATS server at ``HOODRUN_TEST_NATS`` (one stream of their own each, deleted
afterwards); the ones that kill a server start a private ``nats-server`` on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from nats.aio.msg import Msg

from hoodrun.telemetry.nats import (
    NatsConsumer,
    NatsError,
    NatsTarget,
    connect_jetstream,
    decode,
    encode,
    subject_of,
)
from hoodrun.telemetry.pipeline import TelemetryWriter
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.spool import Spool
from hoodrun.telemetry.store import ChdbStore, StoreError
from hoodrun.telemetry.units import ComputeUnits
from tests.telemetry.support import call_record

NATS_URL = os.environ.get("HOODRUN_TEST_NATS", "nats://127.0.0.1:4222")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
METHODS = ("eth_call", "eth_blockNumber", "eth_getBalance", "eth_getLogs")


def single(n: int, method: str | None = None) -> RequestRecord:
    method = method or METHODS[n % len(METHODS)]
    return call_record(f"req{n:08d}-{uuid.uuid4().hex[:6]}", method=method)


def batch(n: int) -> RequestRecord:
    """Three calls: one answered, one JSON-RPC error, one invalid entry the gateway refused."""
    record = single(n, "batch")
    record.methods = ("eth_blockNumber", "eth_getBalance", "")
    record.calls = 3
    record.rpc_errors = 2
    record.call_results = ((0, None), (-32000, None), (-32600, "invalid_request"))
    return record


def builder() -> RowBuilder:
    return RowBuilder(ComputeUnits())


def writer(target: NatsTarget, spool: Path, **kwargs: Any) -> TelemetryWriter:
    kwargs = {"batch_size": 200, "flush_interval": 0.05, **kwargs}
    return TelemetryWriter(target, builder(), Spool(spool), **kwargs)


async def counts(store: ChdbStore) -> tuple[int, int]:
    """(rows counted with FINAL, distinct (request_id, call_index) keys)."""
    rows = await store.query(
        "SELECT (SELECT count() FROM {db}.requests_raw FINAL) AS final, "
        "(SELECT uniqExact(request_id, call_index) FROM {db}.requests_raw) AS keys"
    )
    return int(rows[0]["final"]), int(rows[0]["keys"])


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def delete_stream(url: str, stream: str) -> None:
    nc, js = await connect_jetstream(url)
    with contextlib.suppress(Exception):  # never created, or already gone
        await js.delete_stream(stream)
    await nc.close()


@pytest.fixture
async def stream() -> AsyncIterator[str]:
    """A stream name of this test's own on the shared server, deleted afterwards."""
    name = f"T_{uuid.uuid4().hex[:12]}"
    yield name
    await delete_stream(NATS_URL, name)


class NatsServer:
    """A private ``nats-server -js`` that a test may kill and start again on the same port and
    store directory."""

    def __init__(self, store_dir: Path) -> None:
        self.port = free_port()
        self.store_dir = store_dir
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> NatsServer:
        self.process = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                nc, js = await connect_jetstream(self.url, timeout=0.5)
            except NatsError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
                continue
            try:
                await js.account_info()  # JetStream answers, not only the socket
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
            finally:
                await nc.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Callable[[], Awaitable[NatsServer]]]:
    """``await nats_server()`` starts a private server, killed after the test."""
    servers: list[NatsServer] = []

    async def make() -> NatsServer:
        server = NatsServer(tmp_path / f"nats{len(servers)}")
        servers.append(server)
        return await server.start()

    yield make
    for server in servers:
        server.kill()


# --- payloads ------------------------------------------------------------------------------------


def test_a_batch_splits_into_messages_under_the_limit_with_stable_ids(tmp_path: Path) -> None:
    records = [single(n) for n in range(3000)] + [batch(n) for n in range(3000, 3100)]
    table = builder().table(records)
    messages = encode(table, 16 * 1024)
    assert len(messages) > 1
    assert all(len(payload) <= 16 * 1024 for _, payload in messages)
    assert len({message_id for message_id, _ in messages}) == len(messages)
    assert pa.concat_tables(decode(payload) for _, payload in messages).equals(table)
    # The spool's copy of the batch gives the same messages: a replay is recognized.
    spool = Spool(tmp_path / "spool")
    replayed = encode(spool.read(spool.append(table)), 16 * 1024)
    assert [i for i, _ in replayed] == [i for i, _ in messages]
    with pytest.raises(ValueError, match="Arrow IPC"):
        decode(b"not arrow")


# --- the shared server ---------------------------------------------------------------------------


async def test_records_reach_the_store_once_each_through_the_stream(
    analytics_store: ChdbStore, stream: str, tmp_path: Path
) -> None:
    records = [single(n) for n in range(1500)] + [batch(n) for n in range(1500, 1600)]
    target = NatsTarget(NATS_URL, stream, chunk_bytes=4 * 1024)  # several messages a batch
    w = writer(target, tmp_path / "spool")
    for record in records:
        w.emit(record)
    await w.aclose()
    total = 1500 + 100 * 3
    assert (w.stats.written, w.stats.spilled) == (total, 0)
    assert target.messages > len(records) // 200  # the batches were cut into messages

    rollups = Rollups(analytics_store)
    consumer = NatsConsumer(NATS_URL, stream, analytics_store, rollups, durable="worker")
    assert await consumer.drain(timeout=30) == total
    await consumer.aclose()
    assert (consumer.written, consumer.messages) == (total, target.messages)
    assert consumer.redelivered == consumer.failed == consumer.poisoned == 0
    assert rollups.pending >= 1

    assert await counts(analytics_store) == (total, total)
    rows = await analytics_store.query(
        "SELECT method, outcome, count() AS n FROM {db}.requests_raw FINAL GROUP BY method, outcome"
    )
    got = Counter({(r["method"], r["outcome"]): int(r["n"]) for r in rows})
    expected = Counter((r.method, "ok") for r in records if r.calls == 1)
    expected[("eth_blockNumber", "ok")] += 100
    expected[("eth_getBalance", "rpc_error")] += 100
    expected[("-", "invalid_request")] += 100
    assert got == expected


async def test_a_batch_published_twice_is_stored_in_the_stream_once(
    analytics_store: ChdbStore, stream: str
) -> None:
    table = builder().table([single(n) for n in range(500)])
    target = NatsTarget(NATS_URL, stream, chunk_bytes=8 * 1024)
    await target.write(table)
    first = target.messages
    await target.write(table)  # a retry after a lost ack
    await target.aclose()
    assert target.duplicates == first and target.messages == 2 * first

    consumer = NatsConsumer(NATS_URL, stream, analytics_store, durable="worker")
    assert await consumer.drain(timeout=30) == 500
    await consumer.aclose()
    assert consumer.messages == first
    assert await counts(analytics_store) == (500, 500)


async def test_drain_while_the_worker_runs_waits_for_every_row(
    analytics_store: ChdbStore, stream: str
) -> None:
    consumer = NatsConsumer(NATS_URL, stream, analytics_store, durable="worker", batch=2)
    await consumer.start()
    target = NatsTarget(NATS_URL, stream, chunk_bytes=4 * 1024)
    for start in range(0, 1000, 250):
        await target.write(builder().table([single(n) for n in range(start, start + 250)]))
    await target.aclose()
    await consumer.drain(timeout=30)  # takes turns with the running loop
    assert await counts(analytics_store) == (1000, 1000)
    await consumer.aclose()
    assert consumer.written == 1000 and consumer.messages == target.messages
    with pytest.raises(NatsError, match="closed"):
        await consumer.drain(timeout=5)


class DiesBeforeAck(NatsConsumer):
    """Inserts, then stops answering: the process died between the insert and the ack."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inserted = asyncio.Event()

    async def _acknowledge(self, messages: list[Msg]) -> None:
        self.inserted.set()


async def test_a_worker_dying_before_its_ack_leaves_each_row_once(
    analytics_store: ChdbStore, stream: str
) -> None:
    target = NatsTarget(NATS_URL, stream)
    await target.write(builder().table([single(n) for n in range(300)] + [batch(300)]))
    await target.aclose()

    # The first worker creates the durable consumer: its ack_wait is the one that holds.
    # It stops within its fetch_timeout, before ack_wait brings the messages back.
    dying = DiesBeforeAck(
        NATS_URL, stream, analytics_store, durable="worker", ack_wait=1.5, fetch_timeout=0.2
    )
    await dying.start()
    await asyncio.wait_for(dying.inserted.wait(), 10)
    await dying.aclose()
    assert dying.written == 303 and dying.messages == 0

    successor = NatsConsumer(NATS_URL, stream, analytics_store, durable="worker")
    assert await successor.drain(timeout=30) == 303  # after ack_wait, the messages come back
    await successor.aclose()
    assert successor.redelivered == successor.messages >= 1
    assert await counts(analytics_store) == (303, 303)


class FailingStore(ChdbStore):
    """The test's database, refusing the first ``failures`` inserts."""

    def __init__(self, store: ChdbStore, failures: int) -> None:
        super().__init__(store.path, store.database)
        self.failures = failures

    async def insert(self, table: pa.Table) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("connection refused")
        await super().insert(table)


async def test_a_failed_insert_is_not_acked_and_comes_back(
    analytics_store: ChdbStore, stream: str
) -> None:
    target = NatsTarget(NATS_URL, stream)
    await target.write(builder().table([single(n) for n in range(200)]))
    await target.aclose()

    store = FailingStore(analytics_store, failures=2)
    consumer = NatsConsumer(NATS_URL, stream, store, durable="worker", retry_delay=0.05)
    assert await consumer.drain(timeout=30) == 200
    await consumer.aclose()
    await store.aclose()
    assert consumer.failed == 2 and consumer.redelivered >= 1
    assert await counts(analytics_store) == (200, 200)


async def test_a_message_without_rows_is_dropped_and_the_rest_written(
    analytics_store: ChdbStore, stream: str
) -> None:
    target = NatsTarget(NATS_URL, stream)
    await target.write(builder().table([single(n) for n in range(10)]))
    nc, js = await connect_jetstream(NATS_URL)
    await js.publish(subject_of(stream), b"garbage", stream=stream)
    await nc.close()
    await target.write(builder().table([single(n) for n in range(10, 20)]))
    await target.aclose()

    consumer = NatsConsumer(NATS_URL, stream, analytics_store, durable="worker")
    assert await consumer.drain(timeout=30) == 20
    await consumer.aclose()
    assert (consumer.poisoned, consumer.messages) == (1, 2)
    assert await counts(analytics_store) == (20, 20)


# --- private servers -----------------------------------------------------------------------------


async def test_write_raises_promptly_when_nats_is_unreachable() -> None:
    target = NatsTarget(f"nats://127.0.0.1:{free_port()}", "T_unreachable", timeout=2.0)
    table = builder().table([single(1)])
    for _ in range(2):  # the first connect, and the retry after it
        started = time.monotonic()
        with pytest.raises(NatsError, match="cannot connect"):
            await target.write(table)
        assert time.monotonic() - started < 3.0
    await target.aclose()
    with pytest.raises(NatsError, match="closed"):
        await target.write(table)


async def test_nats_killed_mid_load_then_back_every_row_once(
    analytics_store: ChdbStore,
    nats_server: Callable[[], Awaitable[NatsServer]],
    tmp_path: Path,
) -> None:
    server = await nats_server()
    stream = "T_kill"
    target = NatsTarget(server.url, stream, timeout=1.0)
    w = writer(target, tmp_path / "spool")
    await w.start()
    # Messages the worker held when the server died come back after ack_wait: keep it short.
    consumer = NatsConsumer(
        server.url, stream, analytics_store, durable="worker", batch=8, ack_wait=2.0
    )
    await consumer.start()

    records: list[RequestRecord] = []

    async def load(until_done: Callable[[], bool]) -> None:
        """Emit records steadily, 20 a tick, until the condition holds."""
        while not until_done():
            for _ in range(20):
                record = single(len(records)) if len(records) % 50 else batch(len(records))
                records.append(record)
                w.emit(record)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(load(lambda: w.stats.written > 500 and consumer.written > 0), 20)
    server.kill()
    await asyncio.wait_for(load(lambda: w.stats.spilled > 500), 20)
    await server.start()
    await asyncio.wait_for(load(lambda: w.stats.replayed > 0), 30)
    written = w.stats.written
    await asyncio.wait_for(load(lambda: w.stats.written > written + 500), 30)
    await w.aclose()

    total = sum(r.calls for r in records)
    assert len(w.spool) == 0
    assert w.stats.spilled > 0 and w.stats.replayed == w.stats.spilled
    assert w.stats.written + w.stats.replayed == total
    await consumer.drain(timeout=60)
    await consumer.aclose()
    assert consumer.written >= total
    assert await counts(analytics_store) == (total, total)

"""Telemetry at scale: gateways publish their batches to a NATS JetStream stream, and workers
write them into the analytics store.

``NatsTarget`` is a ``BatchTarget`` for the gateway's ``TelemetryWriter``. It cuts a batch into
Arrow IPC stream messages (compressed) well under the server's ``max_payload``, and waits for
JetStream's ack of every one. Each message carries a ``Nats-Msg-Id`` made from the keys of its
rows, so the same rows published again (a retry after a lost ack, a spool replay) fall in the
stream's duplicate window and are stored once. A failure raises, and the writer spools the batch.

``NatsConsumer`` is the worker: a durable pull consumer with explicit acks. It fetches a few
messages, inserts their rows in one ``store.insert``, marks the hours for the rollups, and only
then acks. A worker that dies between the insert and the ack gets its messages again after
``ack_wait``, and ``requests_raw`` (a ReplacingMergeTree keyed by request id and call index) counts
the rows written twice once: at-least-once delivery plus an idempotent store is exactly-once in
effect.

Neither side lets nats-py reconnect in the background: a connection that drops is closed, and the
next use opens a new one with bounded timeouts. A dead server is a prompt error (which the writer
spools and the worker backs off from), never a call that hangs or a buffer that fills in silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
import pyarrow as pa
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from hoodrun.telemetry.pipeline import hours_of
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import conform
from hoodrun.telemetry.store import AnalyticsStore

__all__ = [
    "NatsConsumer",
    "NatsError",
    "NatsTarget",
    "connect_jetstream",
    "decode",
    "encode",
    "ensure_stream",
    "subject_of",
]

log = logging.getLogger("hoodrun.telemetry")

DEFAULT_STREAM = "HOODRUN_RECORDS"
DEFAULT_DURABLE = "hoodrun-writer"
_MSG_ID = "Nats-Msg-Id"
_MAX_RETRY_DELAY = 30.0


class NatsError(RuntimeError):
    """NATS refused or failed a telemetry operation."""


def subject_of(stream: str) -> str:
    """The one subject a telemetry stream takes."""
    return f"hoodrun.records.{stream}"


async def connect_jetstream(
    url: str, *, timeout: float = 2.0, name: str = "hoodrun-telemetry"
) -> tuple[Client, JetStreamContext]:
    """Open one connection, or raise ``NatsError`` within about ``timeout`` seconds.

    The connection does not reconnect by itself (see the module's docstring); its JetStream
    calls time out after ``timeout`` seconds.
    """
    nc = Client()
    try:
        await asyncio.wait_for(
            nc.connect(
                url,
                name=name,
                # Even with allow_reconnect off, nats-py retries a refused first connect after
                # reconnect_time_wait, up to max_reconnect_attempts times: one quick retry at most.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                connect_timeout=max(1, math.ceil(timeout)),
                error_cb=_log_error,
            ),
            timeout,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        await _close_quietly(nc, timeout)
        raise NatsError(f"cannot connect to NATS at {url}: {_describe(exc)}") from exc
    return nc, nc.jetstream(timeout=timeout)


async def ensure_stream(
    js: JetStreamContext,
    stream: str,
    *,
    duplicate_window: float = 300.0,
    max_age: float = 7 * 86400.0,
) -> None:
    """Create the telemetry stream if missing (an existing stream is left as it is).

    File storage, work-queue retention: a message is deleted once a worker acked it (the analytics
    store has the rows; keeping them would grow the stream by every request served), or after
    ``max_age`` seconds if no worker took it. ``duplicate_window`` (seconds) is how long a message
    id is remembered.
    """
    try:
        await js.stream_info(stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    await js.add_stream(
        StreamConfig(
            name=stream,
            subjects=[subject_of(stream)],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=duplicate_window,
            max_age=max_age,
        )
    )
    log.info("created the NATS stream %s", stream)


# --- payloads ----------------------------------------------------------------------------------


def _write_options() -> pa.ipc.IpcWriteOptions:
    for codec in ("zstd", "lz4"):
        if pa.Codec.is_available(codec):
            return pa.ipc.IpcWriteOptions(compression=codec)
    return pa.ipc.IpcWriteOptions()


_OPTIONS = _write_options()


def encode(table: pa.Table, limit: int) -> list[tuple[str, bytes]]:
    """``(message id, payload)`` for each slice of ``table``, each payload at most ``limit`` bytes.

    The id hashes the slice's (request_id, call_index) keys: the same rows give the same id
    whatever their layout in memory, so a retried batch is recognized by the duplicate window.
    """
    out: list[tuple[str, bytes]] = []
    _encode_into(out, table, limit)
    return out


def _encode_into(out: list[tuple[str, bytes]], table: pa.Table, limit: int) -> None:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_OPTIONS) as writer:
        writer.write_table(table)
    payload = sink.getvalue().to_pybytes()
    if len(payload) <= limit:
        out.append((_message_id(table), payload))
        return
    if table.num_rows <= 1:
        raise NatsError(f"one row takes {len(payload)} bytes, more than a message's {limit}")
    # Guess the slice size from the compressed size; a slice that still does not fit is cut again.
    parts = min(table.num_rows, math.ceil(len(payload) * 1.2 / limit))
    step = math.ceil(table.num_rows / parts)
    for start in range(0, table.num_rows, step):
        _encode_into(out, table.slice(start, step), limit)


def _message_id(table: pa.Table) -> str:
    digest = hashlib.blake2b(digest_size=16)
    request_ids = table.column("request_id").to_pylist()
    call_indexes = table.column("call_index").to_pylist()
    for request_id, call_index in zip(request_ids, call_indexes, strict=True):
        digest.update(f"{request_id}\x00{call_index}\x01".encode())
    return f"{digest.hexdigest()}-{table.num_rows}"


def decode(payload: bytes) -> pa.Table:
    """The rows of one message; raises ``ValueError`` if they are not ``requests_raw`` rows.

    Rows from a gateway of an earlier release (a rolling upgrade) gain the columns added since
    (``conform``)."""
    try:
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except pa.ArrowException as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
    return conform(table)


# --- connections -------------------------------------------------------------------------------


class _Link:
    """One connection, opened on first use and again on the next use after it dropped."""

    def __init__(self, url: str, timeout: float, name: str) -> None:
        self.url = url
        self.timeout = timeout
        self.name = name
        self.generation = 0  # bumped by each new connection
        self._open: tuple[Client, JetStreamContext] | None = None
        self._closed = False

    async def open(self) -> tuple[Client, JetStreamContext]:
        if self._closed:
            raise NatsError("this NATS client is closed")
        if self._open is None or not self._open[0].is_connected:
            await self.reset()
            self._open = await connect_jetstream(self.url, timeout=self.timeout, name=self.name)
            self.generation += 1
        return self._open

    async def reset(self) -> None:
        current, self._open = self._open, None
        if current is not None:
            await _close_quietly(current[0], self.timeout)

    async def aclose(self) -> None:
        self._closed = True
        await self.reset()


async def _close_quietly(nc: Client, timeout: float) -> None:
    if nc.is_closed:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout)


async def _log_error(exc: Exception) -> None:
    # nats-py reports each failed attempt here; the caller sees the error anyway.
    log.debug("nats: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --- the gateway's side ------------------------------------------------------------------------


class NatsTarget:
    """Publishes telemetry batches to a JetStream stream (see the module's docstring).

    ``chunk_bytes`` caps a message's payload; it is further held to half the server's
    ``max_payload``. ``timeout`` bounds the connect and the wait for a batch's acks.
    """

    def __init__(
        self,
        url: str,
        stream: str = DEFAULT_STREAM,
        *,
        timeout: float = 2.0,
        chunk_bytes: int = 512 * 1024,
        duplicate_window: float = 300.0,
        max_age: float = 7 * 86400.0,
    ) -> None:
        self.stream = stream
        self.subject = subject_of(stream)
        self.timeout = timeout
        self.chunk_bytes = chunk_bytes
        self.duplicate_window = duplicate_window
        self.max_age = max_age
        self.messages = 0  # messages acked by the stream
        self.duplicates = 0  # of which the stream had already (a retry after a lost ack)
        self._link = _Link(url, timeout, "hoodrun-gateway")
        self._stream_checked = 0  # the link generation that checked the stream

    async def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        try:
            nc, js = await self._link.open()
            if self._stream_checked != self._link.generation:
                await ensure_stream(
                    js, self.stream, duplicate_window=self.duplicate_window, max_age=self.max_age
                )
                self._stream_checked = self._link.generation
            limit = min(self.chunk_bytes, nc.max_payload // 2)
            messages = await asyncio.to_thread(encode, table, limit)
            acks = await self._publish(js, messages)
        except NatsError:
            await self._link.reset()
            raise
        except Exception as exc:  # any failure: a new connection next time
            await self._link.reset()
            raise NatsError(f"publishing to {self.stream} failed: {_describe(exc)}") from exc
        self.messages += len(acks)
        self.duplicates += sum(1 for ack in acks if ack.duplicate)

    async def _publish(
        self, js: JetStreamContext, messages: Sequence[tuple[str, bytes]]
    ) -> list[PubAck]:
        futures: list[asyncio.Future[PubAck]] = []
        try:
            for message_id, payload in messages:
                futures.append(
                    await js.publish_async(
                        self.subject,
                        payload,
                        wait_stall=self.timeout,
                        stream=self.stream,
                        headers={_MSG_ID: message_id},
                    )
                )
            async with asyncio.timeout(self.timeout):
                return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # acks that never came (a no-op on the ones that did)

    async def aclose(self) -> None:
        await self._link.aclose()


# --- the worker's side -------------------------------------------------------------------------


class NatsConsumer:
    """Moves rows from the stream into the analytics store (see the module's docstring).

    ``start()`` runs it in the background until ``aclose()``; ``drain()`` is the burst mode:
    consume until the stream has nothing left for this consumer, then return.

    Counters: ``written`` rows inserted (a redelivered message counts again), ``messages``
    acked, ``redelivered`` messages seen more than once, ``failed`` inserts (their messages come
    back), ``poisoned`` messages that held no rows we could read (terminated, never redelivered).
    """

    def __init__(
        self,
        url: str,
        stream: str,
        store: AnalyticsStore,
        rollups: Rollups | None = None,
        *,
        durable: str = DEFAULT_DURABLE,
        batch: int = 32,
        fetch_timeout: float = 1.0,
        ack_wait: float = 30.0,
        max_ack_pending: int = 256,
        timeout: float = 2.0,
        retry_delay: float = 1.0,
        duplicate_window: float = 300.0,
        max_age: float = 7 * 86400.0,
    ) -> None:
        self.store = store
        self.rollups = rollups
        self.stream = stream
        self.subject = subject_of(stream)
        self.durable = durable
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.max_ack_pending = max(max_ack_pending, batch)
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.duplicate_window = duplicate_window
        self.max_age = max_age
        self.written = self.messages = self.redelivered = self.failed = self.poisoned = 0
        self._link = _Link(url, timeout, f"hoodrun-worker-{durable}")
        self._sub: JetStreamContext.PullSubscription | None = None
        self._sub_generation = 0
        self._stepping = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._delay = retry_delay

    async def start(self) -> None:
        if self._stop.is_set():
            raise NatsError("this consumer is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Finish and ack the batch in hand, then stop (waits up to ``fetch_timeout`` for a
        fetch in progress)."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._link.aclose()

    async def drain(self, timeout: float = 30.0) -> int:
        """Consume until no message is waiting or unacked; returns the rows written.

        Raises ``TimeoutError`` if the stream is not drained within ``timeout`` seconds.
        Messages another consumer holds unacked count as waiting: they come back after
        ``ack_wait``. Safe to call while ``start()``'s loop runs (they take turns).
        """
        written = self.written
        deadline = time.monotonic() + timeout
        while True:
            if self._stop.is_set():
                raise NatsError("this consumer is closed")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.stream} not drained within {timeout} s")
            try:
                if await self._idle():
                    return self.written - written
                await self._step()
            except Exception as exc:  # noqa: BLE001 (logged, retried until the deadline)
                await self._pause(exc, deadline - time.monotonic())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._step()
            except Exception as exc:  # noqa: BLE001 (keep the worker alive)
                await self._pause(exc, self._delay)

    async def _pause(self, exc: BaseException, most: float) -> None:
        log.warning("telemetry consumer: %s; next try in %.1f s", _describe(exc), self._delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, min(self._delay, most)))
        self._delay = min(self._delay * 2, _MAX_RETRY_DELAY)

    async def _step(self) -> int:
        """Fetch, insert, ack one batch; returns how many messages it handled."""
        async with self._stepping:
            try:
                sub = await self._subscription()
                messages = await sub.fetch(self.batch, timeout=self.fetch_timeout)
            except nats.errors.TimeoutError:
                return 0  # nothing waiting
            except NatsError:
                raise
            except Exception as exc:  # a new connection next time
                await self._link.reset()
                raise NatsError(f"fetching from {self.stream} failed: {_describe(exc)}") from exc
            await self._handle(messages)
            self._delay = self.retry_delay
            return len(messages)

    async def _handle(self, messages: list[Msg]) -> None:
        tables: list[pa.Table] = []
        kept: list[Msg] = []
        for msg in messages:
            if msg.metadata.num_delivered > 1:
                self.redelivered += 1
            try:
                tables.append(decode(msg.data))
            except ValueError as exc:
                log.error("telemetry consumer: dropping message %s: %s", _seq(msg), exc)
                self.poisoned += 1
                with contextlib.suppress(Exception):
                    await msg.term()
                continue
            kept.append(msg)
        if tables:
            table = pa.concat_tables(tables)
            try:
                await self.store.insert(table)
            except Exception:
                self.failed += 1
                with contextlib.suppress(Exception):
                    for msg in kept:
                        await msg.nak(delay=self._delay)
                raise
            if self.rollups is not None:
                self.rollups.mark(hours_of(table))
            self.written += table.num_rows
        await self._acknowledge(kept)

    async def _acknowledge(self, messages: list[Msg]) -> None:
        for msg in messages:
            await msg.ack()
        if messages:
            nc, _ = await self._link.open()
            await nc.flush(timeout=max(1, math.ceil(self.timeout)))
        self.messages += len(messages)

    async def _subscription(self) -> JetStreamContext.PullSubscription:
        _, js = await self._link.open()
        if self._sub is None or self._sub_generation != self._link.generation:
            await ensure_stream(
                js, self.stream, duplicate_window=self.duplicate_window, max_age=self.max_age
            )
            # An existing durable consumer keeps its configuration: it is only created here.
            self._sub = await js.pull_subscribe(
                self.subject,
                durable=self.durable,
                stream=self.stream,
                config=ConsumerConfig(
                    durable_name=self.durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait,
                    max_ack_pending=self.max_ack_pending,
                    max_deliver=-1,
                ),
            )
            self._sub_generation = self._link.generation
        return self._sub

    async def _idle(self) -> bool:
        async with self._stepping:  # not between another step's fetch and its ack
            info = await (await self._subscription()).consumer_info()
        return not info.num_pending and not info.num_ack_pending


def _seq(msg: Msg) -> str:
    with contextlib.suppress(Exception):
        return str(msg.metadata.sequence.stream)
    return "?"

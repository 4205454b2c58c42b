"""RedisLimiter specifics: exact shared limits across clients and processes, keys, failures."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hoodrun.limits import Bucket, LimiterUnavailable, RedisLimiter

from .support import REDIS_URL, SLOW, FakeClock

ROOT = Path(__file__).resolve().parents[2]


def blocking_client() -> Redis:
    """A client that queues for a connection instead of failing, as the gateway's should."""
    return Redis.from_pool(BlockingConnectionPool.from_url(REDIS_URL, max_connections=32))


async def test_two_clients_share_one_exact_limit(redis_client: Redis, redis_prefix: str) -> None:
    one, other = blocking_client(), blocking_client()
    try:
        # No deadline: this is about exactness (300 decisions at once on a loaded machine can
        # outlast the hot path's per-decision timeout, which other tests check).
        first = RedisLimiter(one, redis_prefix, timeout=None)
        second = RedisLimiter(other, redis_prefix, timeout=None)
        bucket = Bucket("c:eth", SLOW, 100)
        calls = [(first if i % 2 else second).acquire([bucket], cost=1) for i in range(300)]
        decisions = await asyncio.gather(*calls)
    finally:
        await one.aclose()
        await other.aclose()

    assert sum(d.allowed for d in decisions) == 100
    denied = [d for d in decisions if not d.allowed]
    assert all(d.bucket == "c:eth" and d.remaining == 0 for d in denied)


_WORKER = """
import asyncio, sys
from redis.asyncio import BlockingConnectionPool, Redis
from hoodrun.limits import Bucket, RedisLimiter

async def main() -> None:
    url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = Redis.from_pool(BlockingConnectionPool.from_url(url, max_connections=16))
    limiter = RedisLimiter(client, prefix, timeout=None)
    bucket = Bucket("c:eth", 0.001, 100)
    sys.stdin.readline()  # start when told, so both processes run at once
    decisions = await asyncio.gather(*(limiter.acquire([bucket]) for _ in range(count)))
    print(sum(d.allowed for d in decisions))
    await client.aclose()

asyncio.run(main())
"""


async def test_two_processes_share_one_exact_limit(redis_client: Redis, redis_prefix: str) -> None:
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WORKER,
            REDIS_URL,
            redis_prefix,
            "150",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(b"go\n")
        await worker.stdin.drain()
        worker.stdin.close()
    outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate() for w in workers)), 30)

    assert [w.returncode for w in workers] == [0, 0]
    assert sum(int(stdout) for stdout, _ in outputs) == 100


async def test_keys_are_prefixed_and_expire_when_full(
    redis_client: Redis, redis_prefix: str
) -> None:
    limiter = RedisLimiter(redis_client, redis_prefix)
    await limiter.acquire([Bucket("k:key_abc", 10.0, 20)], cost=0)
    assert await redis_client.exists(f"{redis_prefix}:rl:k:key_abc") == 0  # a peek writes nothing

    decision = await limiter.acquire([Bucket("k:key_abc", 10.0, 20)], cost=5)
    ttl_ms = await redis_client.pttl(f"{redis_prefix}:rl:k:key_abc")
    assert 0 < ttl_ms <= 500
    assert decision.reset_after == pytest.approx(0.5, abs=0.05)


async def test_script_is_reloaded_after_a_flush(redis_client: Redis, redis_prefix: str) -> None:
    limiter = RedisLimiter(redis_client, redis_prefix)
    bucket = Bucket("k:a", SLOW, 3)
    assert (await limiter.acquire([bucket])).remaining == 2
    await redis_client.script_flush()  # as after a Redis restart or failover: NOSCRIPT next
    assert (await limiter.acquire([bucket])).remaining == 1


async def test_text_clients_work_too(redis_prefix: str) -> None:
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        limiter = RedisLimiter(client, redis_prefix)
        bucket = Bucket("k:a", SLOW, 2)
        assert (await limiter.acquire([bucket])).remaining == 1
        await limiter.acquire([bucket])
        denied = await limiter.acquire([bucket])
        assert denied.bucket == "k:a"
        assert 998 < denied.retry_after <= 1000
    finally:
        await client.delete(f"{redis_prefix}:rl:k:a")
        await client.aclose()


async def test_pool_exhaustion_is_unavailable_without_cooldown(redis_prefix: str) -> None:
    client = Redis.from_url(REDIS_URL, max_connections=1)  # the non-blocking default pool
    try:
        limiter = RedisLimiter(client, redis_prefix)
        bucket = Bucket("k:a", SLOW, 100)
        results = await asyncio.gather(
            *(limiter.acquire([bucket]) for _ in range(5)), return_exceptions=True
        )
        assert any(isinstance(r, LimiterUnavailable) for r in results)
        assert (await limiter.acquire([bucket])).allowed  # Redis was never considered down
    finally:
        await client.delete(f"{redis_prefix}:rl:k:a")
        await client.aclose()


# --- Redis unreachable ------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


StartFakeRedis = Callable[[bool], Awaitable[tuple[int, list[int]]]]


@pytest.fixture
async def fake_redis() -> AsyncIterator[StartFakeRedis]:
    """``await fake_redis(hang)``: a TCP server that hangs up (or, ``hang``, never answers).

    Returns its port and a list holding its connection count.
    """
    servers: list[asyncio.Server] = []
    held: list[asyncio.StreamWriter] = []

    async def start(hang: bool) -> tuple[int, list[int]]:
        connections = [0]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections[0] += 1
            if hang:
                held.append(writer)
            else:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1], connections

    yield start
    for writer in held:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def _client(port: int, retries: int | None = None) -> Redis:
    if retries is None:
        return Redis(host="127.0.0.1", port=port)  # redis-py's default retry policy
    return Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), retries))


async def test_refused_connection_is_unavailable_within_the_timeout() -> None:
    client = _client(_closed_port())
    try:
        limiter = RedisLimiter(client, "x", timeout=0.2)
        with pytest.raises(LimiterUnavailable):
            await limiter.acquire([Bucket("k:a", 1.0, 1)])
    finally:
        await client.aclose()


async def test_silent_server_is_unavailable_after_the_timeout(fake_redis: StartFakeRedis) -> None:
    port, _ = await fake_redis(True)
    client = _client(port)
    try:
        limiter = RedisLimiter(client, "x", timeout=0.1)
        with pytest.raises(LimiterUnavailable) as raised:
            await limiter.acquire([Bucket("k:a", 1.0, 1)])
        assert isinstance(raised.value.__cause__, TimeoutError)
    finally:
        await client.aclose()


async def test_after_a_failure_redis_is_left_alone_for_the_cooldown(
    fake_redis: StartFakeRedis,
) -> None:
    port, connections = await fake_redis(False)
    client = _client(port, retries=0)
    clock = FakeClock()
    limiter = RedisLimiter(client, "x", timeout=5.0, cooldown=2.0, clock=clock)
    bucket = Bucket("k:a", 1.0, 1)
    try:
        with pytest.raises(LimiterUnavailable):
            await limiter.acquire([bucket])
        tried = connections[0]
        assert tried >= 1

        clock.advance(1.9)
        with pytest.raises(LimiterUnavailable, match="retrying in"):
            await limiter.acquire([bucket])
        assert connections[0] == tried

        clock.advance(0.2)
        with pytest.raises(LimiterUnavailable):
            await limiter.acquire([bucket])
        assert connections[0] > tried
    finally:
        await client.aclose()


@pytest.fixture
async def stalling_proxy() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP proxy to the real Redis whose first connection is swallowed (a stuck socket).

    Yields its port and an event set once that first connection is open.
    """
    target = urlsplit(REDIS_URL)
    first_open = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    pipes: list[asyncio.Task[None]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if not first_open.is_set():
            first_open.set()
            return  # the socket stays open and silent
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port or 6379)
        writers.append(up_writer)
        pipes.append(asyncio.create_task(pipe(reader, up_writer)))
        pipes.append(asyncio.create_task(pipe(up_reader, writer)))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], first_open
    for writer in writers:
        writer.close()
    for task in pipes:
        task.cancel()
    server.close()
    await server.wait_closed()


async def test_a_failure_while_others_get_answers_starts_no_cooldown(
    stalling_proxy: tuple[int, asyncio.Event], redis_client: Redis, redis_prefix: str
) -> None:
    port, first_open = stalling_proxy
    db = int(urlsplit(REDIS_URL).path.strip("/") or 0)
    pool = BlockingConnectionPool(host="127.0.0.1", port=port, db=db, max_connections=4)
    client = Redis.from_pool(pool)
    limiter = RedisLimiter(client, redis_prefix, timeout=0.5, clock=FakeClock())
    bucket = Bucket("k:a", SLOW, 10)
    try:
        stuck = asyncio.create_task(limiter.acquire([bucket]))
        await first_open.wait()
        assert (await limiter.acquire([bucket])).allowed  # on a second connection, answered
        with pytest.raises(LimiterUnavailable):
            await stuck
        # Redis answered someone while `stuck` waited: it is not down, so no cooldown began
        # (the fake clock never moves, so a cooldown would refuse this call).
        assert (await limiter.acquire([bucket])).remaining == 8
    finally:
        await client.aclose()

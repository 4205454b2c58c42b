"""The lean Redis client under the limiter: pipelining, script reload, failures, exactness."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from hoodrun.devnet import free_port
from hoodrun.limits import Bucket, LimiterUnavailable, RedisLimiter
from hoodrun.limits._resp import RespClient

from .support import REDIS_URL, SLOW


async def test_pipelined_commands_get_their_own_answers(
    redis_prefix: str, redis_client: Redis
) -> None:
    client = RespClient(REDIS_URL, connections=2)
    try:
        keys = [f"{redis_prefix}:k{i}" for i in range(200)]
        await asyncio.gather(*(client.execute("SET", k, i) for i, k in enumerate(keys)))
        values = await asyncio.gather(*(client.execute("GET", k) for k in keys))
        assert values == [str(i).encode() for i in range(200)]
        with pytest.raises(ResponseError):
            await client.execute("INCR", keys[0] + "x", "extra-arg")
        assert await client.execute("GET", keys[5]) == b"5"  # the stream is still in step
    finally:
        await client.aclose()


async def test_script_is_loaded_after_a_flush(redis_prefix: str, redis_client: Redis) -> None:
    client = RespClient(REDIS_URL)
    limiter = RedisLimiter(client, redis_prefix)
    try:
        bucket = Bucket("k:flush", SLOW, 5)
        assert (await limiter.acquire([bucket])).allowed
        await redis_client.script_flush()
        decision = await limiter.acquire([bucket])
        assert decision.allowed and decision.remaining == 3
    finally:
        await client.aclose()


async def test_unreachable_redis_fails_open_with_limiter_unavailable(redis_prefix: str) -> None:
    client = RespClient(f"redis://127.0.0.1:{free_port()}/0")
    limiter = RedisLimiter(client, redis_prefix)
    with pytest.raises(LimiterUnavailable):
        await limiter.acquire([Bucket("k:x", 1, 1)])
    with pytest.raises(RedisConnectionError):
        await client.execute("PING")
    await client.aclose()


async def test_two_lean_clients_share_one_bucket_exactly(
    redis_prefix: str, redis_client: Redis
) -> None:
    clients = [RespClient(REDIS_URL), RespClient(REDIS_URL)]
    limiters = [RedisLimiter(c, redis_prefix) for c in clients]
    bucket = [Bucket("k:shared", SLOW, 100)]
    try:
        decisions = await asyncio.gather(*(limiters[i % 2].acquire(bucket) for i in range(300)))
        assert sum(d.allowed for d in decisions) == 100
    finally:
        for c in clients:
            await c.aclose()


async def test_database_number_is_selected(redis_prefix: str) -> None:
    client = RespClient(REDIS_URL.rsplit("/", 1)[0] + "/3")
    other = Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + "/3")
    try:
        await client.execute("SET", f"{redis_prefix}:db", "three")
        assert await other.get(f"{redis_prefix}:db") == b"three"
    finally:
        await other.delete(f"{redis_prefix}:db")
        await other.aclose()
        await client.aclose()


async def test_a_failed_connection_setup_reaches_every_waiter_and_closes() -> None:
    """A server that refuses AUTH: every caller gets the error, no one hangs, nothing leaks."""
    opened = 0
    closed = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened, closed
        opened += 1
        await reader.read(1024)
        writer.write(b"-WRONGPASS invalid username-password pair\r\n")
        await writer.drain()
        try:
            while await reader.read(1024):  # until the client closes its end
                pass
        except ConnectionError:
            pass
        closed += 1
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://:secret@127.0.0.1:{port}/0", connections=1)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(client.execute("PING") for _ in range(3)), return_exceptions=True), 5
        )
        assert all(isinstance(r, ResponseError) for r in results)
        deadline = asyncio.get_running_loop().time() + 3
        while closed < opened:  # the client closed every connection it opened
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        assert opened >= 1
    finally:
        await client.aclose()
        server.close()

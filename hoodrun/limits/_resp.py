"""A lean Redis client for the limiter's one hot command (EVALSHA), on hiredis' parser.

Why not redis-py here: on this project's 2-core benchmark machine, redis-py's asyncio client spent
340 µs of CPU per EVALSHA decision (250 µs with hiredis installed) and 215 µs wall per PING, which
put a Redis-limited gateway at 0.15x nginx's throughput and +1.2 ms at c1 (bench/README.md). This
client pipelines commands over a few connections with a FIFO of futures per connection (Redis
answers in order), parses with ``hiredis.Reader`` and writes one buffer per command. Everything
else (pub/sub, admin commands, the tests' fixtures) keeps using redis-py.

It speaks to one server: ``redis://[user:password@]host:port/db`` (or ``unix:///path.sock``).
Errors raise redis-py's exception types, so callers handle both clients alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["RespClient", "RespScript"]


def _encode(args: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Cached: asyncio.get_running_loop() costs a getpid() syscall per call.
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while (reply := reader.gets()) is not False:
            if not waiters:  # an answer nobody asked for: the stream is out of step
                self._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            fut = waiters.popleft()
            if fut.done():  # its caller gave up (timeout); the answer is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                message = str(reply)
                error = NoScriptError if message.startswith("NOSCRIPT") else ResponseError
                fut.set_exception(error(message))
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to Redis lost: {exc!r}"))

    def _fail(self, error: Exception) -> None:
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(error)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """A few pipelined connections to one Redis server; ``execute`` one command at a time."""

    def __init__(self, url: str, *, connections: int = 2, connect_timeout: float = 1.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self._unix = parsed.path if parsed.scheme == "unix" else None
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._db = int(parsed.path.strip("/") or 0) if parsed.scheme == "redis" else 0
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        self._connect_timeout = connect_timeout
        self._slots: list[_Protocol | None] = [None] * connections
        self._connecting: list[asyncio.Future[_Protocol] | None] = [None] * connections
        self._next = itertools.cycle(range(connections))
        self._closed = False

    async def _open(self) -> _Protocol:
        """Connect, authenticate and select the database, all within ``connect_timeout``."""
        loop = asyncio.get_running_loop()
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._unix is not None:
                    _, proto = await loop.create_unix_connection(_Protocol, self._unix)
                else:
                    _, proto = await loop.create_connection(_Protocol, self._host, self._port)
                if self._password is not None:
                    auth = [self._username, self._password] if self._username else [self._password]
                    await self._send(proto, ["AUTH", *auth])
                if self._db:
                    await self._send(proto, ["SELECT", self._db])
        except BaseException:
            if proto is not None and proto.transport is not None:
                proto.transport.abort()  # never leave a half-set-up connection open
            raise
        return proto

    async def _connection(self) -> _Protocol:
        slot = next(self._next)
        proto = self._slots[slot]
        if proto is not None and not proto.closed:
            return proto
        pending = self._connecting[slot]
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._connecting[slot] = pending
        try:
            proto = await self._open()
        except BaseException as exc:
            # Whatever stopped this caller (refused, AUTH error, its own timeout or
            # cancellation), the callers waiting on the same connection hear of it too.
            error = (
                exc
                if isinstance(exc, RedisConnectionError | ResponseError)
                else RedisConnectionError(f"cannot connect to Redis: {exc!r}")
            )
            pending.set_exception(error)
            pending.exception()  # retrieved here: a lone caller leaves no warning behind
            if isinstance(exc, OSError | TimeoutError):
                raise error from exc
            raise
        else:
            self._slots[slot] = proto
            pending.set_result(proto)
            return proto
        finally:
            self._connecting[slot] = None

    @staticmethod
    async def _send(proto: _Protocol, args: Sequence[Any]) -> Any:
        if proto.transport is None or proto.closed:
            raise RedisConnectionError("connection to Redis is closed")
        fut: asyncio.Future[Any] = proto.loop.create_future()
        proto.waiters.append(fut)
        proto.transport.write(_encode(args))
        return await fut

    async def execute(self, *args: Any) -> Any:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        return await self._send(await self._connection(), args)

    def register_script(self, script: str) -> RespScript:
        return RespScript(self, script)

    async def aclose(self) -> None:
        self._closed = True
        for proto in self._slots:
            if proto is not None and proto.transport is not None:
                proto.transport.close()
        self._slots = [None] * len(self._slots)


class RespScript:
    """A Lua script run by EVALSHA, loaded on the first NOSCRIPT (as redis-py's ``Script``)."""

    def __init__(self, client: RespClient, script: str) -> None:
        self._client = client
        self._script = script
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self._client.execute(*command)
        except NoScriptError:
            await self._client.execute("SCRIPT", "LOAD", self._script)
            return await self._client.execute(*command)

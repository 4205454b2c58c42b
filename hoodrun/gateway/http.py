"""The gateway's HTTP/1.1 server: an asyncio Protocol on httptools' parser.

Why not a framework: on this hardware a framework server (uvicorn, granian) with the same
upstream pool measured 0.41-0.50x nginx's throughput before any gateway work, against 0.82-0.93x
for a Protocol on httptools (shared/reference/python-proxy-ceiling.md; bench/README.md has our
own figures). The gateway's goal is >= 0.5x, so the hot path gets this small server; the api role
uses FastAPI on uvicorn.

It does keep-alive, pipelining (answers in order), ``Expect: 100-continue``, chunked request
bodies, a body size cap (413 before the body is read), idle and header timeouts, write
back-pressure, and a graceful stop that finishes requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Protocol, cast

import httptools

__all__ = ["HttpServer", "Request", "Response"]

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
MAX_URL = 8 * 1024  # longer request targets get 414
MAX_HEADER_BYTES = 64 * 1024  # more header bytes get 431
_JSON = b"application/json"


class Request:
    __slots__ = ("body", "headers", "keep_alive", "method", "path", "peer", "query", "started")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        peer: str,
        keep_alive: bool,
        started: float,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer
        self.keep_alive = keep_alive
        self.started = started


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: bytes = _JSON,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type


Handler = Callable[[Request], Awaitable[Response]]
Fallback = Callable[[int, bytes], Response]  # (status, message) -> response for protocol errors


class Upgraded(Protocol):
    """What takes over a connection after an HTTP upgrade (a WebSocket session)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


# (request, transport, bytes after the request) -> the new protocol, or a refusal to send.
UpgradeHandler = Callable[[Request, asyncio.Transport, bytes], "Upgraded | Response"]


def _encode(response: Response, keep_alive: bool, head: bool = False) -> bytes:
    status = response.status
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")),
    ]
    if status != 204:
        parts.append(b"content-type: %s\r\ncontent-length: %d\r\n" % (
            response.content_type, len(response.body)
        ))  # fmt: skip
    if response.headers:
        for name, value in response.headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if status != 204 and not head:  # a HEAD answer says the length but carries no body
        parts.append(response.body)
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_busy",
        "_closing",
        "_continue_sent",
        "_eof",
        "_expect_continue",
        "_failure",
        "_head_bytes",
        "_headers",
        "_parser",
        "_queue",
        "_server",
        "_size",
        "_upgrade",
        "_url",
        "_write_paused",
        "last_active",
        "mid_request",
        "peer",
        "request_started",
        "task",
        "transport",
        "upgraded",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._busy = False
        self._closing = False
        self._write_paused = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._expect_continue = False
        self._continue_sent = False
        self._eof = False
        self._failure: Response | None = None  # answered after the requests before it
        self._head_bytes = 0
        self.request_started = 0.0
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.last_active = time.monotonic()
        self.mid_request = False
        self.task: asyncio.Task[None] | None = None
        self._upgrade: Request | None = None  # an upgrade request waiting for its bytes
        self.upgraded: Upgraded | None = None  # the protocol that took the connection over

    # --- transport callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded is not None:
            self.upgraded.connection_lost(exc)
        if self.task is None:  # else _run removes it when the request is done
            self._server.connections.discard(self)
        self.transport = None
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.data_received(data)
            return
        if self._failure is not None:
            return  # the stream is broken; the error goes out after the answers before it
        self.last_active = time.monotonic()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            request, self._upgrade = self._upgrade, None
            handler = self._server.upgrade
            if request is None or handler is None or self.transport is None or self._busy:
                self._fail(400, b"Bad Request: protocol upgrade is not supported here")
                return
            offset = upgrade.args[0] if upgrade.args else len(data)
            outcome = handler(request, self.transport, data[offset:])
            if isinstance(outcome, Response):
                self.transport.write(_encode(outcome, False))
                self._close()
                return
            self.upgraded = outcome
        except httptools.HttpParserError:
            self._fail(400, b"Bad Request: malformed HTTP")

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and self._failure is None:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        """The client closed its sending side: answer what it sent, then close."""
        if self.upgraded is not None:
            self.upgraded.eof_received()
            return None
        if self._busy or self._queue:
            self._eof = True
            return True  # keep the transport open for the answers
        return None

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.mid_request = True
        self.request_started = time.monotonic()
        self._head_bytes = 0
        self._continue_sent = False
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            self._fail(414, b"URI Too Long: the request path is longer than allowed")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEADER_BYTES:
            self._fail(431, b"Request Header Fields Too Large")
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key in self._headers:
            self._headers[key] += ", " + text
        else:
            self._headers[key] = text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._server.max_body:
            self._fail(413, b"body too large")
            return
        if self._headers.get("expect", "").lower() == "100-continue":
            self._expect_continue = True
            if self.transport is not None and not self._busy and not self._queue:
                self._continue_sent = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._server.max_body:
            self._fail(413, b"body too large")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.mid_request = False
        if self._closing or self._failure is not None:
            return
        upgrade = self._server.upgrade is not None and self._parser.should_upgrade()
        url = self._url.decode("latin-1")
        path, _, query = url.partition("?")
        request = Request(
            self._parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            b"".join(self._body) if len(self._body) != 1 else self._body[0],
            self.peer,
            self._parser.should_keep_alive() and not self._server.stopping,
            time.monotonic(),
        )
        if upgrade:  # handed over in data_received, with the bytes that follow it
            self._upgrade = request
            return
        if self._busy:
            self._queue.append(request)
            if len(self._queue) > 64 and self.transport is not None:
                self.transport.pause_reading()  # a client pipelining without reading answers
        else:
            self._start(request)

    # --- request cycle ---------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._busy = True
        self._server.inflight += 1
        # A connection runs one request at a time, so it holds its task itself: no shared set
        # and no done-callback (an extra loop callback per request).
        self.task = self._server.loop.create_task(self._run(request))

    async def _run(self, request: Request) -> None:
        server = self._server
        try:
            response = await server.handler(request)
        except Exception:  # noqa: BLE001 (a bug must not kill the connection silently)
            server.log_exception("unhandled error in request handler")
            response = server.fallback(500, b"internal error")
        finally:
            server.inflight -= 1
            self.task = None
        transport = self.transport
        if transport is None:  # the client left meanwhile
            server.connections.discard(self)
            return
        keep_alive = request.keep_alive and not server.stopping
        transport.write(_encode(response, keep_alive, request.method == "HEAD"))
        self._busy = False
        self.last_active = time.monotonic()
        if not keep_alive:
            self._close()
            return
        if self._queue:
            if not self._write_paused and self._failure is None:
                transport.resume_reading()
            self._start(self._queue.popleft())
        elif self._failure is not None:
            self._send_failure()
        elif self._eof:
            self._close()
        elif self.mid_request and self._expect_continue and not self._continue_sent:
            # The next request's headers came while this one ran: it waits for its 100 now.
            self._continue_sent = True
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _fail(self, status: int, message: bytes) -> None:
        """A protocol-level error: the stream cannot be trusted further. Requests received
        before it are still answered, in order; then the error, then the connection closes."""
        if self._closing or self._failure is not None:
            return
        self._failure = self._server.fallback(status, message)
        if self.transport is not None:
            self.transport.pause_reading()
        if not self._busy and not self._queue:
            self._send_failure()

    def _send_failure(self) -> None:
        if self.transport is not None and self._failure is not None:
            self.transport.write(_encode(self._failure, False))
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close_if_idle(self, now: float) -> None:
        server = self._server
        if self.upgraded is not None:  # the session keeps its own timers
            if server.stopping:
                self._close()
            return
        if self._busy or self._queue:
            return
        if self.mid_request:
            # A deadline for the whole request, not an idle timer: a client trickling a byte
            # at a time (slowloris) is cut off all the same.
            if server.stopping or now - self.request_started > server.header_timeout:
                self._close()
        elif server.stopping or now - self.last_active > server.keepalive_timeout:
            self._close()


class HttpServer:
    """Owns the listening socket(s) and the connections; ``serve`` then ``shutdown``."""

    def __init__(
        self,
        handler: Handler,
        fallback: Fallback,
        *,
        max_body: int,
        keepalive_timeout: float = 75.0,
        header_timeout: float = 30.0,
        log_exception: Callable[[str], None] | None = None,
        upgrade: UpgradeHandler | None = None,
    ) -> None:
        self.handler = handler
        self.upgrade = upgrade
        self.fallback = fallback
        self.max_body = max_body
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.connections: set[_Connection] = set()
        self.inflight = 0
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop  # set by serve(), before any connection
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.log_exception = log_exception or (lambda message: None)

    async def serve(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Start listening; returns the bound port (useful with port 0)."""
        self.loop = loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_port=reuse_port or None, backlog=2048
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.close_if_idle(now)

    def _tasks(self) -> set[asyncio.Task[None]]:
        return {conn.task for conn in self.connections if conn.task is not None}

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), close the rest."""
        self.stopping = True
        for server in self._servers:
            server.close()
        now = time.monotonic()
        for conn in list(self.connections):
            conn.close_if_idle(now)
        deadline = time.monotonic() + timeout
        while (tasks := self._tasks()) and time.monotonic() < deadline:
            await asyncio.wait(tasks, timeout=deadline - time.monotonic())
        for task in self._tasks():
            task.cancel()
        for conn in list(self.connections):
            conn._close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)

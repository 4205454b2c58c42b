"""JSON-RPC over WebSocket at ``GET /{chain}/v1/{KEY}`` (and the host form), with subscriptions.

The handshake is checked like an HTTP call (route, address, chain, key, the key's chains and
origins) before the connection is upgraded; a refusal is the same JSON-RPC error with its HTTP
status. After it, every message goes through the HTTP pipeline as if POSTed (``Gateway.handle``):
the key is checked again (from cache), limits count each call, telemetry records each one.

``eth_subscribe`` / ``eth_unsubscribe`` are answered by the session (``WsSession.subscribe``):
the chain's ``SubscriptionHub`` holds one WebSocket to a healthy upstream and one upstream
subscription per distinct params, fanned out to every client that asked for it (under ids of the
gateway's own). If that upstream connection drops, the hub connects to another healthy upstream
and subscribes again; clients keep their ids. ``newHeads`` never repeats a head after a switch
and fills a gap with the blocks it missed (fetched over HTTP, without their transaction lists).
Notifications go to the telemetry sink (method ``eth_subscription``, sized).

Frames are handled by ``websockets``' sans-I/O protocol on the server's own transport (pings are
answered by it); the upstream side uses ``websockets``' asyncio client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from hoodrun.gateway.cache import quantity
from hoodrun.gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidParams,
    InvalidRequest,
    LimitExceeded,
    RateLimited,
    Unavailable,
    error_object,
)
from hoodrun.gateway.http import Request, Response
from hoodrun.keys.verifier import KeyDenied, KeyStoreDown
from hoodrun.telemetry.sink import RequestRecord

if TYPE_CHECKING:
    from hoodrun.gateway.app import Gateway
    from hoodrun.gateway.chain import ChainState
    from hoodrun.gateway.jsonrpc import Call
    from hoodrun.keys.record import KeyRecord

__all__ = ["CURRENT_SESSION", "SubscriptionHub", "WsSession", "handshake_answer"]

log = logging.getLogger("hoodrun.gateway")

# The session whose message is being handled: the pipeline hands it eth_subscribe calls.
CURRENT_SESSION: ContextVar[WsSession | None] = ContextVar("hoodrun_ws_session", default=None)

KINDS = frozenset({"newHeads", "logs", "newPendingTransactions"})
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake_answer(request: Request) -> bytes | str:
    """The 101 answer to a valid WebSocket handshake, or what is wrong with it."""
    headers = request.headers
    if request.method != "GET":
        return "a WebSocket handshake is a GET"
    if "websocket" not in headers.get("upgrade", "").lower():
        return "Upgrade: websocket is missing"
    if headers.get("sec-websocket-version") != "13":
        return "Sec-WebSocket-Version must be 13"
    key = headers.get("sec-websocket-key", "")
    if len(key) < 16:
        return "Sec-WebSocket-Key is missing"
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())  # noqa: S324 (RFC 6455)
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: " + accept + b"\r\n\r\n"
    )


@dataclass
class _Upstream:
    """One WebSocket to one upstream node, for the subscriptions of one session and chain."""

    name: str
    socket: Any
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)  # upstream sub id -> topic key
    reader: asyncio.Task[None] | None = None
    next_id: int = 1

    async def request(self, method: str, params: list[Any], timeout: float) -> Any:
        ident = self.next_id
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        try:
            await self.socket.send(
                orjson.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
            )
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(ident, None)


class WsSession:
    """One client WebSocket. The server hands it the connection after the handshake."""

    def __init__(
        self,
        gateway: Gateway,
        request: Request,
        transport: Any,
        chain: ChainState,
        record: KeyRecord | None,
        key_hash: str | None,
    ) -> None:
        settings = gateway.config.ws
        self.gateway = gateway
        self.request = request
        self.transport = transport
        self.chain = chain
        self.record = record
        self.key_hash = key_hash
        self.key: str | None = None  # to check again when the key changes
        self.protocol = Protocol(Side.SERVER, max_size=settings.max_message_bytes)
        self.subs: dict[str, _Topic] = {}  # client subscription id -> topic
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        # Any frame (a pong too) proves the peer alive; only messages or subscriptions keep the
        # socket from being idle.
        self.last_frame = self.last_message = time.monotonic()
        self.on_close: list[Callable[[WsSession], None]] = []

    # --- frames ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self.last_frame = time.monotonic()
        self.protocol.receive_data(data)
        for frame in self.protocol.events_received():
            if isinstance(frame, Frame) and frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.last_message = now
                self._spawn(self._message(bytes(frame.data)))
        self._flush()
        if self.protocol.state is State.CLOSED or self.protocol.close_expected():
            self._finish()

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def send(self, payload: bytes) -> None:
        if self.closed or self.protocol.state is not State.OPEN:
            return
        self.protocol.send_text(payload)
        self._flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        self._finish()

    def ping(self) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_ping(secrets.token_bytes(4))
            self._flush()

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        for task in self._tasks:
            task.cancel()
        if self.subs:
            self.gateway.sockets.hub(self.chain).forget(self)
        for callback in self.on_close:
            callback(self)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _message(self, body: bytes) -> None:
        """One client message through the HTTP pipeline (keys, scopes, limits, telemetry)."""
        CURRENT_SESSION.set(self)
        request = self.request
        as_post = Request(
            "POST", request.path, request.query, request.headers, body, request.peer, True,
            time.monotonic(),
        )  # fmt: skip
        try:
            response = await self.gateway.handle(as_post)
        except Exception:
            log.exception("unhandled error in a WebSocket message")
            response = Response(500, orjson.dumps(error_object(-32603, "Internal error")))
        if response.body:
            self.send(response.body)
        if response.status == 401:  # the key died meanwhile: the socket goes with it
            self.close(1008, "the API key is no longer valid")

    # --- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, call: Call) -> Response:
        """Refusals are raised as the gateway's errors, so their records carry the reason and
        they are not billed."""
        params = call.obj.get("params")
        if not isinstance(params, list) or not params or params[0] not in KINDS:
            raise InvalidParams("Invalid params: subscribe to " + ", ".join(sorted(KINDS)))
        limit = self.gateway.config.ws.max_subscriptions
        if len(self.subs) >= limit:
            raise LimitExceeded(
                f"Limit exceeded: at most {limit} subscriptions per connection",
                reason="subscriptions_exceeded",
            )
        client_id = "0x" + secrets.token_hex(16)
        try:
            topic = await self.gateway.sockets.hub(self.chain).subscribe(self, client_id, params)
        except Exception as exc:  # noqa: BLE001 (an upstream failure of any kind)
            log.warning("chain %s: subscription failed: %s", self.chain.name, exc)
            raise Unavailable(
                f"Service unavailable: no node of chain {self.chain.name!r} took the "
                "subscription; retry shortly"
            ) from None
        self.subs[client_id] = topic
        return _result(call, client_id)

    async def unsubscribe(self, call: Call) -> Response:
        params = call.obj.get("params")
        client_id = params[0] if isinstance(params, list) and params else None
        topic = self.subs.pop(client_id, None) if isinstance(client_id, str) else None
        if topic is None or not isinstance(client_id, str):
            return _result(call, False)
        await self.gateway.sockets.hub(self.chain).unsubscribe(client_id, topic)
        return _result(call, True)

    def deliver(self, client_id: str, result: Any) -> None:
        payload = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "method": "eth_subscription",
                "params": {"subscription": client_id, "result": result},
            }
        )
        self.send(payload)
        self._record(len(payload))

    def _record(self, size: int) -> None:
        record = self.record
        with contextlib.suppress(Exception):
            self.gateway.sink.emit(
                RequestRecord(
                    ts=time.time(), chain=self.chain.name, method="eth_subscription",
                    methods=("eth_subscription",), calls=1, status=200, reason=None,
                    key_id=record.id if record else None,
                    org_id=record.org_id if record else None,
                    project_id=record.project_id if record else None,
                    client_ip=self.request.peer, latency=0.0, upstream=None,
                    upstream_latency=None, attempts=0, bytes_in=0, bytes_out=size,
                    request_id=self.gateway.new_request_id(),
                )
            )  # fmt: skip


@dataclass
class _Topic:
    """One upstream subscription, shared by every client subscribed with the same params."""

    key: str
    params: list[Any]
    subscribers: dict[str, WsSession] = field(default_factory=dict)  # client id -> session
    upstream_id: str | None = None
    last_head: int | None = None  # newHeads: the last block number delivered


class SubscriptionHub:
    """A chain's subscriptions: one WebSocket to one healthy upstream, one upstream
    subscription per distinct params, fanned out to every client that asked for it. When the
    upstream socket drops, every subscription moves to another healthy upstream."""

    def __init__(self, chain: ChainState, timeout: float) -> None:
        self.chain = chain
        self.timeout = timeout
        self.topics: dict[str, _Topic] = {}
        self.upstream: _Upstream | None = None
        self._lock = asyncio.Lock()
        self._switching: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(topic.subscribers) for topic in self.topics.values())

    async def subscribe(self, session: WsSession, client_id: str, params: list[Any]) -> _Topic:
        key = orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
        async with self._lock:
            topic = self.topics.get(key)
            if topic is None:
                topic = _Topic(key, params)
                upstream = await self._connected()
                topic.upstream_id = await upstream.request("eth_subscribe", params, self.timeout)
                if not isinstance(topic.upstream_id, str):
                    raise RuntimeError(f"the node answered {topic.upstream_id!r}")
                upstream.routes[topic.upstream_id] = key
                self.topics[key] = topic
            topic.subscribers[client_id] = session
            return topic

    async def unsubscribe(self, client_id: str, topic: _Topic) -> None:
        async with self._lock:
            topic.subscribers.pop(client_id, None)
            if topic.subscribers or self.topics.get(topic.key) is not topic:
                return
            del self.topics[topic.key]
            upstream = self.upstream
            if upstream is not None and topic.upstream_id is not None:
                upstream.routes.pop(topic.upstream_id, None)
                with contextlib.suppress(Exception):
                    await upstream.request("eth_unsubscribe", [topic.upstream_id], 2.0)
            if not self.topics and upstream is not None:
                self.upstream = None
                await _drop(upstream)

    def forget(self, session: WsSession) -> None:
        """A socket closed: its subscriptions go (the upstream ones with their last client)."""
        for client_id, topic in list(session.subs.items()):
            asyncio.get_running_loop().create_task(self.unsubscribe(client_id, topic))
        session.subs.clear()

    async def _connected(self) -> _Upstream:
        if self.upstream is None:
            self.upstream = await self._connect(exclude=())
        return self.upstream

    async def _connect(self, exclude: tuple[str, ...]) -> _Upstream:
        """A WebSocket to the best healthy upstream not in ``exclude`` (any if none other)."""
        from websockets.asyncio.client import connect

        upstreams = self.chain.pool.upstreams
        if any("ws" in up.tags for up in upstreams):  # the chain says which nodes serve sockets
            upstreams = [up for up in upstreams if "ws" in up.tags]
        candidates = sorted(
            (up for up in upstreams if up.healthy),
            key=lambda up: (up.name in exclude, up.fallback, up.score()),
        )
        if not candidates:
            raise ConnectionError(f"no healthy upstream for chain {self.chain.name!r}")
        failure: Exception | None = None
        for up in candidates:
            url = up.config.ws_url or "ws" + up.url.removeprefix("http")
            try:
                socket = await asyncio.wait_for(connect(url, max_size=None), 5.0)
            except Exception as exc:  # noqa: BLE001 (try the next node)
                failure = exc
                continue
            upstream = _Upstream(up.name, socket)
            upstream.reader = asyncio.get_running_loop().create_task(self._read(upstream))
            return upstream
        raise ConnectionError(f"no upstream WebSocket of chain {self.chain.name!r}: {failure}")

    async def _read(self, upstream: _Upstream) -> None:
        try:
            async for raw in upstream.socket:
                message = orjson.loads(raw)
                if not isinstance(message, dict):
                    continue
                if message.get("method") == "eth_subscription":
                    params = message.get("params") or {}
                    key = upstream.routes.get(str(params.get("subscription")))
                    topic = self.topics.get(key) if key is not None else None
                    if topic is not None:
                        await self._notify(topic, params.get("result"))
                    continue
                future = upstream.pending.get(message.get("id"))  # type: ignore[arg-type]
                if future is not None and not future.done():
                    if "error" in message:
                        future.set_exception(RuntimeError(str(message["error"])))
                    else:
                        future.set_result(message.get("result"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 (the connection dropped)
            log.info("chain %s: upstream WebSocket %s dropped: %s", self.chain.name,
                     upstream.name, exc)  # fmt: skip
        for future in upstream.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the upstream WebSocket closed"))
        if self.upstream is upstream:
            self.upstream = None
            if self.topics:
                self._switching = asyncio.get_running_loop().create_task(self._switch(upstream))

    async def _switch(self, failed: _Upstream) -> None:
        """Subscribe again elsewhere; clients keep their ids."""
        delay = 0.1
        while self.topics:
            async with self._lock:
                try:
                    upstream = await self._connect(exclude=(failed.name,))
                    for key, topic in list(self.topics.items()):
                        topic.upstream_id = await upstream.request(
                            "eth_subscribe", topic.params, self.timeout
                        )
                        upstream.routes[topic.upstream_id] = key
                except Exception as exc:  # noqa: BLE001 (try again, backing off)
                    log.warning("chain %s: resubscribing failed: %s", self.chain.name, exc)
                else:
                    self.upstream = upstream
                    log.info("chain %s: subscriptions moved to %s", self.chain.name, upstream.name)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _notify(self, topic: _Topic, result: Any) -> None:
        if topic.params[0] == "newHeads" and isinstance(result, dict):
            number = quantity(result.get("number"))
            if number is not None and topic.last_head is not None:
                if number <= topic.last_head:
                    return  # delivered before the switch
                for missing in range(topic.last_head + 1, number):  # a gap across the switch
                    block = await self._block(missing)
                    if block is not None:
                        self._fan_out(topic, block)
            if number is not None:
                topic.last_head = number
        self._fan_out(topic, result)

    @staticmethod
    def _fan_out(topic: _Topic, result: Any) -> None:
        for client_id, session in list(topic.subscribers.items()):
            session.deliver(client_id, result)

    async def _block(self, number: int) -> Any:
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber",
             "params": [hex(number), False]}
        )  # fmt: skip
        try:
            reply = await self.chain.pool.call(body, deadline=asyncio.get_running_loop().time() + 5)
        except Exception:  # noqa: BLE001 (the gap stays: better than a stuck stream)
            return None
        block = orjson.loads(reply.body).get("result")
        if isinstance(block, dict):
            for detail in ("transactions", "uncles", "size", "totalDifficulty"):
                block.pop(detail, None)
        return block

    async def aclose(self) -> None:
        if self._switching is not None:
            self._switching.cancel()
        upstream, self.upstream = self.upstream, None
        self.topics.clear()
        if upstream is not None:
            await _drop(upstream)


async def _drop(upstream: _Upstream) -> None:
    if upstream.reader is not None:
        upstream.reader.cancel()
    with contextlib.suppress(Exception):
        await upstream.socket.close()


def _result(call: Call, result: Any) -> Response:
    return Response(200, orjson.dumps({"jsonrpc": "2.0", "id": call.id, "result": result}))


class WebSockets:
    """The gateway's sockets: handshake admission, sessions by key, subscription hubs."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._sessions: dict[str, set[WsSession]] = {}  # open sockets by key hash
        self._hubs: dict[str, SubscriptionHub] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        gateway.verifier.on_purge.append(self._key_changed)

    def upgrade(self, request: Request, transport: Any, rest: bytes) -> Any:
        """The server's upgrade hook: a session once the handshake is admitted (checked like an
        HTTP call, asynchronously), or an HTTP refusal."""
        answer = handshake_answer(request)
        if isinstance(answer, str):
            error = InvalidRequest(f"Bad WebSocket handshake: {answer}", reason="bad_handshake")
            return Response(400, error.body())
        return _Admission(self, request, transport, answer, rest)

    async def admit(self, request: Request) -> tuple[ChainState, KeyRecord | None, str | None]:
        """What an HTTP call would check before its body: route, address, chain, key, scopes."""
        gateway = self.gateway
        chain_name, key = gateway._route(request)
        policy = gateway.ip_policy
        if not policy.allowed(
            policy.client_ip(request.peer, request.headers.get("x-forwarded-for"))
        ):
            raise Forbidden(
                "Forbidden: requests from this address are not allowed", reason="ip_denied"
            )
        chain = gateway.chain_for(chain_name)
        record = await gateway._authenticate(key, request.headers.get("origin"))
        if record is not None and record.chains is not None and chain_name not in record.chains:
            raise Forbidden(
                f"Forbidden: this key may not use chain {chain_name!r}", reason="chain_not_allowed"
            )
        plan = gateway.policy.plan_of(record) if record is not None else gateway.policy.public_plan
        if plan is not None and not plan.websocket:
            raise Forbidden(
                f"Forbidden: plan {plan.name!r} does not include WebSockets; use HTTP, or "
                "upgrade the plan",
                reason="websocket_not_allowed",
            )
        key_hash = self.gateway.verifier.hash_of(key) if key is not None else None
        if key_hash is not None:
            limit = self.gateway.config.ws.max_connections_per_key
            if len(self._sessions.get(key_hash, ())) >= limit:
                raise RateLimited(
                    f"Limit exceeded: at most {limit} open WebSockets per key",
                    reason="ws_connections_exceeded",
                )
        return chain, record, key_hash

    def hub(self, chain: ChainState) -> SubscriptionHub:
        """The chain's subscriptions, shared by every socket (made on first use)."""
        hub = self._hubs.get(chain.name)
        if hub is None:
            hub = self._hubs[chain.name] = SubscriptionHub(
                chain, self.gateway.config.gateway.upstream_timeout
            )
        return hub

    async def drop_chain(self, name: str) -> None:
        """The chain left the config: close its sockets and its upstream subscriptions."""
        for sessions in list(self._sessions.values()):
            for session in list(sessions):
                if session.chain.name == name:
                    session.close(1001, f"chain {name} is no longer served")
        hub = self._hubs.pop(name, None)
        if hub is not None:
            await hub.aclose()

    async def aclose(self) -> None:
        """Close every socket and upstream subscription."""
        for sessions in list(self._sessions.values()):
            for session in list(sessions):
                session.close(1001, "the gateway is stopping")
        for hub in self._hubs.values():
            await hub.aclose()

    def opened(self, session: WsSession) -> None:
        if session.key_hash is not None:
            self._sessions.setdefault(session.key_hash, set()).add(session)
        session.on_close.append(self._closed)
        self.gateway.metrics.ws_sessions.inc((session.chain.name,))

    def _closed(self, session: WsSession) -> None:
        if session.key_hash is not None:
            sessions = self._sessions.get(session.key_hash)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._sessions[session.key_hash]

    def _key_changed(self, key_hash: str) -> None:
        """A key changed (revoked, disabled, rotated, ...): its sockets check it again."""
        sessions = self._sessions.get(key_hash)
        if sessions:
            task = asyncio.get_running_loop().create_task(self._recheck(list(sessions)))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    async def _recheck(self, sessions: list[WsSession]) -> None:
        for session in sessions:
            key = session.key
            if key is None:
                continue
            try:
                self.gateway.verifier.check(key) or await self.gateway.verifier.verify(key)
            except KeyDenied:
                session.close(1008, "the API key is no longer valid")
            except KeyStoreDown:
                pass

    async def keepalive(self, session: WsSession) -> None:
        settings = self.gateway.config.ws
        while not session.closed:
            await asyncio.sleep(min(settings.ping_interval, settings.idle_timeout))
            now = time.monotonic()
            if now - session.last_frame > settings.idle_timeout:
                session.close(1001, "no answer to pings")
                return
            if not session.subs and now - session.last_message > settings.idle_timeout:
                session.close(1001, "idle")
                return
            session.ping()


class _Admission:
    """A WebSocket between its handshake and its admission: holds what the client sends until
    the key is checked, then becomes a session (or answers the refusal and closes)."""

    def __init__(
        self, sockets: WebSockets, request: Request, transport: Any, answer: bytes, rest: bytes
    ) -> None:
        self.sockets = sockets
        self.request = request
        self.transport = transport
        self.buffer = [rest] if rest else []
        self.session: WsSession | None = None
        self.lost = False
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._admit(answer))

    async def _admit(self, answer: bytes) -> None:
        sockets = self.sockets
        try:
            chain, record, key_hash = await sockets.admit(self.request)
        except GatewayError as error:
            if not self.lost:
                response = Response(error.status, error.body(), error.headers)
                self.transport.write(_encode_refusal(response))
                self.transport.close()
            return
        if self.lost:
            return
        self.transport.write(answer)
        session = WsSession(sockets.gateway, self.request, self.transport, chain, record, key_hash)
        session.key = sockets.gateway._route(self.request)[1]
        self.session = session
        sockets.opened(session)
        session._spawn(sockets.keepalive(session))
        for data in self.buffer:
            session.data_received(data)
        self.buffer.clear()

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.data_received(data)
        else:
            self.buffer.append(data)

    def eof_received(self) -> None:
        if self.session is not None:
            self.session.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.session is not None:
            self.session.connection_lost(exc)
        elif not self.task.done():
            self.task.cancel()


def _encode_refusal(response: Response) -> bytes:
    from hoodrun.gateway.http import _encode

    return _encode(response, False)

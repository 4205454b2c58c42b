"""Tiny scripted HTTP servers for failure modes a real node will not produce, and helpers.

A ``TinyServer`` hands every parsed request to the test's handler, which answers with raw bytes
(``Answer``), drops the connection without a word (``None``) or never answers (``HANG``).
``mini_node`` builds a handler that answers the health calls like a node of a given chain.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from hoodrun.config import ChainConfig, GatewayConfig, HealthConfig, UpstreamConfig
from hoodrun.devnet import Anvil

HANG = object()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    conn: int  # which connection (0, 1, ...)
    seq: int  # which request on that connection (0, 1, ...)

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Answer:
    data: bytes
    close: bool = False  # close the connection after writing


# Returns (or awaits to) Answer | bytes | None | HANG.
Handler = Callable[[Request], Any]


def http_response(
    body: bytes,
    status: int = 200,
    *,
    chunks: int = 0,
    length: bool = True,
    headers: tuple[str, ...] = (),
) -> bytes:
    """A raw HTTP/1.1 response: Content-Length, ``chunks`` chunked pieces, or neither (EOF)."""
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", *headers]
    if chunks:
        lines.append("Transfer-Encoding: chunked")
        size = max(1, -(-len(body) // chunks))
        payload = b"".join(
            b"%x\r\n%b\r\n" % (len(part), part)
            for part in (body[i : i + size] for i in range(0, len(body), size))
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload + b"0\r\n\r\n"
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 whose every answer the test's handler decides."""

    handler: Handler
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _conn_ids: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def connections(self) -> int:
        return len({r.conn for r in self.requests})

    async def start(self) -> TinyServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._closing.set()  # hung handlers return
        for writer in self._writers:
            writer.close()  # readers waiting for a request see EOF
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2.0)
            for task in stuck:
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = next(self._conn_ids)
        try:
            for seq in itertools.count():
                head = await reader.readuntil(b"\r\n\r\n")
                first, *rest = head.decode("latin-1").split("\r\n")
                method, path, _ = first.split(" ", 2)
                headers = {}
                for line in rest:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body, conn, seq)
                self.requests.append(request)
                action = self.handler(request)
                if inspect.isawaitable(action):
                    action = await action
                if action is None:
                    return
                if action is HANG:
                    await self._closing.wait()
                    return
                answer = action if isinstance(action, Answer) else Answer(action)
                writer.write(answer.data)
                await writer.drain()
                if answer.close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)


MakeServer = Callable[[Handler], Awaitable[TinyServer]]
MakeAnvil = Callable[..., Anvil]


def rpc_result(call: dict[str, Any], result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.get("id"), "result": result}


def rpc_error(call: dict[str, Any], message: str, code: int = -32000) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call.get("id"), "error": {"code": code, "message": message}}


def mini_node(
    chain_id: int = 1,
    *,
    head: int = 16,
    syncing: Any = False,
    peers: int | None = 5,
    batches: bool = True,
    other: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> Callable[[Request], bytes | None]:
    """A handler answering health calls like a node; ``other(call)`` answers the rest (None:
    drop the connection). Attributes of the returned function can be changed by the test."""

    def answer(call: dict[str, Any]) -> dict[str, Any] | None:
        method = call.get("method")
        if method == "eth_chainId":
            return rpc_result(call, hex(handler.chain_id))  # type: ignore[attr-defined]
        if method == "eth_blockNumber":
            return rpc_result(call, hex(handler.head))  # type: ignore[attr-defined]
        if method == "eth_syncing":
            return rpc_result(call, handler.syncing)  # type: ignore[attr-defined]
        if method == "net_peerCount":
            if handler.peers is None:  # type: ignore[attr-defined]
                return rpc_error(call, "Method not found", -32601)
            return rpc_result(call, hex(handler.peers))  # type: ignore[attr-defined]
        if method in ("txpool_status", "web3_clientVersion"):  # as geth without the namespace
            return rpc_error(call, f"the method {method} does not exist/is not available", -32601)
        if method == "eth_getBlockByNumber" and call.get("params", [None])[0] == "finalized":
            return rpc_result(call, {"number": hex(max(handler.head - 2, 0))})  # type: ignore[attr-defined]
        if other is not None:
            return other(call)
        return rpc_error(call, "Method not found", -32601)

    def handler(request: Request) -> bytes | None:
        parsed = request.json()
        if isinstance(parsed, list):
            if not handler.batches:  # type: ignore[attr-defined]
                return http_response(orjson.dumps(rpc_error({}, "batches are not supported")))
            answers = [answer(call) for call in parsed]
            if any(a is None for a in answers):
                return None
            return http_response(orjson.dumps(answers))
        reply = answer(parsed)
        return None if reply is None else http_response(orjson.dumps(reply))

    handler.chain_id = chain_id  # type: ignore[attr-defined]
    handler.head = head  # type: ignore[attr-defined]
    handler.syncing = syncing  # type: ignore[attr-defined]
    handler.peers = peers  # type: ignore[attr-defined]
    handler.batches = batches  # type: ignore[attr-defined]
    return handler


def chain_config(
    *urls: str | tuple[str, str, float], chain_id: int = 1, name: str = "eth"
) -> ChainConfig:
    """Upstreams named a, b, c... unless given as (name, url, weight)."""
    upstreams = []
    for index, item in enumerate(urls):
        if isinstance(item, tuple):
            up_name, url, weight = item
        else:
            up_name, url, weight = "abcdefgh"[index], item, 1.0
        upstreams.append(UpstreamConfig(name=up_name, url=url, weight=weight))
    return ChainConfig(name=name, chain_id=chain_id, upstreams=tuple(upstreams))


def health_config(**overrides: Any) -> HealthConfig:
    values: dict[str, Any] = {"interval": 3600.0, "timeout": 1.0, "breaker_cooldown": 30.0}
    values.update(overrides)
    return HealthConfig(**values)


def gateway_config(**overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = {"upstream_timeout": 2.0, "max_retries": 2}
    values.update(overrides)
    return GatewayConfig(**values)


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll a condition (not a sleep-as-assertion: it returns as soon as it holds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def call_body(method: str, params: list[Any] | None = None, ident: Any = 1) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params or []})


def pause(node: Anvil) -> None:
    """SIGSTOP the node and wait until the kernel has really stopped it: a request written
    right after the signal could otherwise still be answered."""
    node.pause()
    assert node.process is not None
    stat = Path(f"/proc/{node.process.pid}/stat")
    deadline = time.monotonic() + 5.0
    # Field 3 is the state, after the parenthesised command name; "T" is stopped.
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        if time.monotonic() > deadline:
            raise AssertionError("anvil did not stop")
        time.sleep(0.001)

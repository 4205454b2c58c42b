"""HttpPool against real anvil nodes, and tiny servers for what anvil will not do."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from hoodrun.devnet import Anvil, free_port
from hoodrun.upstreams import (
    HttpPool,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from hoodrun.upstreams._http import _Conn

from .support import (
    HANG,
    Answer,
    MakeAnvil,
    MakeServer,
    Request,
    call_body,
    http_response,
    pause,
    wait_until,
)

CHAIN_ID = call_body("eth_chainId")


async def test_keep_alive_reuses_one_connection(eth_anvil: Anvil) -> None:
    pool = HttpPool(eth_anvil.url, max_connections=4)
    try:
        for ident in range(10):
            status, body = await pool.post(call_body("eth_chainId", ident=ident), 2.0)
            assert status == 200
            assert orjson.loads(body) == {"jsonrpc": "2.0", "id": ident, "result": "0x1"}
        assert pool.connects == 1
        assert (pool.idle, pool.in_use) == (1, 0)
    finally:
        await pool.aclose()


async def test_many_concurrent_posts_share_a_bounded_pool(eth_anvil: Anvil) -> None:
    pool = HttpPool(eth_anvil.url, max_connections=8)
    try:
        results = await asyncio.gather(
            *(pool.post(call_body("eth_blockNumber", ident=i), 5.0) for i in range(300))
        )
        assert all(status == 200 for status, _ in results)
        assert [orjson.loads(body)["id"] for _, body in results] == list(range(300))
        assert pool.connects <= 8
        assert pool.in_use == 0
        assert pool.waiting == 0
        assert 1 <= pool.idle <= 8
    finally:
        await pool.aclose()


async def test_waiters_are_served_in_arrival_order(eth_anvil: Anvil) -> None:
    pool = HttpPool(eth_anvil.url, max_connections=1)
    order: list[int] = []

    async def one(ident: int) -> None:
        await pool.post(call_body("eth_chainId", ident=ident), 5.0)
        order.append(ident)

    try:
        await asyncio.gather(*(one(i) for i in range(20)))
        assert order == list(range(20))
        assert pool.connects == 1
    finally:
        await pool.aclose()


async def test_large_request_and_response_bodies(eth_anvil: Anvil) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "eth_chainId", "params": []} for i in range(6000)
    ]
    body = orjson.dumps(batch)
    assert len(body) > 256 * 1024  # written as head + body, not copied
    pool = HttpPool(eth_anvil.url)
    try:
        status, reply = await pool.post(body, 10.0)
        assert status == 200
        answers = orjson.loads(reply)
        assert len(answers) == 6000
        assert answers[-1] == {"jsonrpc": "2.0", "id": 5999, "result": "0x1"}
    finally:
        await pool.aclose()


async def test_extra_headers_are_sent(tiny_server: MakeServer) -> None:
    server = await tiny_server(lambda req: http_response(b"{}"))
    pool = HttpPool(server.url.rstrip("/") + "/rpc?x=1")
    try:
        await pool.post(b"{}", 2.0, headers=[(b"X-Trace", b"abc")])
        request = server.requests[0]
        assert (request.method, request.path) == ("POST", "/rpc?x=1")
        assert request.headers["x-trace"] == "abc"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["host"] == f"127.0.0.1:{server.port}"
    finally:
        await pool.aclose()


@pytest.mark.parametrize("chunks", [1, 3, 40])
async def test_chunked_response(tiny_server: MakeServer, chunks: int) -> None:
    payload = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": "0x" + "ab" * 100})
    server = await tiny_server(lambda req: http_response(payload, chunks=chunks))
    pool = HttpPool(server.url)
    try:
        for _ in range(3):
            assert await pool.post(b"{}", 2.0) == (200, payload)
        assert pool.connects == 1
    finally:
        await pool.aclose()


async def test_response_delimited_by_eof(tiny_server: MakeServer) -> None:
    server = await tiny_server(lambda req: Answer(http_response(b'{"ok":1}', length=False), True))
    pool = HttpPool(server.url)
    try:
        assert await pool.post(b"{}", 2.0) == (200, b'{"ok":1}')
        assert await pool.post(b"{}", 2.0) == (200, b'{"ok":1}')
        assert pool.connects == 2
    finally:
        await pool.aclose()


async def test_connection_close_header_is_honoured(tiny_server: MakeServer) -> None:
    # The server keeps its side open: the client must not reuse it anyway.
    server = await tiny_server(lambda req: http_response(b"{}", headers=("Connection: close",)))
    pool = HttpPool(server.url)
    try:
        for _ in range(3):
            assert await pool.post(b"{}", 2.0) == (200, b"{}")
        assert pool.connects == 3
        assert server.connections == 3
    finally:
        await pool.aclose()


async def test_idle_connection_closed_by_server_is_dropped(tiny_server: MakeServer) -> None:
    server = await tiny_server(lambda req: Answer(http_response(b"{}"), close=True))
    pool = HttpPool(server.url)
    try:
        assert await pool.post(b"{}", 2.0) == (200, b"{}")
        await wait_until(lambda: pool.idle == 0)
        assert await pool.send(b"{}", 2.0) == (200, b"{}", False)
        assert pool.connects == 2
    finally:
        await pool.aclose()


async def test_reused_connection_dying_before_an_answer_is_resent_once(
    tiny_server: MakeServer,
) -> None:
    # The first connection answers its first request and drops the second one unanswered,
    # as a server closing an idle keep-alive connection at the wrong moment would.
    def handler(req: Request) -> bytes | None:
        if req.conn == 0 and req.seq == 1:
            return None
        return http_response(b'{"n":%d}' % len(server.requests))

    server = await tiny_server(handler)
    pool = HttpPool(server.url)
    try:
        assert await pool.post(b"{}", 2.0) == (200, b'{"n":1}')
        status, body, resent = await pool.send(b"{}", 2.0)
        assert (status, body, resent) == (200, b'{"n":3}', True)
        assert [(r.conn, r.seq) for r in server.requests] == [(0, 0), (0, 1), (1, 0)]
    finally:
        await pool.aclose()


async def test_resend_happens_only_once(tiny_server: MakeServer) -> None:
    # Only the very first request is answered; every later one is dropped unanswered.
    server = await tiny_server(
        lambda req: http_response(b"{}") if req.conn == 0 == req.seq else None
    )
    pool = HttpPool(server.url)
    try:
        await pool.post(b"{}", 2.0)
        with pytest.raises(UpstreamDisconnected) as info:
            await pool.post(b"{}", 2.0)
        assert info.value.maybe_delivered
        assert len(server.requests) == 3  # first, then the drop, then one resend
    finally:
        await pool.aclose()


async def test_fresh_connection_dropped_after_the_request(tiny_server: MakeServer) -> None:
    server = await tiny_server(lambda req: None)
    pool = HttpPool(server.url)
    try:
        with pytest.raises(UpstreamDisconnected) as info:
            await pool.post(b"{}", 2.0)
        assert info.value.maybe_delivered
        assert len(server.requests) == 1  # not resent: the connection was new
        assert (pool.idle, pool.in_use) == (0, 0)
    finally:
        await pool.aclose()


async def test_garbled_response(tiny_server: MakeServer) -> None:
    server = await tiny_server(lambda req: b"SPLAT 42 nonsense\r\n\r\n")
    pool = HttpPool(server.url)
    try:
        with pytest.raises(UpstreamProtocolError) as info:
            await pool.post(b"{}", 2.0)
        assert info.value.maybe_delivered
        assert (pool.idle, pool.in_use) == (0, 0)
    finally:
        await pool.aclose()


async def test_timeout_on_a_paused_node_closes_the_connection(anvil_factory: MakeAnvil) -> None:
    node = anvil_factory(chain_id=1)
    pool = HttpPool(node.url)
    try:
        await pool.post(CHAIN_ID, 2.0)
        pause(node)
        with pytest.raises(UpstreamTimeout) as info:
            await pool.post(CHAIN_ID, 0.3)
        assert info.value.maybe_delivered
        assert (pool.idle, pool.in_use) == (0, 0)  # never reused with a response outstanding
        node.resume()
        assert await pool.post(CHAIN_ID, 2.0) == (200, b'{"jsonrpc":"2.0","id":1,"result":"0x1"}')
        assert pool.connects == 2
    finally:
        node.resume()
        await pool.aclose()


async def test_each_call_keeps_its_own_deadline(tiny_server: MakeServer) -> None:
    gate = asyncio.Event()

    async def handler(req: Request) -> object:
        if req.body == b"hang":
            return HANG
        await gate.wait()
        return http_response(b"{}")

    server = await tiny_server(handler)
    pool = HttpPool(server.url)
    try:
        patient = asyncio.create_task(pool.post(b"hang", 30.0))
        late = asyncio.create_task(pool.post(b"late", 30.0))
        await wait_until(lambda: len(server.requests) == 2)
        # A shorter deadline after longer ones: it fires first, and only for its own call.
        with pytest.raises(UpstreamTimeout):
            await pool.post(b"hang", 0.2)
        assert not patient.done() and not late.done()
        gate.set()
        assert await late == (200, b"{}")
        assert not patient.done()
        patient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await patient
    finally:
        await pool.aclose()


async def test_connect_refused_after_the_node_stops(anvil_factory: MakeAnvil) -> None:
    node = anvil_factory(chain_id=1)
    warm = HttpPool(node.url)
    cold = HttpPool(node.url)
    try:
        await warm.post(CHAIN_ID, 2.0)
        node.stop()
        with pytest.raises(UpstreamConnectError):
            await warm.post(CHAIN_ID, 2.0)
        with pytest.raises(UpstreamConnectError) as info:
            await cold.post(CHAIN_ID, 2.0)
        assert not info.value.maybe_delivered
        assert "cannot connect" in str(info.value)
    finally:
        await warm.aclose()
        await cold.aclose()


async def test_nothing_listening() -> None:
    pool = HttpPool(f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(UpstreamConnectError) as info:
        await pool.post(CHAIN_ID, 2.0)
    assert not info.value.maybe_delivered
    assert (pool.idle, pool.in_use) == (0, 0)
    await pool.aclose()


async def test_waiting_for_a_connection_times_out_undelivered(tiny_server: MakeServer) -> None:
    server = await tiny_server(lambda req: HANG)
    pool = HttpPool(server.url, max_connections=1)
    try:
        first = asyncio.create_task(pool.post(b"{}", 30.0))
        await wait_until(lambda: len(server.requests) == 1)
        with pytest.raises(UpstreamTimeout) as info:
            await pool.post(b"{}", 0.2)
        assert not info.value.maybe_delivered
        assert pool.waiting == 0
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (pool.idle, pool.in_use) == (0, 0)
    finally:
        await pool.aclose()


async def test_cancelled_call_aborts_its_connection(tiny_server: MakeServer) -> None:
    answers = iter([HANG])
    server = await tiny_server(lambda req: next(answers, http_response(b"{}")))
    pool = HttpPool(server.url, max_connections=1)
    try:
        task = asyncio.create_task(pool.post(b"{}", 30.0))
        await wait_until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (pool.idle, pool.in_use) == (0, 0)
        # The slot is free again and the next request gets a new connection.
        assert await pool.post(b"{}", 2.0) == (200, b"{}")
        assert pool.connects == 2
    finally:
        await pool.aclose()


async def test_cancelled_waiters_pass_their_turn_on(tiny_server: MakeServer) -> None:
    gate = asyncio.Event()

    async def handler(req: Request) -> bytes:
        if req.seq == 0:
            await gate.wait()
        return http_response(b"{}")

    server = await tiny_server(handler)
    pool = HttpPool(server.url, max_connections=1)
    try:
        tasks = [asyncio.create_task(pool.post(b"{}", 5.0)) for _ in range(5)]
        await wait_until(lambda: pool.waiting == 4)
        tasks[1].cancel()
        tasks[3].cancel()
        gate.set()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert [isinstance(r, asyncio.CancelledError) for r in done] == [0, 1, 0, 1, 0]
        assert pool.waiting == 0 and pool.in_use == 0 and pool.connects == 1
        assert len(server.requests) == 3
    finally:
        await pool.aclose()


async def test_connect_cancelled_once_connected_frees_its_slot_once(
    tiny_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deadline (or the caller) cancelling the connect in the loop iteration where the socket
    # got connected: asyncio closes the new transport, whose connection_lost frees the slot.
    server = await tiny_server(lambda req: http_response(b"{}"))
    pool = HttpPool(server.url, max_connections=1)
    made = _Conn.connection_made
    task: asyncio.Task[tuple[int, bytes]] | None = None
    conns: list[_Conn] = []

    def made_then_cancelled(conn: _Conn, transport: asyncio.BaseTransport) -> None:
        made(conn, transport)
        conns.append(conn)
        assert task is not None
        task.cancel()

    try:
        monkeypatch.setattr(_Conn, "connection_made", made_then_cancelled)
        task = asyncio.create_task(pool.post(b"{}", 5.0))
        with pytest.raises(asyncio.CancelledError):
            await task
        monkeypatch.undo()
        assert len(conns) == 1
        await wait_until(lambda: not conns[0].reusable)  # its connection_lost has run
        assert (pool._total, len(pool._conns), pool.waiting) == (0, 0, 0)
        # The slot is usable again, and only once.
        assert await pool.post(b"{}", 2.0) == (200, b"{}")
        assert (pool._total, len(pool._conns), pool.idle) == (1, 1, 1)
    finally:
        await pool.aclose()


async def test_chaos_keeps_the_books_straight(tiny_server: MakeServer) -> None:
    """Answers, closes, drops, garbage and hangs at random: every call ends, and no connection
    slot leaks."""
    rng = random.Random(7)

    def handler(req: Request) -> object:
        roll = rng.random()
        if roll < 0.70:
            return http_response(b"{}")
        if roll < 0.80:
            return Answer(http_response(b"{}"), close=True)
        if roll < 0.90:
            return None
        if roll < 0.95:
            return b"HTTP/1.1 ??? \x00\r\n\r\n"
        return HANG

    server = await tiny_server(handler)
    pool = HttpPool(server.url, max_connections=4)
    try:
        results: list[object] = []
        for _ in range(6):
            results += await asyncio.gather(
                *(pool.post(b"{}", 0.25) for _ in range(50)), return_exceptions=True
            )
        assert all(r == (200, b"{}") or isinstance(r, UpstreamError) for r in results)
        assert sum(r == (200, b"{}") for r in results) > 100
        await wait_until(lambda: pool.in_use == 0)
        assert pool.waiting == 0
        assert pool._total == len(pool._conns) <= 4
    finally:
        await pool.aclose()


async def test_closed_pool_refuses_use(eth_anvil: Anvil) -> None:
    pool = HttpPool(eth_anvil.url)
    await pool.post(CHAIN_ID, 2.0)
    await pool.aclose()
    assert pool.closed and pool.idle == 0
    with pytest.raises(UpstreamConnectError, match="closed"):
        await pool.post(CHAIN_ID, 2.0)


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        HttpPool("https://example.org/")

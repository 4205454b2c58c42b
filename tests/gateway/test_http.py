"""The gateway's HTTP/1.1 server on a real socket: keep-alive, pipelining, chunked bodies,
Expect: 100-continue, size caps, bad HTTP and graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hoodrun.gateway.http import HttpServer, Request, Response


async def _echo(request: Request) -> Response:
    if request.path == "/slow":
        await asyncio.sleep(0.3)
    return Response(
        200, b"%s %s %s" % (request.method.encode(), request.path.encode(), request.body)
    )


def _fallback(status: int, message: bytes) -> Response:
    return Response(status, b"fallback:" + message)


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, int]]:
    srv = HttpServer(_echo, _fallback, max_body=1024)
    port = await srv.serve("127.0.0.1", 0)
    yield srv, port
    await srv.shutdown(1)


async def _exchange(port: int, raw: bytes, until: bytes = b"", read_all: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            if not chunk:
                break
            data += chunk
            if until and data.count(b"HTTP/1.1 2") >= until.count(b"|") + 1 and not read_all:
                break
    finally:
        writer.close()
    return data


async def test_pipelined_requests_are_answered_in_order(server: tuple[HttpServer, int]) -> None:
    _, port = server
    raw = (
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"
        b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nB"
        b"POST /last HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nC"
    )
    data = await _exchange(port, raw, read_all=True)
    assert data.index(b"POST /slow A") < data.index(b"POST /fast B") < data.index(b"POST /last C")
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert b"connection: close" in data


async def test_chunked_body_and_expect_continue(server: tuple[HttpServer, int]) -> None:
    _, port = server
    raw = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    data = await _exchange(port, raw, read_all=True)
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert data.endswith(b"POST /c abcde")


async def test_oversized_bodies_get_413_before_being_read(server: tuple[HttpServer, int]) -> None:
    _, port = server
    declared = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
    data = await _exchange(port, declared, read_all=True)
    assert data.startswith(b"HTTP/1.1 413") and b"fallback:body too large" in data
    chunked = (
        b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"400\r\n"
        + b"x" * 1024
        + b"\r\n"
        + b"10\r\n"
        + b"y" * 16
        + b"\r\n0\r\n\r\n"
    )
    data = await _exchange(port, chunked, read_all=True)
    assert data.startswith(b"HTTP/1.1 413")


async def test_malformed_http_gets_400_and_close(server: tuple[HttpServer, int]) -> None:
    _, port = server
    data = await _exchange(port, b"THIS IS NOT HTTP\r\n\r\n", read_all=True)
    assert data.startswith(b"HTTP/1.1 400") and b"connection: close" in data


async def test_keep_alive_reuses_the_connection(server: tuple[HttpServer, int]) -> None:
    srv, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(3):
        writer.write(b"POST /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % n)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert (await reader.readexactly(length)).endswith(b"%d" % n)
    assert len(srv.connections) == 1
    writer.close()


async def test_graceful_shutdown_finishes_requests_in_flight() -> None:
    srv = HttpServer(_echo, _fallback, max_body=1024)
    port = await srv.serve("127.0.0.1", 0)
    pending = asyncio.create_task(
        _exchange(
            port, b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nZ", read_all=True
        )
    )
    while srv.inflight == 0:
        await asyncio.sleep(0.01)
    await srv.shutdown(5)
    data = await pending
    assert b"POST /slow Z" in data and b"connection: close" in data
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def _raw(
    port: int, chunks: list[bytes], half_close: bool = False, wait: float = 0.0
) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        if wait:
            await asyncio.sleep(wait)
    if half_close:
        writer.write_eof()
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 3):
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


async def test_head_answers_carry_no_body(server: tuple[HttpServer, int]) -> None:
    _, port = server
    data = await _raw(
        port,
        [
            b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nQ"
        ],
    )
    first, _, rest = data.partition(b"\r\n\r\n")
    assert b"content-length: 8" in first  # the length of b"HEAD /h ", which is not sent
    assert rest.startswith(b"HTTP/1.1 200 OK") and rest.endswith(b"POST /p Q")


async def test_a_bad_request_after_a_good_one_still_gets_both_answers(
    server: tuple[HttpServer, int],
) -> None:
    _, port = server
    data = await _raw(
        port,
        [b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA", b"GARBAGE\r\n\r\n"],
        wait=0.05,
    )
    assert data.startswith(b"HTTP/1.1 200 OK") and b"POST /slow A" in data
    assert b"HTTP/1.1 400" in data and data.rstrip().endswith(
        b"fallback:Bad Request: malformed HTTP"
    )


async def test_half_closed_clients_get_their_answer(server: tuple[HttpServer, int]) -> None:
    _, port = server
    data = await _raw(
        port, [b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nH"], half_close=True
    )
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"POST /slow H")


async def test_header_and_url_caps(server: tuple[HttpServer, int]) -> None:
    _, port = server
    huge = (
        b"POST /h HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"y" * 1000) for i in range(80))
        + b"\r\n"
    )
    assert (await _raw(port, [huge])).startswith(b"HTTP/1.1 431")
    long_url = b"POST /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await _raw(port, [long_url])).startswith(b"HTTP/1.1 414")


async def test_expect_continue_behind_a_busy_request(server: tuple[HttpServer, int]) -> None:
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA")
    writer.write(
        b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n"
    )
    data = b""
    while b"100 Continue" not in data:
        data += await asyncio.wait_for(reader.read(65536), 3)
    assert data.index(b"POST /slow A") < data.index(b"100 Continue")
    writer.write(b"B")
    while not data.endswith(b"POST /next B"):
        data += await asyncio.wait_for(reader.read(65536), 3)
    writer.close()

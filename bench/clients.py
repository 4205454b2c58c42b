"""CPU cost and throughput of upstream HTTP clients against a real anvil.

Each client POSTs ``eth_chainId`` from ``--concurrency`` tasks for ``--seconds`` (after a short
warm-up) in its own event loop and prints one line: requests/s, µs of this process's CPU per
request (the client is the whole process: anvil runs apart), and p50/p99 latency. The figures
only mean something next to each other, in the same run on the same machine; the last column is
the CPU cost relative to HttpPool's (uvloop).

    .venv/bin/python bench/clients.py [--seconds 4] [--concurrency 32] [--url http://...]

The first line is the driver alone (a post without I/O): its CPU is included in every other
line. It is why ``hoodrun.upstreams.HttpPool`` exists: the gateway's whole budget is ~20-40 µs
of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from hoodrun.devnet import Anvil, ensure_anvil
from hoodrun.upstreams import HttpPool

BODY = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'
EXPECTED = b'{"jsonrpc":"2.0","id":1,"result":"0x1"}'
Post = Callable[[], Awaitable[bytes]]


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    cpu: float
    latencies: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / max(1, self.requests) * 1e6

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0 if ordered else 0.0


async def drive(name: str, post: Post, concurrency: int, seconds: float, warmup: float) -> Result:
    """Run ``post`` from ``concurrency`` tasks: ``warmup`` seconds unmeasured, then measured."""
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.perf_counter() + warmup

    async def worker() -> None:
        nonlocal errors
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            try:
                reply = await post()
                if reply != EXPECTED:
                    errors += 1
            except Exception:  # noqa: BLE001 (any client's failure is counted, not raised)
                errors += 1
            if measuring:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    measuring = True
    started, cpu_started = time.perf_counter(), time.process_time()
    stop_at = started + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Result(name, len(latencies), elapsed, cpu, latencies, errors)


async def bench_driver(url: str, concurrency: int, seconds: float, warmup: float) -> Result:
    """The reference: the driver alone, with a post that does no I/O (subtract it)."""
    loop = asyncio.get_running_loop()

    async def post() -> bytes:
        fut: asyncio.Future[bytes] = loop.create_future()
        loop.call_soon(fut.set_result, EXPECTED)
        return await fut

    return await drive("driver only", post, concurrency, seconds, warmup)


async def bench_httppool(url: str, concurrency: int, seconds: float, warmup: float) -> Result:
    pool = HttpPool(url, max_connections=64)

    async def post() -> bytes:
        _, body = await pool.post(BODY, 10.0)
        return body

    try:
        return await drive("HttpPool", post, concurrency, seconds, warmup)
    finally:
        await pool.aclose()


async def bench_aiohttp(url: str, concurrency: int, seconds: float, warmup: float) -> Result:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=64)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post() -> bytes:
            async with session.post(url, data=BODY, headers=headers) as resp:
                return await resp.read()

        return await drive("aiohttp", post, concurrency, seconds, warmup)


async def bench_httpx(url: str, concurrency: int, seconds: float, warmup: float) -> Result:
    import httpx

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def post() -> bytes:
            resp = await client.post(url, content=BODY, headers=headers)
            return resp.content

        return await drive("httpx", post, concurrency, seconds, warmup)


Bench = Callable[[str, int, float, float], Coroutine[Any, Any, Result]]


def run(bench: Bench, loop_name: str, url: str, args: argparse.Namespace, seconds: float) -> Result:
    coro = bench(url, args.concurrency, seconds, args.warmup)
    result = uvloop.run(coro) if loop_name == "uvloop" else asyncio.run(coro)
    result.name = f"{result.name} ({loop_name})"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per client")
    parser.add_argument("--httpx-seconds", type=float, default=1.5, help="httpx is slow: less")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--url", help="an existing node; default: start an anvil")
    args = parser.parse_args()

    node: Anvil | None = None
    url = args.url
    if url is None:
        node = Anvil(ensure_anvil(Path(__file__).resolve().parents[1]), chain_id=1).start()
        url = node.url
    cases: list[tuple[Bench, str, float]] = [
        (bench_driver, "uvloop", 1.0),
        (bench_httppool, "uvloop", args.seconds),
        (bench_aiohttp, "uvloop", args.seconds),
        (bench_httpx, "uvloop", args.httpx_seconds),
        (bench_httppool, "asyncio", args.seconds),
        (bench_aiohttp, "asyncio", args.seconds),
    ]
    try:
        print(f"upstream clients -> {url}, c{args.concurrency}, eth_chainId")
        results = [run(bench, loop_name, url, args, seconds) for bench, loop_name, seconds in cases]
    finally:
        if node is not None:
            node.stop()
    reference = results[1].cpu_us
    for r in results:
        print(
            f"{r.name:<20} {r.rps:>9,.0f} req/s  {r.cpu_us:>7.1f} µs CPU/req  "
            f"p50 {r.quantile(0.50):6.2f} ms  p99 {r.quantile(0.99):6.2f} ms  "
            f"errors {r.errors}  cpu x{r.cpu_us / reference:.1f}"
        )


if __name__ == "__main__":
    main()

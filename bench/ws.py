"""WebSocket notification fan-out: one gateway process, many subscribers of newHeads.

    .venv/bin/python bench/ws.py [--subscribers 1000] [--blocks 20]

Starts one anvil and ``hoodrun gateway``, opens ``--subscribers`` WebSockets to the gateway and
as many straight to anvil (the reference, in the same run), subscribes each to ``newHeads``, then
mines ``--blocks`` blocks one at a time, waiting until every subscriber has the head before the
next. Prints, per target, the time from the mining call to the last subscriber's delivery (p50,
p99 over the blocks), notifications per second, and the gateway's CPU per notification. The
gateway holds one upstream subscription for all of them (``SubscriptionHub``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from gateway import ROOT, _wait_http, start_gateway, stop
from websockets.asyncio.client import connect

from hoodrun.devnet import Anvil, ensure_anvil

BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})


def _mine(url: str) -> None:
    req = urllib.request.Request(  # noqa: S310 (127.0.0.1)
        url,
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "evm_mine", "params": []}).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=5).read()  # noqa: S310 (127.0.0.1)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fan_out(name: str, url: str, anvil_url: str, subscribers: int, blocks: int,
                  pid: int | None) -> None:  # fmt: skip
    sockets = []
    for _ in range(subscribers):
        ws = await connect(url, max_size=None)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                  "params": ["newHeads"]}))  # fmt: skip
        answer = json.loads(await ws.recv())
        if "result" not in answer:
            raise SystemExit(f"{name}: subscription refused: {answer}")
        sockets.append(ws)
    spans = []
    cpu = _cpu(pid) if pid else 0.0
    started = time.perf_counter()
    for _ in range(blocks):
        mined = time.perf_counter()
        await asyncio.to_thread(_mine, anvil_url)
        await asyncio.gather(*(asyncio.wait_for(ws.recv(), 30) for ws in sockets))
        spans.append(time.perf_counter() - mined)
    elapsed = time.perf_counter() - started
    cpu = (_cpu(pid) - cpu) if pid else 0.0
    for ws in sockets:
        await ws.close()
    spans.sort()
    p99 = spans[min(len(spans) - 1, int(len(spans) * 0.99))]
    rate = subscribers * blocks / elapsed
    line = (f"{name:8s} {subscribers:>5} subscribers  all delivered p50 "
            f"{statistics.median(spans) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  "
            f"{rate:>9,.0f} notifications/s")  # fmt: skip
    if pid:
        line += f"  gateway {cpu * 1e6 / (subscribers * blocks):.1f} µs CPU/notification"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-") as tmpdir:
        tmp = Path(tmpdir)
        anvil = Anvil(ensure_anvil(ROOT), chain_id=1).start()
        limit = f"ws: {{max_connections_per_key: {args.subscribers + 10}}}"
        procs, port, key = start_gateway(tmp, anvil, False, 1, telemetry=True, extra=limit)
        try:
            _wait_http(f"http://127.0.0.1:{port}/eth/v1/{key}", BODY.encode())
            gateway_ws = f"ws://127.0.0.1:{port}/eth/v1/{key}"
            direct_ws = anvil.url.replace("http://", "ws://")
            print(f"# newHeads fan-out, {args.blocks} blocks")
            for name, url, pid in (
                ("direct", direct_ws, None),
                ("gateway", gateway_ws, procs[0].pid),
            ):
                asyncio.run(fan_out(name, url, anvil.url, args.subscribers, args.blocks, pid))
        finally:
            stop(procs, anvil)


if __name__ == "__main__":
    main()

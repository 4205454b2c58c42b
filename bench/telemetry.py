"""Telemetry pipeline: rows/s into chDB from the writer, and the gateway with telemetry on vs off.

    .venv/bin/python bench/telemetry.py [--rows 300000] [--duration 8]

1. The writer: ``--rows`` request records (single calls, with one batch in 50) are emitted into a
   ``TelemetryWriter`` on a ``StoreTarget`` (chDB in a temporary directory), then flushed. Prints
   rows/s of wall time and rows per CPU-second of the whole process (chDB's threads included),
   which is the "per core" figure. Goal: >= 200k rows/s per core.
2. The gateway: two ``hoodrun gateway`` processes on one anvil, one with telemetry (chDB) and one
   without, loaded in turn with ``wrk -t1 -c32`` (off, on, off, on). Goal: on >= 0.9 x off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from gateway import ROOT, _wait_http, post_script, start_gateway, stop, wrk

from hoodrun.config import RetentionConfig
from hoodrun.devnet import Anvil, ensure_anvil
from hoodrun.telemetry.pipeline import StoreTarget, TelemetryWriter
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.spool import Spool
from hoodrun.telemetry.store import ChdbStore
from hoodrun.telemetry.units import ComputeUnits


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _record(i: int, now: float) -> RequestRecord:
    methods = ("eth_call", "eth_blockNumber", "eth_getLogs", "eth_chainId")
    batch = i % 50 == 0
    return RequestRecord(
        ts=now + i / 10_000, chain="eth", method="batch" if batch else methods[i % 4],
        methods=methods if batch else (methods[i % 4],), calls=4 if batch else 1,
        status=200, reason=None, key_id=f"key_{i % 100:04d}", org_id=f"org_{i % 10}",
        project_id=f"prj_{i % 20}", client_ip=f"10.0.{i % 256}.{i % 250}",
        latency=0.001 + (i % 100) / 100_000, upstream="eth-a", upstream_latency=0.0008,
        attempts=1, bytes_in=80, bytes_out=120, request_id=f"bench{i:012x}",
        call_results=((0, None),) * 4 if batch else None,
    )  # fmt: skip


async def writer_bench(rows: int, tmp: Path) -> None:
    store = ChdbStore(tmp / "analytics", "bench")
    await store.setup(RetentionConfig())
    writer = TelemetryWriter(
        StoreTarget(store), RowBuilder(ComputeUnits()), Spool.claim(tmp / "spool"),
        queue_size=rows + 1, batch_size=50_000, flush_interval=60,
    )  # fmt: skip
    now = time.time()
    # Records are made and dropped one by one, as the gateway does; making them is the gateway's
    # cost, measured apart and taken out of the writer's.
    making = _cpu()
    for i in range(rows):
        _record(i, now)
    making = _cpu() - making
    wall, cpu = time.perf_counter(), _cpu()
    for i in range(rows):
        writer.emit(_record(i, now))
        if i % 25_000 == 24_999:  # a flush interval's worth at ~25k requests/s
            await writer.flush()
    await writer.flush()
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu - making
    written = writer.stats.written
    counted = (await store.query("SELECT count() AS n FROM {db}.requests_raw FINAL"))[0]["n"]
    await writer.aclose()
    await store.aclose()
    print(f"# writer -> chDB, {rows:,} records ({written:,} rows, {counted:,} counted)")
    print(f"writer  {written / wall:>10,.0f} rows/s wall (making records included)")
    print(f"writer  {written / cpu:>10,.0f} rows per CPU-s (queue, rows, chDB insert and merges)")
    print(f"writer rows per core: {written / cpu / 1000:.0f}k   (goal >= 200k)")


def gateway_bench(duration: float) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-") as tmpdir:
        tmp = Path(tmpdir)
        script = post_script(tmp, body)
        anvil = Anvil(ensure_anvil(ROOT), chain_id=1).start()
        off, off_port, off_key = start_gateway(tmp, anvil, False, 1, telemetry=False)
        on, on_port, on_key = start_gateway(tmp, anvil, False, 1, telemetry=True)
        procs: list[subprocess.Popen[bytes]] = [*off, *on]
        try:
            urls = {
                "off": f"http://127.0.0.1:{off_port}/eth/v1/{off_key}",
                "on": f"http://127.0.0.1:{on_port}/eth/v1/{on_key}",
            }
            for url in urls.values():
                _wait_http(url, body.encode())
                wrk(url, 32, 2, script, "warm-up")
            results = [
                wrk(urls[name], 32, duration, script, f"tele-{name}")
                for name in ("off", "on", "off", "on")
            ]
        finally:
            stop(procs, anvil)
    print("# gateway, eth_chainId, c32, telemetry off vs on (chDB)")
    for result in results:
        print(result.line())
    mean = {
        name: sum(r.rps for r in results if r.name == f"tele-{name}") / 2 for name in ("off", "on")
    }
    print(f"gateway telemetry on / off: {mean['on'] / mean['off']:.2f}   (goal >= 0.90)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per gateway run")
    parser.add_argument("--skip-gateway", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-") as tmpdir:
        asyncio.run(writer_bench(args.rows, Path(tmpdir)))
    if not args.skip_gateway:
        gateway_bench(args.duration)


if __name__ == "__main__":
    main()

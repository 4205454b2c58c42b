"""Usage-event ingest: CloudEvents per second through ``POST /api/v1/events`` on one process.

    .venv/bin/python bench/events.py [--events 400000] [--batch 1000] [--connections 4]

Every case posts the same pre-built bodies (JSON arrays of ``--batch`` events, every id unique,
so each event is really written: none is a duplicate) from ``--connections`` aiohttp connections
in this process, to a server in a process of its own:

1. ``empty endpoint``: a FastAPI route that reads the body and answers 204 (uvicorn, uvloop,
   httptools as the api role runs): what HTTP and the framework alone allow.
2. ``hoodrun``: the api role's app (``create_api_app`` with a ``MeterService`` on chDB): parse,
   check every event, de-duplicate, one chDB insert per request. Then a COUNT meter's query
   through the API must count every event once.

And in a process of its own, without HTTP, on the same bodies:

3. ``EventLog.ingest``: parse, check, build the Arrow table, insert (``--connections``
   concurrent callers, as the requests are).
4. ``raw chDB insert``: only the insert of the same rows, one insert per body, tables built
   beforehand (at most 200 bodies).

Each line: events/s of wall time and the server's CPU µs per event. Goal: hoodrun >= 20k/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"  # noqa: S105 (a throwaway server's token)
MODELS = ("gpt", "llama", "mistral", "claude")


def bodies(events: int, batch: int, run: str) -> list[bytes]:
    """``events`` events in JSON arrays of ``batch``; times over the last hour."""
    now = time.time()
    out = []
    for start in range(0, events, batch):
        items = []
        for i in range(start, min(start + batch, events)):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 3600 + i % 3600))
            items.append(
                {
                    "specversion": "1.0",
                    "id": f"{run}-{i:09d}",
                    "source": "bench",
                    "type": "llm",
                    "subject": f"org_{i % 50}",
                    "time": f"{stamp}.{i % 1000:03d}Z",
                    "data": {"tokens": i % 997, "model": MODELS[i % 4], "region": "eu"},
                }
            )
        out.append(orjson.dumps(items))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the servers (in their own process) ----------------------------------------------------------


def serve(mode: str, port: int, data: Path) -> None:
    import uvicorn

    if mode == "empty":
        app = FastAPI()

        @app.post("/api/v1/events")
        async def events(request: Request) -> Response:
            await request.body()
            return Response(status_code=204)

    else:
        from typing import cast

        from hoodrun.api.app import create_api_app
        from hoodrun.config import Config, RetentionConfig
        from hoodrun.keys.service import KeyService
        from hoodrun.metering.config import MeterConfig
        from hoodrun.metering.meters import MeterService
        from hoodrun.telemetry.store import ChdbStore

        store = ChdbStore(data / "analytics", "bench")
        asyncio.run(store.setup(RetentionConfig()))
        meter = MeterConfig(slug="llm_events", event_type="llm", aggregation="COUNT")
        service = MeterService(store, [meter])
        app = create_api_app(Config(), cast(KeyService, None), token=TOKEN, meters=service)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def direct(data: Path, events: int, batch: int, connections: int) -> None:
    """EventLog.ingest and the raw insert of the same rows, without HTTP; prints JSON."""
    from hoodrun.config import RetentionConfig
    from hoodrun.metering.events import EventLog, events_table, parse_events
    from hoodrun.telemetry.store import ChdbStore

    async def main() -> dict[str, float]:
        store = ChdbStore(data / "analytics", "bench")
        await store.setup(RetentionConfig())
        log = EventLog(store)
        await log.setup()
        figures = {}
        queue = iter(bodies(events, batch, "direct"))

        async def worker() -> None:
            for body in queue:
                await log.ingest(orjson.loads(body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        figures["ingest"] = events / (time.perf_counter() - started)
        # The same rows again under other ids, as tables built beforehand: the insert alone,
        # one per body as the API makes without concurrent requests (at most 200 of them).
        now = log.now()
        tables = [
            events_table(parse_events(orjson.loads(body), now), now)
            for body in bodies(min(events, 200 * batch), batch, "raw")
        ]
        started = time.perf_counter()
        for table in tables:
            await store.insert_into("events", table)
        figures["insert"] = sum(t.num_rows for t in tables) / (time.perf_counter() - started)
        counted = await store.query("SELECT count() AS n FROM {db}.events FINAL")
        figures["counted"] = int(counted[0]["n"])
        await store.aclose()
        return figures

    print(json.dumps(asyncio.run(main())))


# --- the load (this process) ---------------------------------------------------------------------


async def load(url: str, sent: list[bytes], connections: int) -> float:
    import aiohttp

    queue = iter(sent)
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/cloudevents-batch+json",
    }

    async def worker(session: aiohttp.ClientSession) -> None:
        for body in queue:
            async with session.post(url, data=body, headers=headers) as answer:
                if answer.status != 204:
                    raise RuntimeError(f"{answer.status}: {await answer.text()}")

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        return time.perf_counter() - started


def start(mode: str, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, __file__, "--serve", mode, "--port", str(port), "--data", str(data)]
    process = subprocess.Popen(args, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {mode} server did not start")


def http_case(mode: str, data: Path, args: argparse.Namespace, run: str) -> dict[str, Any]:
    process, base = start(mode, data)
    try:
        url = f"{base}/api/v1/events"
        warm = bodies(args.batch * 5, args.batch, f"{run}-warm")
        asyncio.run(load(url, warm, args.connections))
        sent = bodies(args.events, args.batch, run)
        cpu = cpu_seconds(process.pid)
        wall = asyncio.run(load(url, sent, args.connections))
        cpu = cpu_seconds(process.pid) - cpu
        result: dict[str, Any] = {
            "rate": args.events / wall,
            "cpu_us": cpu / args.events * 1e6,
        }
        if mode == "hoodrun":
            import httpx

            answer = httpx.get(
                f"{base}/api/v1/meters/llm_events/query",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=60,
            ).json()
            result["counted"] = int(sum(row["value"] for row in answer["data"]))
            result["expected"] = args.events + len(warm) * args.batch
        return result
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--serve", choices=("empty", "hoodrun"))
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data)
        return
    if args.direct:
        direct(args.data, args.events, args.batch, args.connections)
        return

    print(
        f"# {args.events:,} events in batches of {args.batch:,} "
        f"({len(bodies(args.batch, args.batch, 'size')[0]) // args.batch} bytes an event), "
        f"{args.connections} connections"
    )
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-events-") as tmp:
        empty = http_case("empty", Path(tmp) / "empty", args, "empty")
        print(
            f"{'empty endpoint (FastAPI reads the body)':<42}{empty['rate']:>10,.0f} events/s"
            f"   {empty['cpu_us']:6.2f} µs CPU/event"
        )
        ours = http_case("hoodrun", Path(tmp) / "hoodrun", args, "hoodrun")
        print(
            f"{'hoodrun POST /api/v1/events':<42}{ours['rate']:>10,.0f} events/s"
            f"   {ours['cpu_us']:6.2f} µs CPU/event   (counted {ours['counted']:,} of "
            f"{ours['expected']:,})"
        )
        done = subprocess.run(
            [sys.executable, __file__, "--direct", "--data", str(Path(tmp) / "direct"),
             "--events", str(args.events), "--batch", str(args.batch),
             "--connections", str(args.connections)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{'EventLog.ingest, no HTTP':<42}{figures['ingest']:>10,.0f} events/s")
        print(f"{'raw chDB insert of the same rows':<42}{figures['insert']:>10,.0f} events/s")
        print(
            f"# hoodrun = {ours['rate'] / figures['ingest']:.2f}x EventLog.ingest, "
            f"{ours['rate'] / figures['insert']:.2f}x the raw insert"
        )
        print(
            f"# goal: hoodrun >= 20,000 events/s: {'met' if ours['rate'] >= 20_000 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()

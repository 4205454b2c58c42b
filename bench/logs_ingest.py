"""Log ingest: lines per second through ``POST /logs/v1`` on one api process.

    .venv/bin/python bench/logs_ingest.py [--lines 300000] [--batch 1000] [--threads 4]

The server runs in a process of its own; this one sends. Cases:

1. ``empty endpoint``: a FastAPI route (uvicorn, uvloop, httptools, as the api role runs) that
   reads the body, decodes it (MessagePack or JSON) and answers 202: what HTTP, the framework and
   the decoding alone allow.
2. ``hoodrun msgpack`` / ``hoodrun json``: the api role (``run_platform(gateway=False)``, chDB in a
   temporary directory, a demo project's key), pre-built bodies of ``--batch`` lines (each with
   its own id, as the SDK sends them) posted with httpx from ``--threads`` threads, one
   keep-alive connection each. Then the stored lines are counted (FINAL): every one exactly once.
3. ``hoodrun SDK``: ``HoodRunLogHandler`` (MessagePack, batches of ``--batch``) fed by
   ``--threads`` threads calling ``logging``; from the first record to ``flush()`` returning.
   ``emit`` alone (its cost in the application's thread) is measured first, against a handler
   whose sender is blocked.

And, in a process of its own without HTTP (``direct``): decoding, the ingestor's ``parse_logs``
and the Arrow table of the same bodies, and the raw chDB insert of those tables (one per body).

The platform freezes what start-up allocated and raises the collector's gen-0 threshold to 50,000
(``hoodrun.platform._settle_gc``); ``BENCH_GC=default`` puts Python's defaults back (threshold 700,
nothing frozen) to compare; ``BENCH_PROFILE=file`` profiles the api process's event
loop thread (``cProfile``; read it with pstats).

Each line: lines/s of wall time, and the server's CPU µs per line. Goal: >= 50k lines/s batched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped,unused-ignore]
import orjson
from fastapi import FastAPI, Request, Response

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token"  # noqa: S105 (a throwaway server's token)
KINDS = ("msgpack", "json")
LEVELS = ("info",) * 7 + ("debug", "warn", "error")


def lines(count: int, run: str) -> list[dict[str, Any]]:
    """``count`` lines as the SDK makes them: an id, a time, a level, attributes."""
    now = time.time()
    out = []
    for i in range(count):
        level = LEVELS[i % len(LEVELS)]
        message = (
            f"payment {i} failed for order {i * 7}"
            if level == "error"
            else f"GET /api/orders/{i % 5000} answered 200 in {i % 300} ms"
        )
        out.append(
            {
                "id": f"{run}-{i:012d}",
                "message": message,
                "level": level,
                "timestamp": now - 600 + (i % 600_000) / 1000,
                "service": "shop",
                "attributes": {"logger": "shop.http", "module": "views", "line": 120 + i % 40},
            }
        )
    return out


def bodies(count: int, batch: int, run: str, kind: str) -> list[bytes]:
    items = lines(count, run)
    chunks = [items[start : start + batch] for start in range(0, count, batch)]
    if kind == "msgpack":
        return [msgpack.packb(chunk, use_bin_type=True) for chunk in chunks]
    return [orjson.dumps(chunk) for chunk in chunks]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the servers (in their own process) ----------------------------------------------------------


def bench_config(data: Path, port: int) -> Any:
    from hoodrun.config import Config

    return Config.model_validate(
        {
            "api_listen": f"127.0.0.1:{port}",
            "data_dir": str(data),
            "database_url": f"sqlite:///{data}/hoodrun.db",
            "admin_token": TOKEN,
            "analytics_path": str(data / "analytics"),
            "analytics_database": "bench",
            "log_level": "warning",
            # The plan's request limits are not what is measured.
            "logs": {"per_minute": 1_000_000, "per_hour": 10_000_000, "daily_lines": 100_000_000},
        }
    )


def serve(mode: str, port: int, data: Path) -> None:
    import uvloop

    if mode == "empty":
        import uvicorn

        app = FastAPI()

        @app.post("/logs/v1")
        async def logs(request: Request) -> Response:
            body = await request.body()
            if "msgpack" in request.headers.get("content-type", ""):
                count = len(msgpack.unpackb(body))
            else:
                count = len(orjson.loads(body))
            return Response(orjson.dumps({"accepted": count}), status_code=202)

        uvicorn.run(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
            loop="uvloop", http="httptools",
        )  # fmt: skip
        return

    from hoodrun.platform import Running, run_platform

    data.mkdir(parents=True, exist_ok=True)

    def ready(info: Running) -> None:
        if os.environ.get("BENCH_GC") == "default":  # the collector as Python sets it
            import gc

            gc.unfreeze()
            gc.set_threshold(700, 10, 10)
        (data / "key").write_text(info.key or "")

    platform = run_platform(bench_config(data, port), gateway=False, demo=True, ready=ready)
    profile = os.environ.get("BENCH_PROFILE")  # a file for the event loop thread's profile
    if not profile:
        uvloop.run(platform)
        return
    import cProfile

    with cProfile.Profile() as profiler:
        uvloop.run(platform)
    profiler.dump_stats(profile)


def start(mode: str, data: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    args = [sys.executable, __file__, "--serve", mode, "--port", str(port), "--data", str(data)]
    process = subprocess.Popen(args, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        key_file = data / "key"
        if mode == "hoodrun" and not (key_file.exists() and key_file.read_text()):
            time.sleep(0.1)
            continue
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                key = key_file.read_text() if mode == "hoodrun" else "none"
                return process, f"http://127.0.0.1:{port}", key
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the {mode} server did not start")


def direct(data: Path, count: int, batch: int) -> None:
    """parse_logs + the Arrow table, and the raw insert of those tables; prints JSON."""
    from datetime import UTC, datetime

    from hoodrun.explorer.ingest import _Entry, _table
    from hoodrun.explorer.lines import body_lines, decode_body, parse_logs
    from hoodrun.explorer.schema import LOGS_TABLE, create_logs_table
    from hoodrun.telemetry.store import ChdbStore

    async def main() -> dict[str, float]:
        store = ChdbStore(data / "analytics", "bench")
        await create_logs_table(store)
        sent = bodies(count, batch, "direct", "msgpack")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        tables = []
        for body in sent:
            now = datetime.now(UTC)
            parsed = parse_logs(
                body_lines(decode_body(body, "application/msgpack")),
                now,
                max_message_bytes=32768,
                retention_days=7,
            )
            entry = _Entry(parsed, "prj", "org", "key", 0, 2_000_000_000, 0.0, loop.create_future())
            tables.append(_table([entry]))
        parse_rate = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for table in tables:
            await store.insert_into(LOGS_TABLE, table)
        insert_rate = count / (time.perf_counter() - started)
        await store.aclose()
        return {"parse": parse_rate, "insert": insert_rate}

    print(json.dumps(asyncio.run(main())))


# --- the load (this process) ---------------------------------------------------------------------


def post_all(url: str, key: str, sent: list[bytes], kind: str, threads: int) -> float:
    """Post ``sent`` from ``threads`` threads (one httpx client each); the wall time."""
    queue = iter(sent)
    lock = threading.Lock()
    content_type = "application/msgpack" if kind == "msgpack" else "application/json"
    headers = {"authorization": f"Bearer {key}", "content-type": content_type}

    def worker() -> None:
        with httpx.Client(headers=headers, timeout=60) as client:
            while True:
                with lock:
                    body = next(queue, None)
                if body is None:
                    return
                answer = client.post(url, content=body)
                if answer.status_code != 202:
                    raise RuntimeError(f"{answer.status_code}: {answer.text}")

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return time.perf_counter() - started


def stored(data: Path) -> int:
    """Lines in the bench's logs table (FINAL), read in a process of its own (chDB: one
    directory per process, and the server holds its own)."""
    code = (
        "import asyncio, sys; from pathlib import Path; "
        "from hoodrun.telemetry.store import ChdbStore\n"
        "async def main():\n"
        "    s = ChdbStore(Path(sys.argv[1]), 'bench')\n"
        "    rows = await s.query('SELECT count() AS n FROM {db}.logs FINAL')\n"
        "    print(rows[0]['n'])\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(data / "analytics")],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


def emit_cost(records: int) -> float:
    """µs per ``logger.info`` through a HoodRunLogHandler whose sender is never answered."""
    from hoodrun.client import HoodRunLogHandler

    gate = threading.Event()

    def never(request: httpx.Request) -> httpx.Response:
        gate.wait(30)
        return httpx.Response(202, json={"accepted": 0})

    handler = HoodRunLogHandler(
        "http://bench", "key", batch_size=1000, max_buffer=records + 1000,
        transport=httpx.MockTransport(never),
    )  # fmt: skip
    log = logging.getLogger("bench.emit")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    started = time.perf_counter()
    for i in range(records):
        log.info("GET /api/orders/%d answered 200 in %d ms", i % 5000, i % 300)
    cost = (time.perf_counter() - started) / records * 1e6
    log.removeHandler(handler)
    gate.set()
    handler.close()
    return cost


def sdk_case(url: str, key: str, count: int, batch: int, threads: int) -> dict[str, Any]:
    from hoodrun.client import HoodRunLogHandler

    handler = HoodRunLogHandler(url, key, service="shop", batch_size=batch)
    log = logging.getLogger("bench.sdk")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    per_thread = count // threads

    def produce(number: int) -> None:
        for i in range(per_thread):
            log.info("GET /api/orders/%d answered 200 in %d ms", i % 5000, i % 300)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(produce, n) for n in range(threads)]:
            future.result()
    logged = time.perf_counter() - started
    handler.flush(timeout=300)
    wall = time.perf_counter() - started
    log.removeHandler(handler)
    handler.close()
    return {
        "rate": per_thread * threads / wall,
        "logged": per_thread * threads / logged,
        "sent": handler.sent,
        "retried": handler.retried,
        "dropped": handler.dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--serve", choices=("empty", "hoodrun"))
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data)
        return
    if args.direct:
        direct(args.data, args.lines, args.batch)
        return

    size = {
        kind: len(bodies(args.batch, args.batch, "size", kind)[0]) for kind in ("msgpack", "json")
    }
    print(
        f"# {args.lines:,} lines in batches of {args.batch:,} ({size['msgpack'] // args.batch} "
        f"bytes a line in MessagePack, {size['json'] // args.batch} in JSON), "
        f"{args.threads} threads"
    )
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-logs-") as tmp:
        process, base, key = start("empty", Path(tmp) / "empty")
        try:
            for kind in ("msgpack", "json"):
                sent = bodies(args.lines, args.batch, f"empty-{kind}", kind)
                post_all(f"{base}/logs/v1", key, sent[:5], kind, args.threads)  # warm up
                cpu = cpu_seconds(process.pid)
                wall = post_all(f"{base}/logs/v1", key, sent, kind, args.threads)
                cpu = cpu_seconds(process.pid) - cpu
                results[f"empty {kind}"] = args.lines / wall
                print(
                    f"{'empty endpoint, ' + kind + ' (decodes, 202)':<44}"
                    f"{args.lines / wall:>10,.0f} lines/s   "
                    f"{cpu / args.lines * 1e6:6.2f} µs CPU/line"
                )
        finally:
            process.terminate()
            process.wait(30)

        data = Path(tmp) / "hoodrun"
        process, base, key = start("hoodrun", data)
        expected = 0
        try:
            for kind in ("msgpack", "json"):
                warm = bodies(args.batch * 5, args.batch, f"warm-{kind}", kind)
                post_all(f"{base}/logs/v1", key, warm, kind, args.threads)
                sent = bodies(args.lines, args.batch, f"hoodrun-{kind}", kind)
                cpu = cpu_seconds(process.pid)
                wall = post_all(f"{base}/logs/v1", key, sent, kind, args.threads)
                cpu = cpu_seconds(process.pid) - cpu
                expected += args.lines + len(warm) * args.batch
                results[f"hoodrun {kind}"] = args.lines / wall
                print(
                    f"{'hoodrun POST /logs/v1, ' + kind:<44}"
                    f"{args.lines / wall:>10,.0f} lines/s   "
                    f"{cpu / args.lines * 1e6:6.2f} µs CPU/line"
                )
            cpu = cpu_seconds(process.pid)
            sdk = sdk_case(base, key, args.lines, args.batch, args.threads)
            cpu = cpu_seconds(process.pid) - cpu
            expected += sdk["sent"]
            print(
                f"{'hoodrun via the SDK (HoodRunLogHandler)':<44}{sdk['rate']:>10,.0f} lines/s   "
                f"{cpu / max(sdk['sent'], 1) * 1e6:6.2f} µs CPU/line   (logged at "
                f"{sdk['logged']:,.0f}/s; sent {sdk['sent']:,}, retried {sdk['retried']}, "
                f"dropped {sdk['dropped']})"
            )
        finally:
            process.terminate()
            process.wait(30)
        counted = stored(data)
        print(f"# stored (FINAL): {counted:,} of {expected:,} lines sent")
        print(f"{'emit() in the application thread':<44}{emit_cost(100_000):>10.2f} µs/line")
        done = subprocess.run(
            [sys.executable, __file__, "--direct", "--data", str(Path(tmp) / "direct"),
             "--lines", str(args.lines), "--batch", str(args.batch)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        label = "decode, parse_logs, Arrow table (no HTTP)"
        print(f"{label:<44}{figures['parse']:>10,.0f} lines/s")
        print(f"{'raw chDB insert of the same rows':<44}{figures['insert']:>10,.0f} lines/s")
        best = results["hoodrun msgpack"]
        print(f"# goal: >= 50,000 lines/s batched: {'met' if best >= 50_000 else 'NOT met'}")


if __name__ == "__main__":
    main()

"""Log queries on 10M lines: search, full-text, top errors and error rate vs a bare count.

    .venv/bin/python bench/logs_search.py [--rows 10000000] [--projects 100] [--runs 20]

Generates ``--rows`` log lines over the last 7 days for ``--projects`` projects (sizes skewed:
the largest holds ~10% of the lines) into chDB in a temporary directory under /tmp (deleted at the
end), in 500k-row Arrow chunks as the ingestion inserts them: realistic levels, 8 services, 200
message templates (one fingerprint each) with variable parts, two attributes per line. Then, for
the largest project, times each query through ``LogQuery`` (as the API runs it) ``--runs`` times
and prints p50/p95, next to references measured in the same run: a bare ``count()`` of the
project's rows, and the same count with ``FINAL`` over the query's range. Everything runs twice:
as loaded (background merges still going) and after ``OPTIMIZE TABLE ... FINAL``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hoodrun.explorer.query import LogFilter, LogQuery
from hoodrun.explorer.schema import create_logs_table
from hoodrun.telemetry.store import ChdbStore

CHUNK = 500_000
DAYS = 7
LEVELS = np.array(["trace", "debug", "info", "warn", "error", "fatal"])
LEVEL_SHARE = np.array([0.05, 0.20, 0.55, 0.12, 0.07, 0.01])
SERVICES = np.array(["api", "worker", "scheduler", "indexer", "billing", "auth", "web", "ingest"])
_VERBS = ["fetching", "writing", "reading", "sending", "parsing", "indexing", "charging", "syncing"]
_NOUNS = ["block", "receipt", "invoice", "user", "session", "webhook", "batch", "contract",
          "payment", "token", "report", "cache", "queue", "upstream", "node", "account",
          "transfer", "snapshot", "export", "import", "job", "subscription", "order", "log",
          "balance"]  # fmt: skip
_ERRORS = ["timeout after", "connection refused by", "unexpected status from",
           "invalid payload from", "rate limited by", "deadlock detected on",
           "checksum mismatch in", "disk full on"]  # fmt: skip


def _templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """200 templates: (text before the variable part, is an error template, fingerprint)."""
    texts, errors = [], []
    for i in range(200):
        verb, noun = _VERBS[i % len(_VERBS)], _NOUNS[i // len(_VERBS)]
        if i % 2:
            texts.append(f"{verb} {noun} failed: {_ERRORS[i // 2 % len(_ERRORS)]} host-")
            errors.append(True)
        else:
            texts.append(f"{verb} {noun} done in ms=")
            errors.append(False)
    prints = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
    return np.array(texts), np.array(errors), np.array(prints)


def chunk(
    rng: np.random.Generator, start: int, n: int, now: datetime, weights: np.ndarray
) -> pa.Table:
    texts, is_error, prints = _templates()
    errors, others = np.flatnonzero(is_error), np.flatnonzero(~is_error)
    level = rng.choice(len(LEVELS), n, p=LEVEL_SHARE)
    bad = level >= 4  # error and fatal lines use the error templates, the others the rest
    # A few templates are much more frequent than the rest, as in real logs.
    template = np.where(
        bad,
        errors[np.minimum(rng.zipf(1.3, n) - 1, len(errors) - 1)],
        others[rng.integers(0, len(others), n)],
    )
    end_us = int(now.timestamp() * 1e6)
    ts = end_us - rng.integers(0, DAYS * 86_400 * 1_000_000, n)
    variable = pc.cast(pa.array(rng.integers(0, 10_000, n)), pa.string())
    message = pc.binary_join_element_wise(pa.array(texts[template]), variable, "")
    keys = pa.array(np.tile(["env", "region"], n))
    items = pa.array(
        np.stack([np.where(rng.random(n) < 0.8, "prod", "staging"),
                  np.array(["eu", "us", "ap"])[rng.integers(0, 3, n)]], axis=1).reshape(-1)
    )  # fmt: skip
    project = rng.choice(len(weights), n, p=weights)
    projects = pa.array([f"prj_{i:03d}" for i in range(len(weights))])
    return pa.table(
        {
            "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "received_at": pa.array(ts + 50_000, pa.timestamp("us", tz="UTC")),
            "project_id": projects.take(pa.array(project)),
            "org_id": projects.take(pa.array(project)),
            "key_id": projects.take(pa.array(project)),
            "id": pc.cast(pa.array(np.arange(start, start + n)), pa.string()),
            "level": pa.array(LEVELS[level]),
            "service": pa.array(SERVICES[rng.integers(0, len(SERVICES), n)]),
            "message": message,
            "fingerprint": pa.array(np.where(bad, prints[template], "")),
            "stack": pa.nulls(n, pa.string()).fill_null(""),
            "attributes": pa.MapArray.from_arrays(
                pa.array(np.arange(0, 2 * n + 1, 2)), keys, items
            ),
            "trace_id": pa.nulls(n, pa.string()).fill_null(""),
            "span_id": pa.nulls(n, pa.string()).fill_null(""),
            "expires": pa.array(
                np.full(n, int((now + timedelta(days=30)).timestamp())), pa.timestamp("s", tz="UTC")
            ),
        }
    )


async def load(store: ChdbStore, rows: int, projects: int, now: datetime) -> None:
    rng = np.random.default_rng(7)
    weights = 1 / np.arange(1, projects + 1) ** 0.8
    weights /= weights.sum()
    began = time.perf_counter()
    for start in range(0, rows, CHUNK):
        await store.insert_into("logs", chunk(rng, start, min(CHUNK, rows - start), now, weights))
    took = time.perf_counter() - began
    print(f"# loaded {rows:,} lines for {projects} projects in {took:.1f} s ({rows / took:,.0f}/s)")


async def timed(
    name: str, runs: int, work: Callable[[], Awaitable[Any]], reference: float | None
) -> float:
    await work()  # warm-up: caches, marks
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await work()
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    p50 = statistics.median(times)
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    ratio = f"   {p50 / reference:5.1f}x count" if reference else ""
    print(f"{name:<44} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms{ratio}")
    return p50


async def measure(store: ChdbStore, project: str, runs: int, now: datetime) -> None:
    logs = LogQuery(store, clock=lambda: now)
    day = {"start": now - timedelta(hours=24), "end": now}
    week = {"start": now - timedelta(days=DAYS), "end": now}
    params = {"project": project}

    def count(final: str, where: str = "") -> Callable[[], Awaitable[Any]]:
        sql = f"SELECT count() AS n FROM {{db}}.logs {final} WHERE project_id = {{project:String}}"  # noqa: S608
        return lambda: store.query(sql + where, params)

    span = " AND ts >= now64(6) - INTERVAL 1 DAY"  # the queries' 24 hours, near enough
    reference = await timed("reference: count() of the project (no FINAL)", runs, count(""), None)
    await timed("reference: count() FINAL, last 24h", runs, count("FINAL", span), reference)
    warn = LogFilter.parse(level=">=warn")
    await timed(
        "search 24h level>=warn, limit 100",
        runs,
        lambda: logs.search(project, **day, filters=warn, limit=100),
        reference,
    )
    word = LogFilter.parse(q="deadlock")
    await timed(
        "full-text word 'deadlock', 7 days, limit 100",
        runs,
        lambda: logs.search(project, **week, filters=word, limit=100),
        reference,
    )
    pair = LogFilter.parse(q="checksum receipt")
    await timed(
        "full-text 2 words (one template), 7 days",
        runs,
        lambda: logs.search(project, **week, filters=pair, limit=100),
        reference,
    )
    await timed("top errors 24h", runs, lambda: logs.top_errors(project, **day), reference)
    await timed("top errors 7 days", runs, lambda: logs.top_errors(project, **week), reference)
    await timed(
        "error rate 24h (288 windows)", runs, lambda: logs.error_rate(project, **day), reference
    )


async def main(rows: int, projects: int, runs: int) -> None:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="hoodrun-bench-", dir="/tmp") as tmp:
        store = ChdbStore(Path(tmp) / "analytics", "bench")
        await create_logs_table(store)
        await load(store, rows, projects, now)
        project = "prj_000"  # the largest
        size = (await store.query(
            "SELECT count() AS n FROM {db}.logs WHERE project_id = 'prj_000'"
        ))[0]["n"]  # fmt: skip
        parts = await store.query(
            "SELECT count() AS n FROM system.parts WHERE database = 'bench' AND active"
        )
        print(f"# {project}: {int(size):,} lines; {parts[0]['n']} active parts; {runs} runs each")
        await measure(store, project, runs, now)
        began = time.perf_counter()
        await store.execute("OPTIMIZE TABLE {db}.logs FINAL")
        print(f"# after OPTIMIZE TABLE FINAL ({time.perf_counter() - began:.1f} s)")
        await measure(store, project, runs, now)
        await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.projects, args.runs))

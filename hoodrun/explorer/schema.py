"""The ``logs`` table of the analytics store (chDB or ClickHouse) and its setup.

One row per log line. A ReplacingMergeTree keyed by (project, time, id) inside its sorting key, so
a batch sent twice (a retry after a lost answer: the SDK gives every line an ``id``) is stored
once: reads use ``FINAL``. Each row carries its own ``expires`` (the time it arrived plus its
project's plan's retention), so one table serves every plan and its TTL drops a line when its
plan says. ``message_lower`` is indexed by tokens (``tokenbf_v1``) for full-text search with
``hasToken``; ``fingerprint`` (hex) groups lines of the same error.
"""

from __future__ import annotations

import pyarrow as pa

from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["LEVELS", "LOGS_ARROW_SCHEMA", "LOGS_DDL", "LOGS_TABLE", "create_logs_table"]

LOGS_TABLE = "logs"
LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")
"""Normalized levels, least to most severe."""

LOGS_DDL = """
CREATE TABLE IF NOT EXISTS {db}.logs (
    ts DateTime64(6, 'UTC'),
    received_at DateTime64(6, 'UTC'),
    project_id LowCardinality(String),
    org_id LowCardinality(String),
    key_id String,
    id String,
    level LowCardinality(String),
    service LowCardinality(String),
    message String,
    message_lower String MATERIALIZED lower(message),
    fingerprint String,
    stack String,
    attributes Map(String, String),
    trace_id String,
    span_id String,
    expires DateTime('UTC'),
    INDEX message_tokens message_lower TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 4,
    INDEX by_fingerprint fingerprint TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (project_id, ts, id)
TTL expires DELETE
"""

# The columns written to ``logs`` (``message_lower`` is computed by the table), as Arrow types.
LOGS_ARROW_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("received_at", pa.timestamp("us", tz="UTC")),
        ("project_id", pa.string()),
        ("org_id", pa.string()),
        ("key_id", pa.string()),
        ("id", pa.string()),
        ("level", pa.string()),
        ("service", pa.string()),
        ("message", pa.string()),
        ("fingerprint", pa.string()),
        ("stack", pa.string()),
        ("attributes", pa.map_(pa.string(), pa.string())),
        ("trace_id", pa.string()),
        ("span_id", pa.string()),
        ("expires", pa.timestamp("s", tz="UTC")),
    ]
)


async def create_logs_table(store: AnalyticsStore) -> None:
    """Create the database and the ``logs`` table if missing."""
    await store.execute("CREATE DATABASE IF NOT EXISTS {db}")
    await store.execute(LOGS_DDL)

"""The analytics tables and every statement HoodRun runs on them: one module of ClickHouse SQL
for chDB (embedded) and a ClickHouse server alike.

- ``requests_raw``: one row per call. A ReplacingMergeTree keyed by (request id, call index) inside
  its sorting key, so a batch written twice (a replay after a store timeout, a NATS redelivery after
  a worker crash) counts once: every read uses ``FINAL``. ``params_excerpt`` and
  ``response_excerpt`` hold payloads of projects that capture them ('' otherwise); the rollups
  and usage never read them. Columns added since the first release come with an ``ALTER TABLE
  ... ADD COLUMN IF NOT EXISTS`` for databases made before.
- ``usage_hourly`` / ``usage_daily``: rollups rebuilt from ``requests_raw FINAL`` for each hour
  that received rows (``Rollups``), versioned ReplacingMergeTrees so a rebuild replaces the older
  rows of its groups. Sums are exact; latency percentiles are ClickHouse quantile states.

Statements take their database as ``{db}``, formatted in after the name was checked against
``_IDENT``; values are bound as query parameters (``{name:Type}``), never formatted in.
"""

from __future__ import annotations

import re

from hoodrun.config import RetentionConfig

__all__ = ["ddl", "quote_db"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

# The dimensions of both rollups, in their sorting key order.
DIMENSIONS = ("org_id", "project_id", "key_id", "chain", "method", "outcome", "error_code")

_RAW = """
CREATE TABLE IF NOT EXISTS {db}.requests_raw (
    ts DateTime64(3, 'UTC'),
    request_id String,
    call_index UInt16,
    batch_size UInt16,
    org_id LowCardinality(String),
    project_id LowCardinality(String),
    key_id String,
    chain LowCardinality(String),
    method LowCardinality(String),
    outcome LowCardinality(String),
    error_code Int32,
    status UInt16,
    latency_ms Float64,
    upstream_latency_ms Float64,
    upstream LowCardinality(String),
    attempts UInt8,
    cache_hit UInt8,
    bytes_in UInt32,
    bytes_out UInt32,
    compute_units UInt32,
    client_ip String,
    params_excerpt String DEFAULT '',
    response_excerpt String DEFAULT ''
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (org_id, chain, ts, request_id, call_index)
TTL toDateTime(ts) + INTERVAL {raw_days} DAY DELETE
"""

# Columns added to requests_raw after its first release, for databases made before them (after
# client_ip, in this order: inserts give the columns by position).
_RAW_ADDED = (
    "ALTER TABLE {db}.requests_raw ADD COLUMN IF NOT EXISTS params_excerpt String DEFAULT ''"
    " AFTER client_ip",
    "ALTER TABLE {db}.requests_raw ADD COLUMN IF NOT EXISTS response_excerpt String DEFAULT ''"
    " AFTER params_excerpt",
)

_ROLLUP = """
CREATE TABLE IF NOT EXISTS {db}.{table} (
    {time_column} {time_type},
    org_id LowCardinality(String),
    project_id LowCardinality(String),
    key_id String,
    chain LowCardinality(String),
    method LowCardinality(String),
    outcome LowCardinality(String),
    error_code Int32,
    requests UInt64,
    compute_units UInt64,
    bytes_in UInt64,
    bytes_out UInt64,
    cache_hits UInt64,
    latency_sum_ms Float64,
    latency_q AggregateFunction(quantiles(0.5, 0.95, 0.99), Float64),
    version DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM({time_column})
ORDER BY ({time_column}, org_id, project_id, key_id, chain, method, outcome, error_code)
TTL {ttl}
"""

# Rebuild the hourly rows of [start, end) from the raw rows.
ROLLUP_HOURLY = """
INSERT INTO {db}.usage_hourly
SELECT toStartOfHour(ts) AS hour, org_id, project_id, key_id, chain, method, outcome, error_code,
    count(), sum(compute_units), sum(bytes_in), sum(bytes_out), sum(cache_hit), sum(latency_ms),
    quantilesState(0.5, 0.95, 0.99)(latency_ms), now64(6)
FROM {db}.requests_raw FINAL
WHERE ts >= fromUnixTimestamp64Milli({start:Int64})
    AND ts < fromUnixTimestamp64Milli({end:Int64})
GROUP BY hour, org_id, project_id, key_id, chain, method, outcome, error_code
"""

# Rebuild the daily rows of [start, end) from the hourly rows.
ROLLUP_DAILY = """
INSERT INTO {db}.usage_daily
SELECT toDate(hour) AS day, org_id, project_id, key_id, chain, method, outcome, error_code,
    sum(requests), sum(compute_units), sum(bytes_in), sum(bytes_out), sum(cache_hits),
    sum(latency_sum_ms), quantilesMergeState(0.5, 0.95, 0.99)(latency_q), now64(6)
FROM {db}.usage_hourly FINAL
WHERE hour >= toDateTime({start:Int64}, 'UTC') AND hour < toDateTime({end:Int64}, 'UTC')
GROUP BY day, org_id, project_id, key_id, chain, method, outcome, error_code
"""

# Billable usage per org since ``start`` (the month so far, for quotas): calls answered by a
# node or the cache (outcome ok or rpc_error; WebSocket notifications are not calls) and their
# compute units (notifications' included).
BILLABLE_SINCE = """
SELECT org_id, countIf(outcome IN ('ok', 'rpc_error') AND method != 'eth_subscription') AS requests,
    sum(compute_units) AS compute_units
FROM {db}.requests_raw FINAL
WHERE ts >= fromUnixTimestamp64Milli({start:Int64}) AND org_id != ''
GROUP BY org_id
"""

# One org's billable usage per hour since ``start`` (the forecast's history), from the rollups.
BILLABLE_HOURLY = """
SELECT toUnixTimestamp(hour) AS hour,
    sumIf(requests, outcome IN ('ok', 'rpc_error') AND method != 'eth_subscription') AS requests,
    sum(compute_units) AS compute_units
FROM {db}.usage_hourly FINAL
WHERE org_id = {org:String} AND hour >= toDateTime({start:Int64}, 'UTC')
GROUP BY hour
ORDER BY hour
"""

# Hours whose raw row count differs from their hourly rollup: the catch-up after a crash.
STALE_HOURS = """
SELECT toUnixTimestamp(r.hour) AS hour FROM (
    SELECT toStartOfHour(ts) AS hour, count() AS n FROM {db}.requests_raw FINAL
    WHERE ts >= fromUnixTimestamp64Milli({since:Int64}) GROUP BY hour
) AS r
LEFT JOIN (
    SELECT hour, sum(requests) AS n FROM {db}.usage_hourly FINAL
    WHERE hour >= toStartOfHour(fromUnixTimestamp64Milli({since:Int64})) GROUP BY hour
) AS h ON r.hour = h.hour
WHERE r.n != h.n
ORDER BY hour
"""


def quote_db(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"{name!r} is not a valid database name (letters, digits, _)")
    return name


def ddl(db: str, retention: RetentionConfig) -> list[str]:
    db = quote_db(db)
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        _RAW.format(db=db, raw_days=int(retention.raw_days)),
        *(statement.format(db=db) for statement in _RAW_ADDED),
        _ROLLUP.format(
            db=db,
            table="usage_hourly",
            time_column="hour",
            time_type="DateTime('UTC')",
            ttl=f"hour + INTERVAL {int(retention.hourly_days)} DAY DELETE",
        ),
        _ROLLUP.format(
            db=db,
            table="usage_daily",
            time_column="day",
            time_type="Date",
            ttl=f"day + INTERVAL {int(retention.daily_months)} MONTH DELETE",
        ),
    ]

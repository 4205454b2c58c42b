"""Usage reports from the analytics store: totals, groups, time windows, top methods and errors.

Every report reads one of three tables, all with ``FINAL`` (a batch written twice counts once):

- ``requests_raw``: exact for any range and any window (minute, hour, day), and current to the
  last write; kept ``raw_days`` (14) days.
- ``usage_hourly``: whole hours only, behind the raw rows by up to one rollup interval; kept
  ``hourly_days`` (90) days.
- ``usage_daily``: whole UTC days only; kept 18 months.

``source="auto"`` reads the raw rows while they still hold the whole range (``start`` no older
than ``raw_days`` before now), since they are exact at any boundary and include the rows not rolled
up yet; older ranges read the rollups. ``source="rollup"`` picks ``usage_daily`` when ``start`` and
``end`` are at 00:00 UTC and the windows (if any) are days, else ``usage_hourly``; ``minute``
windows exist only in the raw rows. Counts and sums agree exactly between the raw rows and the
rollups; latency percentiles are ClickHouse's ``quantiles`` (exact up to 8,192 rows per group,
sampled beyond), merged from quantile states in the rollups.

Windows are UTC calendar minutes, hours or days: when ``start`` or ``end`` falls inside a window,
that window counts only its part within the range. Each report is a JSON-ready dict: the range and
the table it read, and ``rows``; times are ISO-8601 UTC strings (``2026-11-01T10:00:00Z``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["GROUP_COLUMNS", "MAX_LIMIT", "MAX_WINDOWS", "Every", "Reports", "Source", "parse_time"]

Every = Literal["minute", "hour", "day"]
Source = Literal["auto", "raw", "rollup"]

# The columns a report can group by, and the short names the CLI and API also accept.
GROUP_COLUMNS = ("chain", "method", "outcome", "org_id", "project_id", "key_id", "error_code")
_ALIASES = {"org": "org_id", "project": "project_id", "key": "key_id"}
MAX_LIMIT = 1000
MAX_WINDOWS = 10_000  # a bound on one report's size: 7 days of minutes, 416 days of hours

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_SIZES: dict[str, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}


@dataclass(frozen=True)
class _Table:
    """How one table answers a report. SQL fragments only; values are bound as parameters."""

    name: str
    source: Literal["raw", "rollup"]
    where_time: str
    seconds: bool  # the range is bound in seconds (rollups) rather than milliseconds (raw)
    windows: dict[str, str]  # window name -> expression of the window's start
    metrics: str
    last_seen_ms: str


# Aliases are prefixed (m_...): a ClickHouse alias named like a column would replace that column
# inside the other aggregates (sum(requests) AS requests breaks sumIf(requests, ...)).
_RAW = _Table(
    name="requests_raw",
    source="raw",
    where_time="ts >= fromUnixTimestamp64Milli({start:Int64}) "
    "AND ts < fromUnixTimestamp64Milli({end:Int64})",
    seconds=False,
    windows={
        "minute": "toStartOfMinute(ts)",
        "hour": "toStartOfHour(ts)",
        "day": "toStartOfDay(ts)",
    },
    metrics="count() AS m_requests, sum(compute_units) AS m_units, "
    "countIf(outcome != 'ok') AS m_errors, sum(bytes_in) AS m_bytes_in, "
    "sum(bytes_out) AS m_bytes_out, sum(cache_hit) AS m_cache_hits, "
    "sum(latency_ms) AS m_latency_sum, quantiles(0.5, 0.95, 0.99)(latency_ms) AS m_latency_q",
    last_seen_ms="toUnixTimestamp64Milli(max(ts))",
)
_ROLLUP_METRICS = (
    "sum(requests) AS m_requests, sum(compute_units) AS m_units, "
    "sumIf(requests, outcome != 'ok') AS m_errors, sum(bytes_in) AS m_bytes_in, "
    "sum(bytes_out) AS m_bytes_out, sum(cache_hits) AS m_cache_hits, "
    "sum(latency_sum_ms) AS m_latency_sum, "
    "quantilesMerge(0.5, 0.95, 0.99)(latency_q) AS m_latency_q"
)
_HOURLY = _Table(
    name="usage_hourly",
    source="rollup",
    where_time="hour >= toDateTime({start:Int64}, 'UTC') AND hour < toDateTime({end:Int64}, 'UTC')",
    seconds=True,
    windows={"hour": "hour", "day": "toStartOfDay(hour)"},
    metrics=_ROLLUP_METRICS,
    last_seen_ms="toUnixTimestamp(max(hour)) * 1000",
)
_DAILY = _Table(
    name="usage_daily",
    source="rollup",
    where_time="day >= toDate(toDateTime({start:Int64}, 'UTC')) "
    "AND day < toDate(toDateTime({end:Int64}, 'UTC'))",
    seconds=True,
    windows={"day": "toDateTime(day, 'UTC')"},
    metrics=_ROLLUP_METRICS,
    last_seen_ms="toUnixTimestamp(toDateTime(max(day), 'UTC')) * 1000",
)
_FILTERS = {
    "org": "org_id = {org:String}",
    "project": "project_id = {project:String}",
    "key": "key_id = {key:String}",
    "chain": "chain = {chain:String}",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Reports:
    """Reports over an analytics store (see the module's docstring for the tables they read).

    ``org``, ``project`` and ``key`` filters are ids (``org_...``, ``prj_...``, ``key_...``): the
    analytics rows hold no names. ``clock`` is "now" for ``source="auto"`` and the default range.
    """

    def __init__(
        self,
        store: AnalyticsStore,
        *,
        raw_days: int = 14,
        hourly_days: int = 90,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.raw_days = raw_days
        self.hourly_days = hourly_days
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    def bounds(
        self, start: str | None, end: str | None, source: str = "auto"
    ) -> tuple[datetime, datetime]:
        """A report's range from text (``parse_time``), as the CLI and the API take it.

        ``end`` defaults to now, ``start`` to 24 hours before ``end``. When the rollups will
        answer (``start`` older than the raw rows), a default ``end`` is the current hour's start
        and a span ago (``30d``) starts at its hour's start: the rollups hold whole hours.
        """
        now = self.now()
        until = parse_time(end, now=now, name="to") if end else now
        since = parse_time(start, now=now, name="from") if start else until - timedelta(hours=24)
        if source != "raw" and since < now - timedelta(days=self.raw_days):
            if end is None:
                until = _floor(now, "hour")
            if start is not None and _AGO.match(start.lower()):
                since = _floor(since, "hour")
        return since, until

    async def usage(
        self,
        *,
        start: datetime,
        end: datetime,
        org: str | None = None,
        project: str | None = None,
        key: str | None = None,
        chain: str | None = None,
        by: Sequence[str] = (),
        every: str | None = None,
        source: str = "auto",
    ) -> dict[str, Any]:
        """Metrics per group (``by``: column names, or one comma-separated string) and window
        (``every``); one totals row, zeros included, without either.

        Rows are ordered by window, then by requests (most first). Each row has its window
        (``window``, with ``every``), its group columns, and ``requests``, ``compute_units``,
        ``errors`` (outcome other than ``ok``), ``error_rate``, ``latency_avg_ms``,
        ``latency_p50_ms``/``p95``/``p99`` (null without requests), ``bytes_in``, ``bytes_out``,
        ``cache_hits`` and ``cache_hit_ratio``.
        """
        columns = _group_columns(by)
        window = _every(every)
        start, end = _range(start, end)
        table = self._table(start, end, window, _source(source))
        _check_windows(start, end, window)
        where, params = _where(table, start, end, org=org, project=project, key=key, chain=chain)
        select, group = list(columns), list(columns)
        if window is not None:
            select.insert(0, f"toUnixTimestamp({table.windows[window]}) AS window_start")
            group.insert(0, "window_start")
        order = ", ".join([*group[: 1 if window else 0], "m_requests DESC", *columns])
        sql = _select(table, [*select, table.metrics], where, group, order)
        rows = await self.store.query(sql, params)
        return {
            **_header(table, start, end),
            "every": window,
            "by": list(columns),
            "rows": [
                _metrics_row(
                    row, columns, _iso(int(row["window_start"]) * 1000) if window else None
                )
                for row in rows
            ],
        }

    async def series(
        self,
        *,
        start: datetime,
        end: datetime,
        every: str = "hour",
        org: str | None = None,
        project: str | None = None,
        key: str | None = None,
        chain: str | None = None,
        source: str = "auto",
    ) -> dict[str, Any]:
        """Totals per window, one row for every window of the range (zeros where none)."""
        report = await self.usage(
            start=start,
            end=end,
            every=every,
            org=org,
            project=project,
            key=key,
            chain=chain,
            source=source,
        )
        found = {row["window"]: row for row in report["rows"]}
        report["rows"] = [
            found.get(window) or _metrics_row({}, (), window)
            for window in _windows(_parse_iso(report["start"]), _parse_iso(report["end"]), every)
        ]
        return report

    async def top_methods(
        self,
        *,
        start: datetime,
        end: datetime,
        org: str | None = None,
        project: str | None = None,
        key: str | None = None,
        chain: str | None = None,
        limit: int = 10,
        source: str = "auto",
    ) -> dict[str, Any]:
        """The ``limit`` methods with the most calls, with the metrics of ``usage``."""
        _check_limit(limit)
        start, end = _range(start, end)
        table = self._table(start, end, None, _source(source))
        where, params = _where(table, start, end, org=org, project=project, key=key, chain=chain)
        params["limit"] = limit
        order = "m_requests DESC, method LIMIT {limit:UInt32}"
        sql = _select(table, ["method", table.metrics], where, ["method"], order)
        rows = await self.store.query(sql, params)
        return {
            **_header(table, start, end),
            "limit": limit,
            "rows": [_metrics_row(row, ("method",), None) for row in rows],
        }

    async def top_errors(
        self,
        *,
        start: datetime,
        end: datetime,
        org: str | None = None,
        project: str | None = None,
        key: str | None = None,
        chain: str | None = None,
        limit: int = 10,
        source: str = "auto",
    ) -> dict[str, Any]:
        """The most frequent failures by outcome and JSON-RPC error code.

        Each row: ``outcome``, ``error_code``, ``count``, ``last_seen`` (to the millisecond from
        the raw rows, the start of its hour or day from the rollups) and ``methods``: the (up to)
        three methods it hit most.
        """
        _check_limit(limit)
        start, end = _range(start, end)
        table = self._table(start, end, None, _source(source))
        where, params = _where(table, start, end, org=org, project=project, key=key, chain=chain)
        params["limit"] = limit
        weight = "1" if table.source == "raw" else "requests"
        select = [
            "outcome",
            "error_code",
            "count() AS m_count" if table.source == "raw" else "sum(requests) AS m_count",
            f"{table.last_seen_ms} AS m_last_seen",
            f"topKWeighted(3)(method, {weight}) AS m_methods",
        ]
        order = "m_count DESC, outcome, error_code LIMIT {limit:UInt32}"
        sql = _select(
            table, select, f"{where} AND outcome != 'ok'", ["outcome", "error_code"], order
        )
        rows = await self.store.query(sql, params)
        return {
            **_header(table, start, end),
            "limit": limit,
            "rows": [
                {
                    "outcome": str(row["outcome"]),
                    "error_code": int(row["error_code"]),
                    "count": int(row["m_count"]),
                    "last_seen": _iso(int(row["m_last_seen"])),
                    "methods": [str(m) for m in row["m_methods"]],
                }
                for row in rows
            ],
        }

    def _table(self, start: datetime, end: datetime, every: str | None, source: str) -> _Table:
        now = self.now()
        raw_from = now - timedelta(days=self.raw_days)
        chosen = source
        if source == "auto":
            chosen = "raw" if start >= raw_from else "rollup"
        if chosen == "raw":
            return _RAW
        if every == "minute":
            if start < raw_from:
                raise ValueError(
                    f"minute windows come from the raw rows, kept {self.raw_days} days: start "
                    "is older; use every=hour or every=day"
                )
            raise ValueError("minute windows come from the raw rows only: use source=raw or auto")
        days = _on(start, "day") and _on(end, "day")
        if days and every in (None, "day"):
            return _DAILY
        if start < now - timedelta(days=self.hourly_days):
            raise ValueError(
                f"the hourly rollup is kept {self.hourly_days} days and start is older: before "
                "that only whole days are kept (start and end at 00:00 UTC, every=day or none)"
            )
        if not (_on(start, "hour") and _on(end, "hour")):
            why = f"start is older than the raw rows ({self.raw_days} days), so " * (
                source == "auto"
            )
            raise ValueError(
                f"{why}the rollups answer, and they hold whole hours: start and end must be on "
                f"the hour (UTC); the raw rows (kept {self.raw_days} days) answer any range"
            )
        return _HOURLY


# --- building the statement ---------------------------------------------------------------------


def _select(table: _Table, select: list[str], where: str, group: list[str], order: str) -> str:
    sql = f"SELECT {', '.join(select)} FROM {{db}}.{table.name} FINAL WHERE {where}"  # noqa: S608
    if group:
        sql += f" GROUP BY {', '.join(group)} ORDER BY {order}"
    return sql


def _where(
    table: _Table, start: datetime, end: datetime, **filters: str | None
) -> tuple[str, dict[str, Any]]:
    unit = timedelta(seconds=1) if table.seconds else _MS
    params: dict[str, Any] = {"start": (start - _EPOCH) // unit, "end": (end - _EPOCH) // unit}
    clauses = [table.where_time]
    for name, value in filters.items():
        if value is not None:
            clauses.append(_FILTERS[name])
            params[name] = value
    return " AND ".join(clauses), params


def _metrics_row(row: dict[str, Any], columns: Iterable[str], window: str | None) -> dict[str, Any]:
    """One report row from a query's row (``{}`` for a window without requests)."""
    out: dict[str, Any] = {} if window is None else {"window": window}
    for column in columns:
        out[column] = int(row[column]) if column == "error_code" else str(row[column])
    requests = int(row.get("m_requests") or 0)
    errors = int(row.get("m_errors") or 0)
    cache_hits = int(row.get("m_cache_hits") or 0)
    quantiles = row.get("m_latency_q") or [None, None, None]
    p50, p95, p99 = (None if q is None or not requests else round(float(q), 3) for q in quantiles)
    latency_sum = float(row.get("m_latency_sum") or 0.0)
    out.update(
        requests=requests,
        compute_units=int(row.get("m_units") or 0),
        errors=errors,
        error_rate=errors / requests if requests else 0.0,
        latency_avg_ms=round(latency_sum / requests, 3) if requests else None,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        bytes_in=int(row.get("m_bytes_in") or 0),
        bytes_out=int(row.get("m_bytes_out") or 0),
        cache_hits=cache_hits,
        cache_hit_ratio=cache_hits / requests if requests else 0.0,
    )
    return out


def _header(table: _Table, start: datetime, end: datetime) -> dict[str, Any]:
    return {
        "start": _iso((start - _EPOCH) // _MS),
        "end": _iso((end - _EPOCH) // _MS),
        "source": table.source,
        "table": table.name,
    }


# --- checks ------------------------------------------------------------------------------------


def _group_columns(by: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(by, str):  # "chain,method" from a query string or the command line
        by = [part for part in (p.strip() for p in by.split(",")) if part]
    columns: list[str] = []
    for name in by:
        column = _ALIASES.get(name, name)
        if column not in GROUP_COLUMNS:
            known = ", ".join(GROUP_COLUMNS)
            raise ValueError(f"cannot group by {name!r}: use any of {known} (or org, project, key)")
        if column in columns:
            raise ValueError(f"{column} appears twice in the group columns")
        columns.append(column)
    return tuple(columns)


def _every(every: str | None) -> str | None:
    if every is not None and every not in get_args(Every):
        raise ValueError(f"every must be minute, hour or day, not {every!r}")
    return every


def _source(source: str) -> str:
    if source not in get_args(Source):
        raise ValueError(f"source must be auto, raw or rollup, not {source!r}")
    return source


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")


def _range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (UTC), not {value.isoformat()}")
    if start >= end:
        raise ValueError(f"start ({_show(start)}) must be before end ({_show(end)})")
    return start.astimezone(UTC), end.astimezone(UTC)


def _check_windows(start: datetime, end: datetime, every: str | None) -> None:
    if every is None:
        return
    count = len(range(0, (end - _floor(start, every)) // _MS, _SIZES[every] // _MS))
    if count > MAX_WINDOWS:
        raise ValueError(
            f"{count} {every} windows in this range; at most {MAX_WINDOWS}: use a shorter range "
            "or longer windows"
        )


def _on(value: datetime, every: str) -> bool:
    return _floor(value, every) == value


def _floor(value: datetime, every: str) -> datetime:
    step = _SIZES[every]
    return _EPOCH + (value - _EPOCH) // step * step


def _windows(start: datetime, end: datetime, every: str) -> list[str]:
    step, first = _SIZES[every], _floor(start, every)
    return [_iso((first + i * step - _EPOCH) // _MS) for i in range(-(-(end - first) // step))]


# --- times -------------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    value = _EPOCH + ms * _MS
    spec = "milliseconds" if ms % 1000 else "seconds"
    return value.isoformat(timespec=spec).replace("+00:00", "Z")


def _show(value: datetime) -> str:
    return _iso((value.astimezone(UTC) - _EPOCH) // _MS)


def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


_AGO = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_AGO_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(value: str, *, now: datetime, name: str = "time") -> datetime:
    """A report bound from text: an ISO-8601 date or date-time (UTC unless it carries an offset),
    or a span before ``now`` such as ``90m``, ``24h``, ``7d`` or ``2w``."""
    ago = _AGO.match(value.lower())
    if ago:
        return now - timedelta(**{_AGO_UNITS[ago.group(2)]: int(ago.group(1))})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{name}: {value!r} is not a time; use e.g. 2026-11-01, 2026-11-01T10:00:00Z or 24h "
            "(that long ago)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)

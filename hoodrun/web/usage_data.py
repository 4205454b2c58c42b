"""What the portal reads from the usage reports (``hoodrun.telemetry.reporting``): an org's month
so far, per key and per chain and method; the series its charts draw; a key's current rate.

The raw rows answer any range exactly but are kept ``raw_days``; a range reaching further back
is read from the hourly rollups up to a day inside the raw rows' reach and from the raw rows
after it, and the two are added up (the rollups of more than a day ago are complete).

Billable usage counts as the period close counts it (``hoodrun.billing._close_usage``): calls a
node or the cache answered (outcome ok or rpc_error) are requests, WebSocket notifications are
not; compute units count for those outcomes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hoodrun.metering.entitlements import method_kind
from hoodrun.telemetry.reporting import Reports

__all__ = [
    "BILLABLE",
    "MonthUsage",
    "chart_series",
    "is_billable",
    "key_rates",
    "span_usage",
]

BILLABLE = ("ok", "rpc_error")
NOTIFICATION = "eth_subscription"
LIMITED = ("rate_limited", "quota_exceeded")
TOP_METHODS = 6
_DAY = timedelta(days=1)
_SUMMED = ("requests", "compute_units", "errors")


def is_billable(row: Mapping[str, Any]) -> bool:
    return row.get("outcome") in BILLABLE


def _floor(value: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + (value - epoch) // step * step


async def span_usage(
    reports: Reports,
    *,
    start: datetime,
    end: datetime,
    by: Sequence[str],
    **filters: str | None,
) -> list[dict[str, Any]]:
    """Requests, compute units and errors per group over [start, end), however old ``start``
    (see the module's docstring); latency is not summed across the two sources. A range
    reaching past the raw rows starts on the hour (the rollups hold whole hours) and ends on
    it or within the raw rows' reach."""
    if start >= end:
        return []
    now = reports.now()
    raw_from = _floor(now - timedelta(days=reports.raw_days) + _DAY, timedelta(hours=1))
    if start >= raw_from:
        report = await reports.usage(start=start, end=end, by=by, source="raw", **filters)
        return list(report["rows"])
    cut = min(raw_from, end)
    older = await reports.usage(
        start=_floor(start, timedelta(hours=1)), end=cut, by=by, source="rollup", **filters
    )
    rows = list(older["rows"])
    if cut < end:
        recent = await reports.usage(start=cut, end=end, by=by, source="raw", **filters)
        rows += recent["rows"]
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[column] for column in by)
        into = totals.get(key)
        if into is None:
            totals[key] = {**{column: row[column] for column in by}, **{m: 0 for m in _SUMMED}}
            into = totals[key]
        for metric in _SUMMED:
            into[metric] += row[metric]
    return list(totals.values())


@dataclass(frozen=True, slots=True)
class Totals:
    requests: int = 0
    compute_units: int = 0
    errors: int = 0
    billable_requests: int = 0
    billable_units: int = 0

    def meter(self, name: str) -> int:
        """Billable usage of a built-in meter (requests or compute_units)."""
        return self.billable_requests if name == "requests" else self.billable_units


def _totals(rows: Iterable[Mapping[str, Any]]) -> Totals:
    requests = units = errors = billable_requests = billable_units = 0
    for row in rows:
        requests += int(row["requests"])
        units += int(row["compute_units"])
        errors += int(row["errors"])
        if is_billable(row):
            billable_units += int(row["compute_units"])
            if row.get("method") != NOTIFICATION:
                billable_requests += int(row["requests"])
    return Totals(requests, units, errors, billable_requests, billable_units)


@dataclass(frozen=True, slots=True)
class MonthUsage:
    """An org's usage from ``start`` (the month's first moment) to ``end`` (now), by key, chain,
    method and outcome."""

    start: datetime
    end: datetime
    rows: tuple[Mapping[str, Any], ...]

    @classmethod
    async def read(cls, reports: Reports, org_id: str, start: datetime) -> MonthUsage:
        end = reports.now()
        by = ("key_id", "chain", "method", "outcome")
        rows = await span_usage(reports, start=start, end=end, by=by, org=org_id)
        return cls(start, end, tuple(rows))

    def totals(self, key_id: str | None = None) -> Totals:
        rows = self.rows if key_id is None else [r for r in self.rows if r["key_id"] == key_id]
        return _totals(rows)

    def by_chain_method(self, key_id: str | None = None) -> list[dict[str, Any]]:
        """Per (chain, method): requests, compute units, errors, billable; most requests first."""
        groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
        for row in self.rows:
            if key_id is None or row["key_id"] == key_id:
                groups[row["chain"], row["method"]].append(row)
        out = [(chain, method, _totals(rows)) for (chain, method), rows in groups.items()]
        out.sort(key=lambda item: (-item[2].requests, item[0], item[1]))
        return [{"chain": chain, "method": method, "totals": t} for chain, method, t in out]

    def rating_rows(self, meter: str) -> list[tuple[str, str, Decimal]]:
        """``(chain, method kind, quantity)`` of billable usage, what rating weighs."""
        quantities: dict[tuple[str, str], int] = defaultdict(int)
        for row in self.rows:
            if not is_billable(row):
                continue
            if meter == "requests":
                if row["method"] == NOTIFICATION:
                    continue
                quantities[row["chain"], method_kind(row["method"])] += int(row["requests"])
            else:
                quantities[row["chain"], method_kind(row["method"])] += int(row["compute_units"])
        return [(chain, kind, Decimal(q)) for (chain, kind), q in sorted(quantities.items()) if q]


async def key_rates(
    reports: Reports, org_id: str, key_id: str | None = None
) -> dict[str, dict[str, int]]:
    """Per key: calls in the last minute, the busiest minute of the last hour, and calls refused
    for a rate limit or quota in the last 24 hours."""
    now = reports.now()
    minute = await reports.usage(
        start=now - timedelta(minutes=1), end=now, org=org_id, key=key_id, by=("key_id",)
    )
    hour = await reports.usage(
        start=now - timedelta(hours=1),
        end=now,
        org=org_id,
        key=key_id,
        by=("key_id",),
        every="minute",
    )
    day = await reports.usage(
        start=now - _DAY, end=now, org=org_id, key=key_id, by=("key_id", "outcome")
    )
    out: dict[str, dict[str, int]] = defaultdict(
        lambda: {"last_minute": 0, "peak_minute": 0, "limited_24h": 0}
    )
    for row in minute["rows"]:
        out[row["key_id"]]["last_minute"] = int(row["requests"])
    for row in hour["rows"]:
        entry = out[row["key_id"]]
        entry["peak_minute"] = max(entry["peak_minute"], int(row["requests"]))
    for row in day["rows"]:
        if row["outcome"] in LIMITED:
            out[row["key_id"]]["limited_24h"] += int(row["requests"])
    return dict(out)


async def chart_series(
    reports: Reports,
    *,
    org_id: str,
    days: int,
    key_id: str | None = None,
    chain: str | None = None,
) -> dict[str, Any]:
    """The portal's charts: per UTC day, requests and compute units by chain and by method (the
    ``TOP_METHODS`` busiest, the rest as "other"), the error rate and latency p50/p95.

    Up to ``raw_days`` days come from the raw rows (today included, to the last write); more
    from the daily rollup.
    """
    now = reports.now()
    today = _floor(now, _DAY)
    start = today - (days - 1) * _DAY
    if days <= reports.raw_days:
        end, source = now, "raw"
    else:
        end, source = today + _DAY, "rollup"
    filters: dict[str, Any] = {"org": org_id, "key": key_id, "chain": chain, "source": source}
    labels = [(start + i * _DAY).date().isoformat() for i in range(days)]
    index = {label: i for i, label in enumerate(labels)}

    def day_of(row: Mapping[str, Any]) -> int | None:
        return index.get(str(row["window"])[:10])

    by_chain = await reports.usage(start=start, end=end, by=("chain",), every="day", **filters)
    by_method = await reports.usage(start=start, end=end, by=("method",), every="day", **filters)
    totals = await reports.usage(start=start, end=end, every="day", **filters)

    def grouped(
        rows: Iterable[Mapping[str, Any]], column: str, metric: str
    ) -> dict[str, list[int]]:
        series: dict[str, list[int]] = {}
        for row in rows:
            at = day_of(row)
            if at is None:
                continue
            series.setdefault(str(row[column]), [0] * days)[at] += int(row[metric])
        return dict(sorted(series.items()))

    method_rows = list(by_method["rows"])
    busiest: dict[str, int] = defaultdict(int)
    for row in method_rows:
        busiest[str(row["method"])] += int(row["requests"])
    top = set(sorted(busiest, key=lambda m: (-busiest[m], m))[:TOP_METHODS])
    for row in method_rows:
        if row["method"] not in top:
            row["method"] = "other"
    requests = [0] * days
    errors = [0] * days
    p50: list[float | None] = [None] * days
    p95: list[float | None] = [None] * days
    for row in totals["rows"]:
        at = day_of(row)
        if at is None:
            continue
        requests[at] += int(row["requests"])
        errors[at] += int(row["errors"])
        p50[at], p95[at] = row["latency_p50_ms"], row["latency_p95_ms"]
    units = grouped(by_chain["rows"], "chain", "compute_units")
    return {
        "days": labels,
        "source": source,
        "requests_by_chain": grouped(by_chain["rows"], "chain", "requests"),
        "units_by_chain": units,
        "requests_by_method": grouped(method_rows, "method", "requests"),
        "units_by_method": grouped(method_rows, "method", "compute_units"),
        "error_rate": [e / r if r else None for e, r in zip(errors, requests, strict=True)],
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "totals": {
            "requests": sum(requests),
            "errors": sum(errors),
            "compute_units": sum(sum(values) for values in units.values()),
        },
    }

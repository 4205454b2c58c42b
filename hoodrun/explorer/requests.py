"""The request explorer: a project's own RPC request records (``requests_raw``), call by call.

What is recorded of a request is what the gateway's telemetry keeps (``hoodrun.telemetry.rows``):
time, chain, method, outcome and JSON-RPC error code per call; status, latency, upstream, attempts,
bytes, compute units and the client's address (truncated or hashed as configured) per request.
Payloads (a call's params and its answer) are kept only for projects that turned payload capture
on (``capture_payloads``), as excerpts cut at the project's ``capture_bytes`` with secrets
redacted (``hoodrun.gateway.payloads``): a request's detail shows them; searches do not read them.
A detail asked for without payloads (``payloads=False``: a browser key's) does not read them
either, and says why (``WITHHELD``).

Every query names its project (and its org when the caller's key gives it: the first column of
the table's sorting key) and reads ``requests_raw FINAL`` (a batch written twice counts once).
Searches take a time range on ``ts`` (the partition key's column) and are newest first, paged by
an opaque cursor: a keyset on ``(ts, request_id, call_index)``, so a page never moves when
requests arrive. Records are kept ``telemetry.retention.raw_days`` days (14 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from hoodrun.explorer.query import (
    check_limit,
    check_project,
    checked_range,
    decode_cursor,
    encode_cursor,
    iso,
    split_values,
    time_range,
)

if TYPE_CHECKING:
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["CAPTURE_OFF", "WITHHELD", "RequestExplorer"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MAX_CALLS = 65_536  # call_index is a UInt16

_COLUMNS = """toUnixTimestamp64Milli(ts) AS ts_ms, request_id, call_index, batch_size, key_id,
    chain, method, outcome, error_code, status, latency_ms, upstream_latency_ms, upstream,
    attempts, cache_hit, bytes_in, bytes_out, compute_units, client_ip"""
_FROM = f"SELECT {_COLUMNS}\nFROM {{db}}.requests_raw FINAL\nWHERE "
_FROM_DETAIL = (
    f"SELECT {_COLUMNS}, params_excerpt, response_excerpt\nFROM {{db}}.requests_raw FINAL\nWHERE "
)
# Whether a call was captured, without reading what was: a captured call always has params.
_FROM_WITHHELD = (
    f"SELECT {_COLUMNS}, params_excerpt != '' AS captured\nFROM {{db}}.requests_raw FINAL\nWHERE "
)
CAPTURE_OFF = "payload capture is off for this project (or was when this request was made)"
WITHHELD = (
    "payloads are not shown to browser keys (keys with origins); use a server key or the portal"
)
_ORDER = "\nORDER BY ts DESC, request_id DESC, call_index DESC\nLIMIT {limit:UInt32}"
_AFTER = (
    " AND ts <= fromUnixTimestamp64Milli({c_ts:Int64}, 'UTC')"
    " AND (ts, request_id, call_index)"
    " < (fromUnixTimestamp64Milli({c_ts:Int64}, 'UTC'), {c_rid:String}, {c_idx:UInt16})"
)
_DETAIL = f" AND request_id = {{request_id:String}}\nORDER BY call_index\nLIMIT {_MAX_CALLS}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RequestExplorer:
    """Searches and request details over one analytics store's ``requests_raw``.

    ``project`` is the caller's project id; ``org``, when known, its org id (it narrows the read
    to the org's part of the table). Argument errors raise ``ValueError``.
    """

    def __init__(self, store: AnalyticsStore, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.store = store
        self._clock = clock

    def bounds(self, start: str | None, end: str | None) -> tuple[datetime, datetime]:
        """A range from text (``time_range``): by default the last 24 hours."""
        return time_range(start, end, now=self._clock())

    async def search(
        self,
        project: str,
        *,
        start: datetime,
        end: datetime,
        org: str | None = None,
        chain: str | None = None,
        method: str | None = None,
        outcome: str | None = None,
        error_code: int | None = None,
        latency_above: float | None = None,
        key: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Calls newest first, ``limit`` at a time; ``next_cursor`` (``None`` on the last page)
        gives the next page with the same arguments.

        ``chain``, ``method``, ``outcome`` and ``key`` (a key id) take one value or a comma list;
        ``error_code`` a JSON-RPC code; ``latency_above`` milliseconds (calls slower than it).
        """
        check_limit(limit)
        if latency_above is not None and latency_above < 0:
            raise ValueError(f"latency_above must be >= 0 ms, not {latency_above}")
        start, end = checked_range(start, end)
        where, params = _where(project, org, start, end)
        for column, value in (
            ("chain", chain),
            ("method", method),
            ("outcome", outcome),
            ("key_id", key),
        ):
            values = split_values(column, value)
            if values:
                names = []
                for i, item in enumerate(values):
                    params[f"{column}{i}"] = item
                    names.append(f"{{{column}{i}:String}}")
                where += f" AND {column} IN ({', '.join(names)})"
        if error_code is not None:
            where += " AND error_code = {error_code:Int32}"
            params["error_code"] = error_code
        if latency_above is not None:
            where += " AND latency_ms > {latency_above:Float64}"
            params["latency_above"] = float(latency_above)
        if cursor is not None:
            params["c_ts"], params["c_rid"], params["c_idx"] = decode_cursor(
                "requests", cursor, (int, str, int)
            )
            where += _AFTER
        params["limit"] = limit + 1  # one more tells whether there is a next page
        rows = await self.store.query(_FROM + where + _ORDER, params)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor(
                "requests", int(last["ts_ms"]), str(last["request_id"]), int(last["call_index"])
            )
        return {
            "project": project,
            "start": iso(start),
            "end": iso(end),
            "limit": limit,
            "next_cursor": next_cursor,
            "rows": [_call(row) for row in page],
        }

    async def detail(
        self,
        project: str,
        request_id: str,
        *,
        org: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        key: str | None = None,
        payloads: bool = True,
    ) -> dict[str, Any] | None:
        """One request and every call of it (a batch has several), or ``None`` if the project
        has no such request (or no longer: records are kept ``raw_days``).

        Each call has what ``search`` shows of it and, when the project captured payloads, its
        ``params_excerpt`` and ``response_excerpt`` (JSON text, possibly cut; ``None`` when not
        captured); ``payloads_captured`` says whether any call has them, and ``payloads_note``
        why not. Without ``start`` and ``end`` every kept day is read; with them (when the
        request's time is known), only the days of that range. ``key`` (a key id): only a
        request made with that key is found. ``payloads=False``: the excerpts are neither read
        nor shown (``None``), and ``payloads_note`` is ``WITHHELD``; ``payloads_captured`` still
        says whether they were captured.
        """
        check_project(project)
        if not request_id:
            raise ValueError("a request id is required")
        if start is not None and end is not None:
            start, end = checked_range(start, end)
        elif start is not None or end is not None:
            raise ValueError("give both start and end, or neither")
        where, params = _where(project, org, start, end)
        params["request_id"] = request_id
        if key is not None:
            where += " AND key_id = {key:String}"
            params["key"] = key
        select = _FROM_DETAIL if payloads else _FROM_WITHHELD
        rows = await self.store.query(select + where + _DETAIL, params)
        if not rows:
            return None
        first = rows[0]
        if not payloads:
            captured = any(int(row["captured"]) for row in rows)
            note: str | None = WITHHELD
        else:
            # A captured call always has params text ("null" when it sent none).
            captured = any(row["params_excerpt"] for row in rows)
            note = None if captured else CAPTURE_OFF
        return {
            "project": project,
            "request_id": str(first["request_id"]),
            "ts": iso(int(first["ts_ms"]) * 1000),
            "key_id": str(first["key_id"]),
            "chain": str(first["chain"]),
            "batch_size": int(first["batch_size"]),
            "status": int(first["status"]),
            "latency_ms": float(first["latency_ms"]),
            "upstream": str(first["upstream"]),
            "upstream_latency_ms": float(first["upstream_latency_ms"]),
            "attempts": int(first["attempts"]),
            # The HTTP exchange's bytes are on its first call's row: the sums are the request's.
            "bytes_in": sum(int(row["bytes_in"]) for row in rows),
            "bytes_out": sum(int(row["bytes_out"]) for row in rows),
            "compute_units": sum(int(row["compute_units"]) for row in rows),
            "client_ip": str(first["client_ip"]),
            "payloads_captured": captured,
            "payloads_note": note,
            "calls": [
                {
                    "call_index": int(row["call_index"]),
                    "method": str(row["method"]),
                    "outcome": str(row["outcome"]),
                    "error_code": int(row["error_code"]),
                    "cache_hit": bool(int(row["cache_hit"])),
                    "compute_units": int(row["compute_units"]),
                    **_excerpts(row, payloads),
                }
                for row in rows
            ],
        }


def _excerpts(row: dict[str, Any], payloads: bool) -> dict[str, str | None]:
    if not payloads or not row["params_excerpt"]:
        return {"params_excerpt": None, "response_excerpt": None}
    # '' with params: captured, and nothing was sent back (a notification).
    return {
        "params_excerpt": str(row["params_excerpt"]),
        "response_excerpt": str(row["response_excerpt"]),
    }


def _where(
    project: str, org: str | None, start: datetime | None, end: datetime | None
) -> tuple[str, dict[str, Any]]:
    check_project(project)
    clauses = ["project_id = {project:String}"]
    params: dict[str, Any] = {"project": project}
    if org:
        clauses.insert(0, "org_id = {org:String}")
        params["org"] = org
    if start is not None and end is not None:
        clauses.append("ts >= fromUnixTimestamp64Milli({start:Int64}, 'UTC')")
        clauses.append("ts < fromUnixTimestamp64Milli({end:Int64}, 'UTC')")
        # The column holds milliseconds: a bound between two is rounded up, as ts >= bound is.
        params["start"] = -(-(start - _EPOCH) // _MS)
        params["end"] = -(-(end - _EPOCH) // _MS)
    return " AND ".join(clauses), params


def _call(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "ts": iso(int(row["ts_ms"]) * 1000),
        "request_id": str(row["request_id"]),
        "call_index": int(row["call_index"]),
        "batch_size": int(row["batch_size"]),
        "key_id": str(row["key_id"]),
        "chain": str(row["chain"]),
        "method": str(row["method"]),
        "outcome": str(row["outcome"]),
        "error_code": int(row["error_code"]),
        "status": int(row["status"]),
        "latency_ms": float(row["latency_ms"]),
        "upstream_latency_ms": float(row["upstream_latency_ms"]),
        "upstream": str(row["upstream"]),
        "attempts": int(row["attempts"]),
        "cache_hit": bool(int(row["cache_hit"])),
        "bytes_in": int(row["bytes_in"]),
        "bytes_out": int(row["bytes_out"]),
        "compute_units": int(row["compute_units"]),
        "client_ip": str(row["client_ip"]),
    }

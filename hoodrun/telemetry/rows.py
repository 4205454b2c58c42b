"""From the gateway's request records to analytics rows: one row per JSON-RPC call.

This runs in the telemetry writer, off the request's time. A batch becomes one row per call with
the batch's request id and the call's index; whole-request figures (latency, upstream, attempts)
repeat on every row of a batch, and the bytes of the HTTP exchange go on its first row so sums stay
exact. Columns are built column by column into an Arrow table: the fastest way into ClickHouse
(chDB's ``Python(table)``, clickhouse-connect's Arrow insert).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from functools import lru_cache
from operator import attrgetter
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.units import ComputeUnits

__all__ = ["FLAT_FIELDS", "SCHEMA", "RowBuilder", "flatten"]

SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("request_id", pa.string()),
        ("call_index", pa.uint16()),
        ("batch_size", pa.uint16()),
        ("org_id", pa.string()),
        ("project_id", pa.string()),
        ("key_id", pa.string()),
        ("chain", pa.string()),
        ("method", pa.string()),
        ("outcome", pa.string()),
        ("error_code", pa.int32()),
        ("status", pa.uint16()),
        ("latency_ms", pa.float64()),
        ("upstream_latency_ms", pa.float64()),
        ("upstream", pa.string()),
        ("attempts", pa.uint8()),
        ("cache_hit", pa.uint8()),
        ("bytes_in", pa.uint32()),
        ("bytes_out", pa.uint32()),
        ("compute_units", pa.uint32()),
        ("client_ip", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# A record as the writer's queue holds it: a flat tuple of plain values. The collector stops
# tracking such tuples after one look, so a queue of 100,000 of them costs the garbage collector
# nothing, where as many record objects were re-scanned by every full collection.
FLAT_FIELDS = (
    "ts", "request_id", "org_id", "project_id", "key_id", "chain", "method", "reason",
    "error_code", "status", "latency", "upstream_latency", "upstream", "attempts", "cache_hit",
    "bytes_in", "bytes_out", "client_ip", "calls", "methods", "call_results",
)  # fmt: skip
flatten: Callable[[RequestRecord], tuple[Any, ...]] = attrgetter(*FLAT_FIELDS)
_CALLS = FLAT_FIELDS.index("calls")
_RESULTS = FLAT_FIELDS.index("call_results")


class RowBuilder:
    def __init__(
        self,
        units: ComputeUnits,
        client_ip: Literal["truncate", "hash", "full"] = "truncate",
        ip_salt: bytes = b"",
    ) -> None:
        self.units = units
        self._ip: Callable[[str], str]
        if client_ip == "truncate":
            self._ip = _truncate
        elif client_ip == "hash":
            salt = ip_salt

            @lru_cache(maxsize=4096)
            def hashed(ip: str) -> str:
                return hashlib.sha256(salt + ip.encode()).hexdigest()[:16]

            self._ip = hashed
        else:
            self._ip = str

    def table(self, records: Iterable[RequestRecord]) -> pa.Table:
        return self.table_of_flat([flatten(r) for r in records])

    def table_of_flat(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        """The table of records already flattened (``flatten``), as the writer queues them."""
        single: list[tuple[Any, ...]] = []
        batches: list[tuple[Any, ...]] = []
        for r in rows:
            (batches if r[_CALLS] > 1 or r[_RESULTS] is not None else single).append(r)
        if not batches:
            return self._single(single)
        if not single:
            return self._expanded(batches)
        return pa.concat_tables([self._single(single), self._expanded(batches)])

    def _single(self, records: list[tuple[Any, ...]]) -> pa.Table:
        """Records of one call (or none): the common case, built column-wise in C where it can.

        The Python work per record is one ``attrgetter`` call and two dict lookups; a batch of
        10,000 builds in a few milliseconds and holds the GIL only briefly, so the event loop
        serving requests is not starved."""
        n = len(records)
        if n == 0:
            return SCHEMA.empty_table()
        (ts, request_id, org_id, project_id, key_id, chain, method, reason, error_code, status,
         latency, upstream_latency, upstream, attempts, cache_hit, bytes_in, bytes_out,
         client_ip, _, _, _) = zip(*records, strict=True)  # fmt: skip
        units_of = self._units_cache()
        ip_of = self._ip
        methods = [m or "-" for m in method]
        reason_array = pa.array(reason, pa.string())
        code_array = pa.array(error_code, pa.int32())
        outcome = pc.if_else(
            pc.is_valid(reason_array),
            reason_array,
            pc.if_else(pc.not_equal(code_array, 0), "rpc_error", "ok"),
        )
        # Calls the gateway refused reached no node: they weigh nothing.
        units = [
            0 if why is not None else units_of(c, m)
            for c, m, why in zip(chain, methods, reason, strict=True)
        ]
        columns = {
            "ts": pc.floor(pc.multiply(pa.array(ts, pa.float64()), 1000.0))
            .cast(pa.int64())
            .cast(SCHEMA.field("ts").type),
            "request_id": pa.array(request_id, pa.string()),
            "call_index": pa.nulls(n, pa.uint16()).fill_null(0),
            "batch_size": pa.array([1] * n, pa.uint16()),
            "org_id": pa.array(org_id, pa.string()).fill_null(""),
            "project_id": pa.array(project_id, pa.string()).fill_null(""),
            "key_id": pa.array(key_id, pa.string()).fill_null(""),
            "chain": pa.array(chain, pa.string()),
            "method": pa.array(methods, pa.string()),
            "outcome": outcome,
            "error_code": code_array,
            "status": pa.array(status, pa.uint16()),
            "latency_ms": pc.multiply(pa.array(latency, pa.float64()), 1000.0),
            "upstream_latency_ms": pc.multiply(
                pa.array(upstream_latency, pa.float64()).fill_null(0.0), 1000.0
            ),
            "upstream": pa.array(upstream, pa.string()).fill_null(""),
            "attempts": pc.min_element_wise(pa.array(attempts, pa.int64()), 255).cast(pa.uint8()),
            "cache_hit": pa.array(cache_hit, pa.bool_()).cast(pa.uint8()),
            "bytes_in": pa.array(bytes_in, pa.uint32()),
            "bytes_out": pa.array(bytes_out, pa.uint32()),
            "compute_units": pa.array(units, pa.uint32()),
            "client_ip": pa.array([ip_of(ip) for ip in client_ip], pa.string()),
        }
        return pa.Table.from_pydict(columns, schema=SCHEMA)

    def _units_cache(self) -> Callable[[str, str], int]:
        table: dict[tuple[str, str], int] = {}
        units_of = self.units.of

        def lookup(chain: str, method: str) -> int:
            key = (chain, method)
            value = table.get(key)
            if value is None:
                value = table[key] = units_of(chain, method)
            return value

        return lookup

    def _expanded(self, rows: list[tuple[Any, ...]]) -> pa.Table:
        """Batches: one row per call, with the call's own outcome."""
        cols: dict[str, list[object]] = {name: [] for name in COLUMNS}
        (ts, request_id, call_index, batch_size, org_id, project_id, key_id, chain, method,
         outcome, error_code, status, latency, upstream_latency, upstream, attempts, cache_hit,
         bytes_in, bytes_out, units, client_ip) = cols.values()  # fmt: skip
        units_of = self.units.of
        ip_of = self._ip
        for row in rows:
            (r_ts, r_id, r_org, r_project, r_key, r_chain, _, r_reason, r_code, r_status,
             r_latency, r_upstream_latency, r_upstream, r_attempts, r_cache_hit, r_bytes_in,
             r_bytes_out, r_ip, r_calls, r_methods, results) = row  # fmt: skip
            calls = max(r_calls, 1)
            methods = r_methods or ("-",)
            ms = int(r_ts * 1000)
            latency_ms = r_latency * 1000.0
            up_ms = r_upstream_latency * 1000.0 if r_upstream_latency is not None else 0.0
            ip = ip_of(r_ip)
            org, project, key = r_org or "", r_project or "", r_key or ""
            for index in range(calls):
                name = (methods[index] if index < len(methods) else "") or "-"
                if r_reason is not None and results is None:  # refused as a whole
                    result, code = r_reason, r_code
                elif results is not None:
                    code, why = results[index] if index < len(results) else (0, None)
                    result = "ok" if not code else (why or "rpc_error")
                else:
                    code = r_code
                    result = "rpc_error" if code else "ok"
                ts.append(ms)
                request_id.append(r_id)
                call_index.append(index)
                batch_size.append(r_calls)
                org_id.append(org)
                project_id.append(project)
                key_id.append(key)
                chain.append(r_chain)
                method.append(name)
                outcome.append(result)
                error_code.append(code)
                status.append(r_status)
                latency.append(latency_ms)
                upstream_latency.append(up_ms)
                upstream.append(r_upstream or "")
                attempts.append(min(r_attempts, 255))
                cache_hit.append(1 if r_cache_hit else 0)
                first = index == 0
                bytes_in.append(r_bytes_in if first else 0)
                bytes_out.append(r_bytes_out if first else 0)
                # Calls the gateway answered itself reached no node: they weigh nothing.
                units.append(units_of(r_chain, name) if result in ("ok", "rpc_error") else 0)
                client_ip.append(ip)
        return pa.Table.from_pydict(cols, schema=SCHEMA)


@lru_cache(maxsize=4096)
def _truncate(ip: str) -> str:
    """IPv4 to its /24, IPv6 to its /48: enough for abuse and geography, not a person."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)

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
_ONE_CALL = len(FLAT_FIELDS) - 2  # a single call's tuple stops before the per-call tuples
_flat_one = attrgetter(*FLAT_FIELDS[:_ONE_CALL])
_flat_all = attrgetter(*FLAT_FIELDS)


def flatten(record: RequestRecord) -> tuple[Any, ...]:
    """The record as a tuple of plain values. A single call's leaves out ``methods`` and
    ``call_results``, so the tuple holds no tuple and the collector untracks it at once."""
    if record.calls <= 1 and record.call_results is None:
        return _flat_one(record)
    return _flat_all(record)


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
        """The table of records already flattened (``flatten``), as the writer queues them.

        A batch is first split into one flat row per call (its own method and outcome; the
        HTTP exchange's bytes on its first call, so sums stay exact); then every row goes
        through the same column-wise build."""
        calls: list[tuple[Any, ...]] = []
        index: list[int] = []
        sizes: list[int] = []
        for r in rows:
            if len(r) > _ONE_CALL:
                _split(r, calls, index, sizes)
        if not calls:
            return self._columns(rows)
        plain = [r for r in rows if len(r) == _ONE_CALL]
        zeros = [0] * len(plain)
        return self._columns(plain + calls, zeros + index, [1] * len(plain) + sizes)

    def _columns(
        self,
        records: list[tuple[Any, ...]],
        call_index: list[int] | None = None,
        batch_size: list[int] | None = None,
    ) -> pa.Table:
        """Rows of one call each (``call_index`` and ``batch_size`` for calls of batches), built
        column by column in C where it can: Python touches each value once (the transposition);
        outcomes are computed by Arrow, units and addresses once per distinct value."""
        n = len(records)
        if n == 0:
            return SCHEMA.empty_table()
        (ts, request_id, org_id, project_id, key_id, chain, method, reason, error_code, status,
         latency, upstream_latency, upstream, attempts, cache_hit, bytes_in, bytes_out,
         client_ip) = [[r[i] for r in records] for i in range(18)]  # fmt: skip
        reason_array = pa.array(reason, pa.string())
        code_array = pa.array(error_code, pa.int32())
        refused = pc.is_valid(reason_array)
        outcome = pc.if_else(
            refused, reason_array, pc.if_else(pc.not_equal(code_array, 0), "rpc_error", "ok")
        )
        method_array = pa.array(method, pa.string())
        method_array = pc.if_else(pc.equal(method_array, ""), "-", method_array)
        chain_array = pa.array(chain, pa.string())
        # Calls the gateway refused reached no node: they weigh nothing.
        units = pc.if_else(refused, 0, self._units(chain_array, method_array))
        columns = {
            "ts": pc.floor(pc.multiply(pa.array(ts, pa.float64()), 1000.0))
            .cast(pa.int64())
            .cast(SCHEMA.field("ts").type),
            "request_id": pa.array(request_id, pa.string()),
            "call_index": (
                pa.array(call_index, pa.uint16())
                if call_index is not None
                else pa.nulls(n, pa.uint16()).fill_null(0)
            ),
            "batch_size": (
                pa.array(batch_size, pa.uint16())
                if batch_size is not None
                else pa.nulls(n, pa.uint16()).fill_null(1)
            ),
            "org_id": pa.array(org_id, pa.string()).fill_null(""),
            "project_id": pa.array(project_id, pa.string()).fill_null(""),
            "key_id": pa.array(key_id, pa.string()).fill_null(""),
            "chain": chain_array,
            "method": method_array,
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
            "compute_units": units.cast(pa.uint32()),
            "client_ip": self._addresses(pa.array(client_ip, pa.string())),
        }
        return pa.Table.from_pydict(columns, schema=SCHEMA)

    def _addresses(self, ips: pa.Array) -> pa.Array:
        if self._ip is _truncate and not pc.any(pc.match_substring(ips, ":")).as_py():
            return pc.replace_substring_regex(ips, r"\.[0-9]+$", ".0")  # IPv4 /24, in C
        return _map_distinct(ips, self._ip)

    def _units(self, chain: pa.Array, method: pa.Array) -> pa.Array:
        pairs = pc.binary_join_element_wise(chain, method, "\x00").dictionary_encode()
        values = [self.units.of(*pair.split("\x00", 1)) for pair in pairs.dictionary.to_pylist()]
        return pa.array(values, pa.int64()).take(pairs.indices)


def _split(
    r: tuple[Any, ...], calls: list[tuple[Any, ...]], index: list[int], sizes: list[int]
) -> None:
    """One flat row per call of the batch ``r`` (the fields ``_single`` reads)."""
    (ts, request_id, org, project, key, chain, _, reason, code, status, latency, up_latency,
     upstream, attempts, cache_hit, bytes_in, bytes_out, ip, n, methods, results) = r  # fmt: skip
    count = max(n, 1)
    methods = methods or ("-",)
    for i in range(count):
        method = methods[i] if i < len(methods) else ""
        if reason is not None and results is None:  # refused as a whole
            why, call_code = reason, code
        elif results is not None:
            call_code, why = results[i] if i < len(results) else (0, None)
            if not call_code:
                why = None
        else:
            why, call_code = None, code
        first = i == 0
        calls.append(
            (ts, request_id, org, project, key, chain, method, why, call_code, status, latency,
             up_latency, upstream, attempts, cache_hit, bytes_in if first else 0,
             bytes_out if first else 0, ip)
        )  # fmt: skip
        index.append(i)
        sizes.append(n)


def _truncate(ip: str) -> str:
    """IPv4 to its /24, IPv6 to its /48: enough for abuse and geography, not a person.

    The address is the gateway's own parse of the socket or of a trusted X-Forwarded-For, so an
    IPv4 one is cut as text (0.1 µs; the ``ipaddress`` way costs 5 µs, too much per row)."""
    if ip.count(".") == 3 and ":" not in ip:
        return ip[: ip.rfind(".")] + ".0"
    return _truncate_v6(ip)


def _map_distinct(array: pa.Array, function: Callable[[str], str]) -> pa.Array:
    """``function`` of each value, computed once per distinct value."""
    encoded = array.dictionary_encode()
    values = [function(v) for v in encoded.dictionary.to_pylist()]
    return pa.array(values, pa.string()).take(encoded.indices)


@lru_cache(maxsize=4096)
def _truncate_v6(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)

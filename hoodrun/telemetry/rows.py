"""From the gateway's request records to analytics rows: one row per JSON-RPC call.

This runs in the telemetry writer, off the request's time. A batch becomes one row per call with
the batch's request id and the call's index; whole-request figures (latency, upstream, attempts)
repeat on every row of a batch, and the bytes of the HTTP exchange go on its first row so sums stay
exact; payload excerpts (projects that capture them) are per call, '' on other rows. Columns are
built column by column into an Arrow table: the fastest way into ClickHouse (chDB's
``Python(table)``, clickhouse-connect's Arrow insert).
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Callable, Iterable
from functools import lru_cache
from operator import attrgetter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.units import NOTIFICATION, ComputeUnits

__all__ = ["FLAT_FIELDS", "SCHEMA", "ColumnBuffer", "RowBuilder", "conform", "flatten"]

_INT32_MIN, _INT32_MAX, _UINT32_MAX = -(2**31), 2**31 - 1, 2**32 - 1

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
        # Payload capture: JSON text, cut and redacted by the gateway; '' when not captured.
        ("params_excerpt", pa.string()),
        ("response_excerpt", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
# Columns added after the first release, with what rows written before them hold: a batch in
# an older layout (a spool file, a NATS message from a gateway not yet upgraded) gains them.
_ADDED = {"params_excerpt": "", "response_excerpt": ""}
_FIRST = pa.schema([field for field in SCHEMA if field.name not in _ADDED])
# A record as the writer's queue holds it: a flat tuple of plain values. The collector stops
# tracking such tuples after one look, so a queue of 100,000 of them costs the garbage collector
# nothing, where as many record objects were re-scanned by every full collection.
FLAT_FIELDS = (
    "ts", "request_id", "org_id", "project_id", "key_id", "chain", "method", "reason",
    "error_code", "status", "latency", "upstream_latency", "upstream", "attempts", "cache_hit",
    "bytes_in", "bytes_out", "client_ip", "calls", "methods", "call_results", "excerpts",
)  # fmt: skip
_ONE_CALL = len(FLAT_FIELDS) - 3  # a single call's tuple stops before the per-call tuples
_flat_one = attrgetter(*FLAT_FIELDS[:_ONE_CALL])
_flat_all = attrgetter(*FLAT_FIELDS)


def flatten(record: RequestRecord) -> tuple[Any, ...]:
    """The record as a tuple of plain values. A single call's leaves out ``methods``,
    ``call_results`` and ``excerpts``, so the tuple holds no tuple and the collector untracks it
    at once; a captured call's keeps them (split into rows like a batch's)."""
    if record.calls <= 1 and record.call_results is None and record.excerpts is None:
        return _flat_one(record)
    return _flat_all(record)


def conform(table: pa.Table) -> pa.Table:
    """``table`` with ``SCHEMA``'s columns: as it is, or from the first release's layout with
    the columns added since (their defaults). ``ValueError`` for any other columns."""
    if table.schema.equals(SCHEMA):
        return table
    if not table.schema.equals(_FIRST):
        raise ValueError(f"unexpected columns: {table.schema.names}")
    for name, value in _ADDED.items():
        table = table.append_column(
            SCHEMA.field(name), pa.array([value] * table.num_rows, SCHEMA.field(name).type)
        )
    return table


# A queued single call's numbers, packed (native order, no padding): ts, latency and upstream
# latency in seconds; error code, status, attempts, cache hit, bytes in and out; the codes of its
# strings (see ColumnBuffer). NUMBERS names them for the decoding view.
_PACKED = struct.Struct("=dddqqqqqqii")
NUMBERS = np.dtype(
    [("ts", "=f8"), ("latency", "=f8"), ("upstream_latency", "=f8"), ("error_code", "=i8"),
     ("status", "=i8"), ("attempts", "=i8"), ("cache_hit", "=i8"), ("bytes_in", "=i8"),
     ("bytes_out", "=i8"), ("combo", "=i4"), ("ip", "=i4")]
)  # fmt: skip


class ColumnBuffer:
    """Single-call records as packed numbers, appended as they come (the writer's queue).

    Numbers are packed into one growing byte buffer and strings that repeat (org, project,
    key, chain, method, refusal reason, upstream; the client address) become codes of
    per-buffer dictionaries, so a queued record keeps no Python object alive but its request
    id: held records cost the collector and the memory allocator nothing, and the table is built
    from the buffer's memory (``RowBuilder.table_of_columns``). A buffer is filled once and then
    built."""

    __slots__ = ("combos", "ips", "numbers", "request_id")

    def __init__(self) -> None:
        self.numbers = bytearray()
        self.request_id: list[str] = []
        self.combos: dict[tuple[str | None, ...], int] = {}
        self.ips: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.request_id)

    def add(self, r: RequestRecord) -> None:
        """Append a record of a single call (``calls`` <= 1, no ``call_results``, no
        ``excerpts``)."""
        key = (r.org_id, r.project_id, r.key_id, r.chain, r.method, r.reason, r.upstream)
        combos = self.combos
        combo = combos.get(key)
        if combo is None:
            combo = combos[key] = len(combos)
        ips = self.ips
        ip = ips.get(r.client_ip)
        if ip is None:
            ip = ips[r.client_ip] = len(ips)
        upstream_latency = r.upstream_latency
        error_code = r.error_code
        self.numbers += _PACKED.pack(
            r.ts, r.latency, 0.0 if upstream_latency is None else upstream_latency,
            error_code if -(2**63) <= error_code < 2**63 else -32603, r.status,
            r.attempts, r.cache_hit, r.bytes_in, r.bytes_out, combo, ip,
        )  # fmt: skip
        self.request_id.append(r.request_id)


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

        A batch (or a captured call) is first split into one flat row per call (its own method,
        outcome and excerpts; the HTTP exchange's bytes on its first call, so sums stay exact);
        then every row goes through the same column-wise build."""
        calls: list[tuple[Any, ...]] = []
        index: list[int] = []
        sizes: list[int] = []
        captured: tuple[list[str], list[str]] = ([], [])
        for r in rows:
            if len(r) > _ONE_CALL:
                _split(r, calls, index, sizes, captured)
        if not calls:
            return self._columns(rows)
        plain = [r for r in rows if len(r) == _ONE_CALL]
        zeros = [0] * len(plain)
        none = [""] * len(plain)
        return self._columns(
            plain + calls,
            zeros + index,
            [1] * len(plain) + sizes,
            (none + captured[0], none + captured[1]),
        )

    def table_of_columns(self, buffer: ColumnBuffer) -> pa.Table:
        """The table of the single calls a ``ColumnBuffer`` collected: its numbers are read
        in place (no Python object per value), its strings decoded from their codes."""
        n = len(buffer)
        if n == 0:
            return SCHEMA.empty_table()
        view = np.frombuffer(buffer.numbers, dtype=NUMBERS, count=n)

        def column(name: str) -> pa.Array:
            return pa.array(np.ascontiguousarray(view[name]))

        combos = list(buffer.combos)  # in code order
        codes = column("combo")

        def coded(i: int) -> pa.Array:
            return pa.array([combo[i] for combo in combos], pa.string()).take(codes)

        ip_values = pa.array(list(buffer.ips), pa.string())
        return self._assemble(
            n,
            ts=column("ts"),
            request_id=pa.array(buffer.request_id, pa.string()),
            org_id=coded(0),
            project_id=coded(1),
            key_id=coded(2),
            chain=coded(3),
            method=coded(4),
            reason=coded(5),
            upstream=coded(6),
            error_code=column("error_code"),
            status=column("status"),
            latency=column("latency"),
            upstream_latency=column("upstream_latency"),
            attempts=column("attempts"),
            cache_hit=column("cache_hit"),
            bytes_in=column("bytes_in"),
            bytes_out=column("bytes_out"),
            client_ip=self._addresses(ip_values).take(column("ip")),
            call_index=None,
            batch_size=None,
            excerpts=None,
        )

    def _columns(
        self,
        records: list[tuple[Any, ...]],
        call_index: list[int] | None = None,
        batch_size: list[int] | None = None,
        excerpts: tuple[list[str], list[str]] | None = None,
    ) -> pa.Table:
        """Rows of one call each (``call_index`` and ``batch_size`` for calls of batches,
        ``excerpts`` the params and answers of every row when some were captured), built column
        by column in C where it can: Python touches each value once (the transposition);
        outcomes are computed by Arrow, units and addresses once per distinct value."""
        n = len(records)
        if n == 0:
            return SCHEMA.empty_table()
        (ts, request_id, org_id, project_id, key_id, chain, method, reason, error_code, status,
         latency, upstream_latency, upstream, attempts, cache_hit, bytes_in, bytes_out,
         client_ip) = [[r[i] for r in records] for i in range(18)]  # fmt: skip
        return self._assemble(
            n,
            upstream=pa.array(upstream, pa.string()),
            ts=pa.array(ts, pa.float64()),
            request_id=pa.array(request_id, pa.string()),
            org_id=pa.array(org_id, pa.string()),
            project_id=pa.array(project_id, pa.string()),
            key_id=pa.array(key_id, pa.string()),
            chain=pa.array(chain, pa.string()),
            method=pa.array(method, pa.string()),
            reason=pa.array(reason, pa.string()),
            error_code=pa.array(error_code, pa.int64()),
            status=pa.array(status, pa.int64()),
            latency=pa.array(latency, pa.float64()),
            upstream_latency=pa.array(upstream_latency, pa.float64()),
            attempts=pa.array(attempts, pa.int64()),
            cache_hit=pa.array(cache_hit, pa.bool_()).cast(pa.int8()),
            bytes_in=pa.array(bytes_in, pa.int64()),
            bytes_out=pa.array(bytes_out, pa.int64()),
            client_ip=self._addresses(pa.array(client_ip, pa.string())),
            call_index=call_index,
            batch_size=batch_size,
            excerpts=excerpts,
        )

    def _assemble(
        self,
        n: int,
        *,
        ts: pa.Array,
        request_id: pa.Array,
        org_id: pa.Array,
        project_id: pa.Array,
        key_id: pa.Array,
        chain: pa.Array,
        method: pa.Array,
        reason: pa.Array,
        error_code: pa.Array,
        status: pa.Array,
        latency: pa.Array,
        upstream_latency: pa.Array,
        attempts: pa.Array,
        cache_hit: pa.Array,
        bytes_in: pa.Array,
        bytes_out: pa.Array,
        client_ip: pa.Array,
        upstream: pa.Array,
        call_index: list[int] | None,
        batch_size: list[int] | None,
        excerpts: tuple[list[str], list[str]] | None,
    ) -> pa.Table:
        """The table's columns from the records' fields as Arrow arrays (times in seconds)."""
        # JSON-RPC codes are any integer a node sends: ones outside Int32 count as -32603.
        code_array = pc.if_else(
            pc.and_(
                pc.greater_equal(error_code, _INT32_MIN), pc.less_equal(error_code, _INT32_MAX)
            ),
            error_code,
            -32603,
        ).cast(pa.int32())
        refused = pc.is_valid(reason)
        outcome = pc.if_else(
            refused, reason, pc.if_else(pc.not_equal(code_array, 0), "rpc_error", "ok")
        )
        method = pc.if_else(pc.equal(method, ""), "-", method)
        # Calls the gateway refused reached no node: they weigh nothing. Cache hits may cost less.
        units = pc.if_else(refused, 0, self._units(chain, method))
        percent = self.units.cache_hit_percent
        if percent != 100:
            hits = pc.equal(cache_hit, 1)
            cheaper = pc.floor(pc.divide(pc.add(pc.multiply(units, percent), 50), 100))
            units = pc.if_else(hits, pc.cast(cheaper, pa.int64()), units)
        per = self.units.notification_bytes_per_unit
        if per is not None:  # notifications cost their bytes
            by_size = pc.cast(pc.ceil(pc.divide(pc.cast(bytes_out, pa.float64()), per)), pa.int64())
            units = pc.if_else(pc.equal(method, NOTIFICATION), by_size, units)
        columns = {
            "ts": pc.floor(pc.multiply(ts, 1000.0)).cast(pa.int64()).cast(SCHEMA.field("ts").type),
            "request_id": request_id,
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
            "org_id": org_id.fill_null(""),
            "project_id": project_id.fill_null(""),
            "key_id": key_id.fill_null(""),
            "chain": chain,
            "method": method,
            "outcome": outcome,
            "error_code": code_array,
            "status": pc.min_element_wise(status, 65535).cast(pa.uint16()),
            "latency_ms": pc.multiply(latency, 1000.0),
            "upstream_latency_ms": pc.multiply(upstream_latency.fill_null(0.0), 1000.0),
            "upstream": upstream.fill_null(""),
            "attempts": pc.min_element_wise(attempts, 255).cast(pa.uint8()),
            "cache_hit": cache_hit.cast(pa.uint8()),
            "bytes_in": pc.min_element_wise(bytes_in, _UINT32_MAX).cast(pa.uint32()),
            "bytes_out": pc.min_element_wise(bytes_out, _UINT32_MAX).cast(pa.uint32()),
            "compute_units": units.cast(pa.uint32()),
            "client_ip": client_ip,
        }
        if excerpts is None:
            empty = pa.repeat(pa.scalar("", pa.string()), n)
            columns["params_excerpt"] = columns["response_excerpt"] = empty
        else:
            columns["params_excerpt"] = pa.array(excerpts[0], pa.string())
            columns["response_excerpt"] = pa.array(excerpts[1], pa.string())
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
    r: tuple[Any, ...],
    calls: list[tuple[Any, ...]],
    index: list[int],
    sizes: list[int],
    captured: tuple[list[str], list[str]],
) -> None:
    """One flat row per call of the batch ``r`` (the fields ``_columns`` reads), and each
    call's params and answer excerpts in ``captured`` ('' when not captured)."""
    (ts, request_id, org, project, key, chain, _, reason, code, status, latency, up_latency,
     upstream, attempts, cache_hit, bytes_in, bytes_out, ip, n, methods, results,
     excerpts) = r  # fmt: skip
    count = max(n, 1)
    methods = methods or ("-",)
    params, answers = captured
    for i in range(count):
        if excerpts is not None and i < len(excerpts):
            params.append(excerpts[i][0])
            answers.append(excerpts[i][1])
        else:
            params.append("")
            answers.append("")
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

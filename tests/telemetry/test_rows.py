"""The two ways records become rows agree: single calls queued as columns (``ColumnBuffer``)
give exactly the table the record-by-record build gives."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from hoodrun.telemetry.rows import ColumnBuffer, RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.units import ComputeUnits

from .support import call_record

optional_names = st.one_of(st.none(), st.sampled_from(["org_1", "org_2", "prj_9", "key_x", ""]))
records = st.builds(
    call_record,
    st.text("0123456789abcdef", min_size=1, max_size=26),
    ts=st.floats(1.7e9, 1.9e9),
    method=st.sampled_from(["eth_call", "eth_blockNumber", "eth_getLogs", "", "weird_method"]),
    chain=st.sampled_from(["eth", "base", "-"]),
    reason=st.one_of(st.none(), st.sampled_from(["rate_limited", "key_invalid"])),
    error_code=st.one_of(st.just(0), st.integers(-(2**40), 2**40)),
    status=st.sampled_from([200, 401, 429, 502, 503]),
    key_id=optional_names,
    org_id=optional_names,
    project_id=optional_names,
    client_ip=st.sampled_from(["203.0.113.77", "10.0.0.1", "2001:db8::1", "garbage"]),
    latency=st.floats(0, 30),
    upstream=st.one_of(st.none(), st.sampled_from(["eth-a", "eth-b"])),
    upstream_latency=st.one_of(st.none(), st.floats(0, 30)),
    attempts=st.integers(0, 400),
    cache_hit=st.booleans(),
    bytes_in=st.integers(0, 2**33),
    bytes_out=st.integers(0, 2**33),
)


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


@settings(max_examples=60, deadline=None)
@given(st.lists(records, min_size=1, max_size=40))
def test_columns_and_records_give_the_same_rows(batch: list[RequestRecord]) -> None:
    for client_ip in ("truncate", "hash", "full"):
        builder = RowBuilder(ComputeUnits(), client_ip, b"salt")  # type: ignore[arg-type]
        buffer = ColumnBuffer()
        for record in batch:
            buffer.add(record)
        by_columns = builder.table_of_columns(buffer)
        assert by_columns.schema == builder.table(batch).schema
        assert _rows(by_columns) == _rows(builder.table(batch))


def test_out_of_range_numbers_are_kept_in_range() -> None:
    record = call_record("r1", error_code=2**70, attempts=10_000, bytes_in=2**40, status=200)
    buffer = ColumnBuffer()
    buffer.add(record)
    (row,) = _rows(RowBuilder(ComputeUnits()).table_of_columns(buffer))
    assert row["error_code"] == -32603 and row["outcome"] == "rpc_error"
    assert row["attempts"] == 255 and row["bytes_in"] == 2**32 - 1


def test_cache_hits_cost_their_percent_on_both_paths() -> None:
    builder = RowBuilder(ComputeUnits(cache_hit_percent=50))
    hit = call_record("r1", method="eth_call", cache_hit=True)
    miss = call_record("r2", method="eth_call")
    buffer = ColumnBuffer()
    for record in (hit, miss):
        buffer.add(record)
    for table in (builder.table_of_columns(buffer), builder.table([hit, miss])):
        assert [row["compute_units"] for row in _rows(table)] == [13, 26]


def test_notifications_cost_their_bytes_on_both_paths() -> None:
    note = call_record("n1", method="eth_subscription", bytes_out=101, upstream=None)
    call = call_record("c1", method="eth_call", bytes_out=101)
    for per, expected in ((25, [5, 26]), (None, [0, 26])):
        builder = RowBuilder(ComputeUnits(notification_bytes_per_unit=per))
        buffer = ColumnBuffer()
        for record in (note, call):
            buffer.add(record)
        for table in (builder.table_of_columns(buffer), builder.table([note, call])):
            assert [row["compute_units"] for row in _rows(table)] == expected

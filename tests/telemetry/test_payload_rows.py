"""Payload excerpts in ``requests_raw``: per call, '' where not captured, through the writer into
chDB; older layouts (a spool file, a NATS message, a database made before the columns) still fit;
the rollups ignore the excerpts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from hoodrun.config import RetentionConfig
from hoodrun.telemetry.nats import decode, encode
from hoodrun.telemetry.pipeline import StoreTarget, TelemetryWriter
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import SCHEMA, RowBuilder, conform, flatten
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.spool import Spool
from hoodrun.telemetry.store import ChdbStore
from hoodrun.telemetry.units import ComputeUnits
from tests.telemetry.support import call_record

PARAMS = '[{"to":"0x00000000000000000000000000000000000000aa"},"latest"]'
ANSWER = '{"jsonrpc":"2.0","id":1,"result":"0x2a"}'
EXCERPT_COLUMNS = ("params_excerpt", "response_excerpt")


def captured(request_id: str) -> RequestRecord:
    return call_record(request_id, excerpts=((PARAMS, ANSWER),))


def captured_batch(request_id: str) -> RequestRecord:
    return call_record(
        request_id,
        method="batch",
        methods=("eth_chainId", "eth_call", "eth_blockNumber"),
        calls=3,
        call_results=((0, None), (0, None), (0, None)),
        bytes_in=300,
        excerpts=(("[]", '{"result":"0x1"}'), (PARAMS, ANSWER), ("[]", "")),
    )


def excerpts_of(table: pa.Table) -> list[tuple[str, int, str, str]]:
    return [
        (r["request_id"], r["call_index"], r["params_excerpt"], r["response_excerpt"])
        for r in table.to_pylist()
    ]


def test_rows_carry_each_calls_excerpts_and_empty_text_elsewhere() -> None:
    builder = RowBuilder(ComputeUnits())
    plain, single, batch = call_record("plain"), captured("single"), captured_batch("batch")
    assert len(flatten(plain)) < len(flatten(single))  # a captured call is split like a batch
    table = builder.table([plain, single, batch])
    assert table.schema == SCHEMA
    assert sorted(excerpts_of(table)) == [
        ("batch", 0, "[]", '{"result":"0x1"}'),
        ("batch", 1, PARAMS, ANSWER),
        ("batch", 2, "[]", ""),
        ("plain", 0, "", ""),
        ("single", 0, PARAMS, ANSWER),
    ]
    # A captured single call is otherwise the row it would be without its excerpts.
    without = builder.table([call_record("single", ts=single.ts)])
    without = without.drop_columns(list(EXCERPT_COLUMNS))
    assert (
        table.filter(pa.compute.equal(table["request_id"], "single"))
        .drop_columns(list(EXCERPT_COLUMNS))
        .to_pylist()
        == without.to_pylist()
    )
    rows = {(r["request_id"], r["call_index"]): r for r in table.to_pylist()}
    assert [rows["batch", i]["bytes_in"] for i in range(3)] == [300, 0, 0]
    # Only plain rows: the excerpt columns are empty text.
    assert excerpts_of(builder.table([plain])) == [("plain", 0, "", "")]


def _first_layout(table: pa.Table) -> pa.Table:
    """``table`` as a release before payload capture made it."""
    return table.drop_columns(list(EXCERPT_COLUMNS))


def test_batches_in_the_first_layout_gain_the_new_columns(tmp_path: Path) -> None:
    table = RowBuilder(ComputeUnits()).table([call_record("r1"), call_record("r2")])
    old = _first_layout(table)
    assert conform(table) is table
    assert conform(old).equals(table)
    with pytest.raises(ValueError, match="unexpected columns"):
        conform(pa.table({"x": [1]}))
    # A NATS message from a gateway not yet upgraded.
    [(_, payload)] = encode(old, 1 << 20)
    assert decode(payload).equals(table)
    with pytest.raises(ValueError, match="unexpected columns"):
        other = pa.table({"request_id": ["r"], "call_index": pa.array([0], pa.uint16())})
        decode(encode(other, 1 << 20)[0][1])


async def test_excerpts_reach_the_store_and_the_rollups_ignore_them(
    analytics_store: ChdbStore, tmp_path: Path
) -> None:
    rollups = Rollups(analytics_store)
    target = StoreTarget(analytics_store, rollups)
    writer = TelemetryWriter(target, RowBuilder(ComputeUnits()), Spool.claim(tmp_path / "spool"))
    # A batch spooled by the previous release is replayed first, in its old layout.
    old = _first_layout(RowBuilder(ComputeUnits()).table([call_record("spooled")]))
    writer.spool.append(old)
    for record in (call_record("plain"), captured("single"), captured_batch("batch")):
        writer.emit(record)
    await writer.flush()
    await rollups.run()
    rows = await analytics_store.query(
        "SELECT request_id, call_index, params_excerpt, response_excerpt"
        " FROM {db}.requests_raw FINAL ORDER BY request_id, call_index"
    )
    assert [tuple(r.values()) for r in rows] == [
        ("batch", 0, "[]", '{"result":"0x1"}'),
        ("batch", 1, PARAMS, ANSWER),
        ("batch", 2, "[]", ""),
        ("plain", 0, "", ""),
        ("single", 0, PARAMS, ANSWER),
        ("spooled", 0, "", ""),
    ]
    hourly = await analytics_store.query("SELECT sum(requests) AS n FROM {db}.usage_hourly FINAL")
    assert hourly[0]["n"] == 6


async def test_a_database_made_before_the_columns_gains_them(chdb_path: Path) -> None:
    store = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    try:
        await store.setup(RetentionConfig())
        # The table as the first release made it, with a row written then.
        await store.execute("DROP TABLE {db}.requests_raw")
        await store.execute(_first_release_ddl())
        old = _first_layout(RowBuilder(ComputeUnits()).table([call_record("before")]))
        await store.insert(old)
        await store.setup(RetentionConfig())  # the next start: ADD COLUMN IF NOT EXISTS
        await store.setup(RetentionConfig())  # and the one after: nothing to add
        await store.insert(RowBuilder(ComputeUnits()).table([captured("after")]))
        rows = await store.query(
            "SELECT request_id, params_excerpt, response_excerpt FROM {db}.requests_raw FINAL"
            " ORDER BY request_id"
        )
        assert [tuple(r.values()) for r in rows] == [
            ("after", PARAMS, ANSWER),
            ("before", "", ""),
        ]
        columns = await store.query(
            "SELECT name FROM system.columns WHERE database = {d:String}"
            " AND table = 'requests_raw' ORDER BY position",
            {"d": store.database},
        )
        assert [c["name"] for c in columns] == SCHEMA.names
    finally:
        await store.drop()
        await store.aclose()


def _first_release_ddl() -> str:
    from hoodrun.telemetry.schema import ddl

    statement = ddl("x", RetentionConfig())[1].replace("x.requests_raw", "{db}.requests_raw")
    for column in EXCERPT_COLUMNS:
        statement = statement.replace(f",\n    {column} String DEFAULT ''", "")
    assert "excerpt" not in statement
    return statement

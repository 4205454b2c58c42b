"""Log lines and request records for the explorer's tests, inserted as the ingestion does: Arrow
tables with the ``logs`` columns (``message_lower`` is computed by the table)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from hoodrun.config import RetentionConfig
from hoodrun.explorer.schema import LOGS_ARROW_SCHEMA, create_logs_table
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.store import AnalyticsStore
from hoodrun.telemetry.units import ComputeUnits
from tests.telemetry.support import call_record

# Rows are dated in the last few days: requests_raw's TTL runs on the real clock. The day is
# fixed once per test run and handed to the processes the tests start (the CLI's), so a run that
# crosses midnight dates its rows and its queries alike.
_DAY0_ENV = "EXPLORER_TESTS_DAY0"  # not HOODRUN_*: the config reads those
if _DAY0_ENV not in os.environ:
    _today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    os.environ[_DAY0_ENV] = (_today - timedelta(days=3)).isoformat()
DAY0 = datetime.fromisoformat(os.environ[_DAY0_ENV])

LOG_SCHEMA = LOGS_ARROW_SCHEMA


def at(day: int = 0, hour: int = 0, minute: int = 0, second: float = 0) -> datetime:
    return DAY0 + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


def line(
    ts: datetime,
    id: str,
    message: str = "hello",
    *,
    level: str = "info",
    service: str = "api",
    project: str = "prj_a",
    fingerprint: str = "",
    attributes: dict[str, str] | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """One log line as a row of the ``logs`` table."""
    row = {
        "ts": ts,
        "received_at": ts + timedelta(seconds=1),
        "project_id": project,
        "org_id": f"org_{project.removeprefix('prj_')}",
        "key_id": f"key_{project.removeprefix('prj_')}",
        "id": id,
        "level": level,
        "service": service,
        "message": message,
        "fingerprint": fingerprint,
        "stack": "",
        "attributes": list((attributes or {}).items()),
        "trace_id": "",
        "span_id": "",
        "expires": datetime.now(UTC) + timedelta(days=60),
    }
    row.update(changes)
    return row


async def insert_lines(store: AnalyticsStore, lines: list[dict[str, Any]]) -> None:
    await store.insert_into("logs", pa.Table.from_pylist(lines, schema=LOG_SCHEMA))


async def insert_records(store: AnalyticsStore, records: list[RequestRecord]) -> None:
    await store.insert(RowBuilder(ComputeUnits()).table(records))


def record(
    ts: datetime, request_id: str, method: str = "eth_call", **changes: Any
) -> RequestRecord:
    """A single call of project prj_a (org org_a, key key_a) unless ``changes`` say otherwise."""
    fields = {"org_id": "org_a", "project_id": "prj_a", "key_id": "key_a", **changes}
    return call_record(request_id, ts=ts.timestamp(), method=method, **fields)


async def create_tables(store: AnalyticsStore) -> None:
    await store.setup(RetentionConfig())
    await create_logs_table(store)


# --- the CLI tests' data (seeded in a subprocess: chDB allows one process per directory) -------


def cli_lines(project: str, org: str) -> list[dict[str, Any]]:
    """``project``'s lines, and one of prj_b at the same time."""
    mine = {"project": project, "org_id": org}
    return [
        line(at(1, 10), "c1", "database connection refused", level="error", fingerprint="f1",
             attributes={"env": "prod"}, **mine),
        line(at(1, 10, 1), "c2", "database connection refused", level="error", fingerprint="f1",
             **mine),
        line(at(1, 10, 7), "c3", "cache miss for user 7", level="debug", service="worker", **mine),
        line(at(1, 10, 8), "c4", "disk almost full", level="warn", **mine),
        line(at(1, 11), "c5", "out of memory", level="fatal", fingerprint="f2", **mine),
        line(at(1, 10, 2), "b1", "project b's refused line", level="error", project="prj_b"),
    ]  # fmt: skip


def cli_records(project: str, org: str) -> list[RequestRecord]:
    mine = {"project_id": project, "org_id": org}
    return [
        record(at(1, 10), "req1", **mine),
        record(at(1, 10, 5), "req2", "eth_getLogs", error_code=-32000, latency=0.250, **mine),
        record(
            at(1, 10, 6),
            "req3",
            "batch",
            methods=("eth_call", "eth_getBalance"),
            calls=2,
            call_results=((0, None), (-32602, None)),
            **mine,
        ),
        record(at(1, 10, 7), "reqb", project_id="prj_b", org_id="org_b", key_id="key_b"),
        record(at(1, 10, 8), "req4", excerpts=CAPTURED, **mine),
    ]


# A captured call (its project captures payloads): params and answer as the gateway keeps them.
CAPTURED = (
    ('[{"to":"0x00000000000000000000000000000000000000aa"},"latest"]', '{"result":"0x2a"}'),
)

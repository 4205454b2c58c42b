"""Request records for the telemetry tests."""

from __future__ import annotations

import time
from typing import Any

from hoodrun.telemetry.sink import RequestRecord


def call_record(
    request_id: str, *, ts: float | None = None, method: str = "eth_call", **changes: Any
) -> RequestRecord:
    """A single call answered by a node; ``changes`` sets any other field."""
    record = RequestRecord(
        ts=time.time() if ts is None else ts,  # requests_raw's TTL runs on the real clock
        chain="eth",
        method=method,
        methods=(method,),
        calls=1,
        status=200,
        reason=None,
        key_id="key_1",
        org_id="org_1",
        project_id="prj_1",
        client_ip="203.0.113.77",
        latency=0.002,
        upstream="eth-a",
        upstream_latency=0.001,
        attempts=1,
        bytes_in=60,
        bytes_out=40,
        request_id=request_id,
    )
    for name, value in changes.items():
        setattr(record, name, value)
    return record

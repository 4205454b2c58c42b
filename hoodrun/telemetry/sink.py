"""Where the request pipeline hands its record of every request.

The gateway builds one ``RequestRecord`` per HTTP request and calls ``sink.emit(record)``; emit
must never block or raise (queue and drop with a counter when overloaded). The record carries the
key's id, never the key, and payloads only as redacted excerpts for projects that capture them.
A batch stays one record on the hot path; the telemetry writer expands it into one row per call
(``hoodrun.telemetry.rows``), off the request's time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["FanoutSink", "RequestRecord", "TelemetrySink"]


@dataclass(slots=True)
class RequestRecord:
    ts: float  # wall-clock epoch seconds (UTC) when the request arrived
    chain: str
    method: str  # the method of a single call, "batch" for a batch, "-" when unparsed
    methods: tuple[str, ...]  # one entry per call ("" for an invalid entry)
    calls: int
    status: int  # HTTP status returned
    reason: str | None  # the gateway's refusal reason, None when forwarded
    key_id: str | None
    org_id: str | None
    project_id: str | None
    client_ip: str
    latency: float  # seconds in the gateway, end to end
    upstream: str | None
    upstream_latency: float | None
    attempts: int
    bytes_in: int
    bytes_out: int
    rpc_errors: int = 0  # calls answered with a JSON-RPC error
    request_id: str = ""  # unique per HTTP request (also the X-Request-Id header and batch id)
    error_code: int = 0  # JSON-RPC code of a refusal or of a single call's error answer
    # For a batch, one (code, reason) per call: code 0 = answered with a result (or a
    # notification); reason = the gateway's data.reason when it answered the call itself.
    call_results: tuple[tuple[int, str | None], ...] | None = None
    cache_hit: bool = False
    # Payload capture (the project turned it on): one (params, answer) excerpt per call, JSON
    # text cut and redacted by the gateway (hoodrun.gateway.payloads); None when off.
    excerpts: tuple[tuple[str, str], ...] | None = None


class TelemetrySink(Protocol):
    def emit(self, record: RequestRecord) -> None:
        """Take a record; never blocks, never raises."""

    async def aclose(self) -> None:
        """Flush what is queued and stop."""


class FanoutSink:
    """Hands each record to several sinks."""

    def __init__(self, sinks: Sequence[TelemetrySink]) -> None:
        self._sinks = tuple(sinks)

    def emit(self, record: RequestRecord) -> None:
        for sink in self._sinks:
            sink.emit(record)

    async def aclose(self) -> None:
        for sink in self._sinks:
            await sink.aclose()

"""The usage API (``/api/v1/usage``): reports from the analytics store, behind the admin token.

Errors follow the admin API (``{"error": {"code": "...", "message": "..."}}``, rendered by the
``ApiError`` handler of ``create_api_app``): 400 invalid range, grouping, window, source or limit;
401 no or wrong token; 422 a malformed parameter (``limit=ten``); 503 the analytics store is not
open or failed. ``org``, ``project`` and ``key`` are ids (``org_...``, ``prj_...``, ``key_...``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from hoodrun.api.app import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth, org_in_query
from hoodrun.metering.forecast import forecast
from hoodrun.telemetry.reporting import GROUP_COLUMNS, MAX_LIMIT, Reports
from hoodrun.telemetry.store import StoreError

__all__ = [
    "ForecastOut",
    "TopErrorsOut",
    "TopMethodsOut",
    "UsageOut",
    "UsageRowOut",
    "usage_router",
]

log = logging.getLogger("hoodrun.api")


class UsageRowOut(BaseModel):
    """One group and window of a report; group columns not asked for are null."""

    window: datetime | None = Field(default=None, description="Start of the window (UTC).")
    chain: str | None = None
    method: str | None = None
    outcome: str | None = None
    org_id: str | None = None
    project_id: str | None = None
    key_id: str | None = None
    error_code: int | None = None
    requests: int = Field(description="JSON-RPC calls (a batch counts each call).")
    compute_units: int
    errors: int = Field(description="Calls whose outcome is not 'ok'.")
    error_rate: float
    latency_avg_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    bytes_in: int
    bytes_out: int
    cache_hits: int
    cache_hit_ratio: float


class _ReportOut(BaseModel):
    start: datetime
    end: datetime
    source: Literal["raw", "rollup"] = Field(description="What answered: raw rows or rollups.")
    table: str = Field(description="requests_raw, usage_hourly or usage_daily.")


class UsageOut(_ReportOut):
    every: Literal["minute", "hour", "day"] | None
    by: list[str]
    rows: list[UsageRowOut]


class TopMethodsOut(_ReportOut):
    limit: int
    rows: list[UsageRowOut]


class TopErrorRowOut(BaseModel):
    outcome: str = Field(description="rpc_error, or the gateway's refusal reason.")
    error_code: int = Field(description="JSON-RPC error code; 0 when there is none.")
    count: int
    last_seen: datetime = Field(description="To the millisecond from raw rows, else the hour.")
    methods: list[str] = Field(description="Up to three methods it hit most.")


class TopErrorsOut(_ReportOut):
    limit: int
    rows: list[TopErrorRowOut]


class ForecastOut(BaseModel):
    """An org's usage this month (UTC) so far, where it is heading, and whether the last hour
    is far above its normal."""

    org: str
    meter: Literal["requests", "compute_units"]
    period_start: datetime
    period_end: datetime
    used: int = Field(description="Billable so far this period.")
    projected: int = Field(description="At the period's end, at the recent hourly rate.")
    hourly_rate: float = Field(description="The mean of the last 24 complete hours.")
    last_hour: int = Field(description="The last complete hour.")
    typical_hour: float = Field(description="The median hour of the week before it.")
    anomaly: bool = Field(description="The last hour is above 4x the typical hour (and 100).")


_GROUPS = ", ".join(GROUP_COLUMNS)
Org = Annotated[str | None, Query(description="Only this org id (org_...).")]
Project = Annotated[str | None, Query(description="Only this project id (prj_...).")]
Key = Annotated[str | None, Query(description="Only this key id (key_...).")]
Chain = Annotated[str | None, Query(description="Only this chain, e.g. eth.")]
From = Annotated[
    str | None,
    Query(
        alias="from",
        description="Start: ISO-8601 date or date-time (UTC unless offset), or a span ago such "
        "as 24h or 7d. Default: 24 hours before `to`.",
    ),
]
To = Annotated[str | None, Query(description="End (excluded), same forms; default now.")]
SourceParam = Annotated[
    str, Query(description="auto (raw rows while kept, else rollups), raw or rollup.")
]
Limit = Annotated[int, Query(description=f"How many rows, 1 to {MAX_LIMIT}.")]


class Scope:
    """The query parameters every report takes: what to count, over which range, from where."""

    def __init__(
        self,
        org: Org = None,
        project: Project = None,
        key: Key = None,
        chain: Chain = None,
        from_: From = None,
        to: To = None,
        source: SourceParam = "auto",
    ) -> None:
        self.org, self.project, self.key, self.chain = org, project, key, chain
        self.from_, self.to, self.source = from_, to, source

    def filters(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "project": self.project,
            "key": self.key,
            "chain": self.chain,
            "source": self.source,
        }


def usage_router(reports_provider: Callable[[], Reports | None], auth: Auth) -> APIRouter:
    """The usage endpoints; include them in ``create_api_app``'s app (its handlers render the
    errors). ``reports_provider`` returns ``None`` while the analytics store is not open."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 422, 503)
    }
    router = APIRouter(
        prefix="/api/v1/usage",
        tags=["usage"],
        dependencies=[auth.authenticated(), auth.require("usage:read", org_in_query())],
        responses=errors,
    )

    async def answer(
        scope: Scope,
        run: Callable[[Reports, datetime, datetime], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        reports = reports_provider()
        if reports is None:
            raise ApiError(503, "analytics_unavailable", "the analytics store is not open")
        try:
            start, end = reports.bounds(scope.from_, scope.to, scope.source)
            return await run(reports, start, end)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        except StoreError as exc:
            log.warning("usage report failed: %s", exc)
            raise ApiError(
                503, "analytics_unavailable", f"the analytics store failed: {exc}"
            ) from None

    @router.get("")
    async def usage(
        scope: Annotated[Scope, Depends()],
        by: Annotated[
            str, Query(description=f"Group by a comma list of {_GROUPS}; empty for totals.")
        ] = "",
        every: Annotated[
            str | None,
            Query(description="Windows: minute, hour or day; none for one row per group."),
        ] = None,
    ) -> UsageOut:
        """Requests, compute units, errors, latency, bytes and cache hits per group and window."""

        async def run(reports: Reports, start: datetime, end: datetime) -> dict[str, Any]:
            return await reports.usage(start=start, end=end, by=by, every=every, **scope.filters())

        return UsageOut.model_validate(await answer(scope, run))

    @router.get("/forecast")
    async def usage_forecast(
        org: Annotated[str, Query(description="The org id (org_...).")],
        meter: Annotated[
            Literal["requests", "compute_units"], Query(description="What to forecast.")
        ] = "compute_units",
    ) -> ForecastOut:
        """Projected end-of-month usage from the month so far, and an anomaly flag."""
        reports = reports_provider()
        if reports is None:
            raise ApiError(503, "analytics_unavailable", "the analytics store is not open")
        try:
            found = await forecast(reports.store, org, meter, reports.now())
        except StoreError as exc:
            log.warning("usage forecast failed: %s", exc)
            raise ApiError(
                503, "analytics_unavailable", f"the analytics store failed: {exc}"
            ) from None
        return ForecastOut.model_validate(found, from_attributes=True)

    @router.get("/top-methods")
    async def top_methods(scope: Annotated[Scope, Depends()], limit: Limit = 10) -> TopMethodsOut:
        """The methods with the most calls."""

        async def run(reports: Reports, start: datetime, end: datetime) -> dict[str, Any]:
            return await reports.top_methods(start=start, end=end, limit=limit, **scope.filters())

        return TopMethodsOut.model_validate(await answer(scope, run))

    @router.get("/top-errors")
    async def top_errors(scope: Annotated[Scope, Depends()], limit: Limit = 10) -> TopErrorsOut:
        """The most frequent failures by outcome and JSON-RPC error code."""

        async def run(reports: Reports, start: datetime, end: datetime) -> dict[str, Any]:
            return await reports.top_errors(start=start, end=end, limit=limit, **scope.filters())

        return TopErrorsOut.model_validate(await answer(scope, run))

    return router

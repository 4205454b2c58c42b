"""Reading a project's logs and request records (``/logs/v1/...`` on the api listener).

Every route answers for the caller's project only: the one of its API key, or the one the admin
token names with ``?project=`` (``hoodrun.api.projects``). Ranges take ``from`` and ``to`` as the
usage reports do (ISO-8601, or a span ago such as ``24h``); lists are newest first and paged with
``cursor`` (the ``next_cursor`` of the previous page, with the same other parameters).

Log filters: ``level`` (``error``, ``warn,error``, or a minimum: ``level=>=warn``, and also the
literal ``?level>=warn``), ``service`` (one or a comma list), ``attr.KEY=VALUE`` (any number, all
must match), ``q`` (words that must all appear; ``"a phrase"`` in quotes; see
``hoodrun.explorer.query``).

Errors: 400 a bad parameter (the message says which), 401/403 the key, 404 no such request,
422 a malformed number, 503 ``analytics_unavailable`` when the analytics store is not open or
failed. The request explorer shows what the gateway records of each call; a request's detail
adds its params and answers when the project captures payloads (excerpts, secrets redacted).

A browser key (one restricted to origins: ``ProjectScope.browser``) is public, so it does not
see the project's traffic: the log queries and the request list refuse it (403
``browser_key``; it may still send logs), and a request's detail answers it only for a request
made with that same key, without the payloads (``payloads_note`` says why).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from hoodrun.api.app import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.projects import ProjectScope
from hoodrun.explorer.query import MAX_LIMIT, LogFilter, LogQuery
from hoodrun.explorer.requests import RequestExplorer
from hoodrun.telemetry.store import StoreError

if TYPE_CHECKING:
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["logs_query_router"]

log = logging.getLogger("hoodrun.api")
T = TypeVar("T")


# --- responses ----------------------------------------------------------------------------------


class _RangeOut(BaseModel):
    project: str
    start: datetime
    end: datetime = Field(description="Excluded.")


class LogLineOut(BaseModel):
    ts: datetime
    id: str
    level: str
    service: str
    message: str
    fingerprint: str = Field(description="Groups the lines of one error (hex).")
    stack: str
    attributes: dict[str, str]
    trace_id: str
    span_id: str
    key_id: str = Field(description="The key that sent the line.")


class LogSearchOut(_RangeOut):
    limit: int
    next_cursor: str | None = Field(description="The next page's cursor; null on the last.")
    rows: list[LogLineOut]


class TopErrorOut(BaseModel):
    fingerprint: str
    count: int = Field(description="Lines of level error or fatal.")
    fatal: int = Field(description="Of them, fatal.")
    first_seen: datetime = Field(description="Within the range.")
    last_seen: datetime
    sample: str = Field(description="The latest message.")
    services: list[str] = Field(description="Up to three, the most frequent first.")


class TopErrorsOut(_RangeOut):
    limit: int
    rows: list[TopErrorOut]


class ErrorRateRowOut(BaseModel):
    window: datetime = Field(description="Start of the 5-minute window (UTC).")
    total: int
    errors: int = Field(description="Lines of level error or fatal.")
    rate: float = Field(description="errors / total; 0 without lines.")


class ErrorRateOut(_RangeOut):
    every: str
    rows: list[ErrorRateRowOut]


class VolumeRowOut(BaseModel):
    level: str
    lines: int


class VolumeOut(_RangeOut):
    total: int
    rows: list[VolumeRowOut]


class DailyRowOut(BaseModel):
    day: date = Field(description="UTC day.")
    lines: int


class DailyOut(_RangeOut):
    total: int
    rows: list[DailyRowOut]


class RequestCallOut(BaseModel):
    """One JSON-RPC call (a batch's calls share its request id). Payloads, when captured, are
    in the request's detail only."""

    ts: datetime
    request_id: str
    call_index: int
    batch_size: int
    key_id: str
    chain: str
    method: str
    outcome: str = Field(description="ok, rpc_error, or the gateway's refusal reason.")
    error_code: int = Field(description="JSON-RPC error code; 0 when there is none.")
    status: int = Field(description="The HTTP status of the request.")
    latency_ms: float = Field(description="The whole request's, in the gateway.")
    upstream_latency_ms: float
    upstream: str
    attempts: int
    cache_hit: bool
    bytes_in: int = Field(description="The request's bytes, on its first call.")
    bytes_out: int
    compute_units: int
    client_ip: str = Field(description="Truncated or hashed as the gateway is configured.")


class RequestSearchOut(_RangeOut):
    limit: int
    next_cursor: str | None = Field(description="The next page's cursor; null on the last.")
    rows: list[RequestCallOut]


_EXCERPT = (
    'JSON text as captured (secrets "[redacted]"); cut at the project\'s capture_bytes and '
    "then marked …[cut: N bytes]. Null when payloads were not captured."
)


class CallOut(BaseModel):
    call_index: int
    method: str
    outcome: str
    error_code: int
    cache_hit: bool
    compute_units: int
    params_excerpt: str | None = Field(description=f"The call's params. {_EXCERPT}")
    response_excerpt: str | None = Field(
        description=f"Its answer ('' for a notification: none is sent). {_EXCERPT}"
    )


class RequestDetailOut(BaseModel):
    """A request and its calls, as recorded; with their params and answers when the project
    captures payloads."""

    project: str
    request_id: str
    ts: datetime
    key_id: str
    chain: str
    batch_size: int
    status: int
    latency_ms: float
    upstream: str
    upstream_latency_ms: float
    attempts: int
    bytes_in: int
    bytes_out: int
    compute_units: int
    client_ip: str
    payloads_captured: bool = Field(description="The calls' params and answers were captured.")
    payloads_note: str | None = Field(
        description="Why there are none: payload capture was off for the project, or the "
        "caller is a browser key (payloads are not shown to keys with origins)."
    )
    calls: list[CallOut]


async def _answer(run: Callable[[], Awaitable[T]]) -> T:
    """``run``'s result; its argument errors as 400, the store's failures as 503."""
    try:
        return await run()
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    except StoreError as exc:
        log.warning("logs query failed: %s", exc)
        raise ApiError(503, "analytics_unavailable", f"the analytics store failed: {exc}") from None


# --- parameters ---------------------------------------------------------------------------------

From = Annotated[
    str | None,
    Query(
        alias="from",
        description="Start: ISO-8601 date or date-time (UTC unless offset), or a span ago such "
        "as 24h or 7d. Default: 24 hours before `to` (7 days for daily figures).",
    ),
]
To = Annotated[str | None, Query(description="End (excluded), same forms; default now.")]
Limit = Annotated[int, Query(description=f"Rows per page, 1 to {MAX_LIMIT}.")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page.")]
_ATTR = "attr."


async def _log_filter(
    request: Request,
    level: Annotated[
        str | None,
        Query(description="A level, a comma list (warn,error), or a minimum (>=warn)."),
    ] = None,
    service: Annotated[str | None, Query(description="A service, or a comma list.")] = None,
    q: Annotated[
        str | None,
        Query(description='Words that must all appear (whole tokens); "a phrase" as a substring.'),
    ] = None,
) -> LogFilter:
    """The log filters of a request, ``attr.KEY=VALUE`` and ``level>=warn`` included."""
    query = request.query_params
    at_least = query.getlist("level>")  # `?level>=warn` reaches us as the key "level>"
    try:
        if at_least:
            if level is not None or len(at_least) > 1:
                raise ValueError("level: give level>=LEVEL or level=..., once")
            level = f">={at_least[0]}"
        attributes: dict[str, str] = {}
        for name, value in query.multi_items():
            if name.startswith(_ATTR):
                key = name[len(_ATTR) :]
                if not key or key in attributes:
                    raise ValueError(f"{name}: name each attribute once, as attr.KEY=VALUE")
                attributes[key] = value
        return LogFilter.parse(level=level, service=service, attributes=attributes, q=q)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


Filters = Annotated[LogFilter, Depends(_log_filter)]


def logs_query_router(
    store_getter: Callable[[], AnalyticsStore | None],
    scope_dependency: Callable[..., Awaitable[ProjectScope]],
) -> APIRouter:
    """The logs and request explorer routes; include them in ``create_api_app``'s app (its
    handlers render the errors). ``store_getter`` returns ``None`` while the analytics store is
    not open (503); ``scope_dependency`` is ``project_scope(...)``."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 422, 503)
    }
    router = APIRouter(prefix="/logs/v1", tags=["logs"], responses=errors)
    # A default, not an Annotated alias: the alias would be local, and the annotations (strings
    # here) are resolved in the module's namespace.
    scope_of = Depends(scope_dependency)

    async def server_only(scope: ProjectScope = scope_of) -> ProjectScope:
        # Whoever loads a page holds its browser key: the project's logs and its request list
        # would show them everything the project does (server-side too) and who did it.
        if scope.browser:
            raise ApiError(
                403,
                "browser_key",
                "logs and the request list are not shown to browser keys (keys with origins); "
                "use a server key or the portal",
            )
        return scope

    server_scope = Depends(server_only)

    def store() -> AnalyticsStore:
        found = store_getter()
        if found is None:
            raise ApiError(503, "analytics_unavailable", "the analytics store is not open")
        return found

    async def logs(run: Callable[[LogQuery], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        query = LogQuery(store())
        return await _answer(lambda: run(query))

    @router.get("/search")
    async def search(
        filters: Filters,
        scope: ProjectScope = server_scope,
        from_: From = None,
        to: To = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> LogSearchOut:
        """Log lines, newest first. Filters: level, service, attr.KEY=VALUE, q."""

        async def run(query: LogQuery) -> dict[str, Any]:
            start, end = query.bounds(from_, to)
            return await query.search(
                scope.project_id, start=start, end=end, filters=filters, limit=limit, cursor=cursor
            )

        return LogSearchOut.model_validate(await logs(run))

    @router.get("/errors/top")
    async def top_errors(
        filters: Filters,
        scope: ProjectScope = server_scope,
        from_: From = None,
        to: To = None,
        limit: Limit = 20,
    ) -> TopErrorsOut:
        """Errors (levels error and fatal) by fingerprint, the most frequent first."""

        async def run(query: LogQuery) -> dict[str, Any]:
            start, end = query.bounds(from_, to)
            return await query.top_errors(
                scope.project_id, start=start, end=end, filters=filters, limit=limit
            )

        return TopErrorsOut.model_validate(await logs(run))

    @router.get("/stats/error-rate")
    async def error_rate(
        filters: Filters, scope: ProjectScope = server_scope, from_: From = None, to: To = None
    ) -> ErrorRateOut:
        """Lines, error lines and their rate per 5 minutes (every window, zeros included)."""

        async def run(query: LogQuery) -> dict[str, Any]:
            start, end = query.bounds(from_, to)
            return await query.error_rate(scope.project_id, start=start, end=end, filters=filters)

        return ErrorRateOut.model_validate(await logs(run))

    @router.get("/stats/volume")
    async def volume(
        filters: Filters, scope: ProjectScope = server_scope, from_: From = None, to: To = None
    ) -> VolumeOut:
        """Lines per level."""

        async def run(query: LogQuery) -> dict[str, Any]:
            start, end = query.bounds(from_, to)
            return await query.volume(scope.project_id, start=start, end=end, filters=filters)

        return VolumeOut.model_validate(await logs(run))

    @router.get("/stats/daily")
    async def daily(
        filters: Filters, scope: ProjectScope = server_scope, from_: From = None, to: To = None
    ) -> DailyOut:
        """Lines per UTC day (by default the last 7 days)."""

        async def run(query: LogQuery) -> dict[str, Any]:
            start, end = query.day_bounds(from_, to)
            return await query.daily(scope.project_id, start=start, end=end, filters=filters)

        return DailyOut.model_validate(await logs(run))

    @router.get("/requests")
    async def requests(
        scope: ProjectScope = server_scope,
        from_: From = None,
        to: To = None,
        chain: Annotated[str | None, Query(description="A chain, or a comma list.")] = None,
        method: Annotated[str | None, Query(description="A method, or a comma list.")] = None,
        outcome: Annotated[
            str | None, Query(description="ok, rpc_error, a refusal reason; or a comma list.")
        ] = None,
        error_code: Annotated[int | None, Query(description="A JSON-RPC error code.")] = None,
        latency_above: Annotated[
            float | None, Query(description="Only calls slower than this (ms).")
        ] = None,
        key: Annotated[str | None, Query(description="A key id (key_...), or a list.")] = None,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> RequestSearchOut:
        """The project's RPC calls, newest first (what the gateway records; payloads, when
        captured, are in a request's detail). Not for browser keys (403 `browser_key`)."""
        explorer = RequestExplorer(store())

        async def run() -> dict[str, Any]:
            start, end = explorer.bounds(from_, to)
            return await explorer.search(
                scope.project_id,
                org=scope.org_id or None,
                start=start,
                end=end,
                chain=chain,
                method=method,
                outcome=outcome,
                error_code=error_code,
                latency_above=latency_above,
                key=key,
                limit=limit,
                cursor=cursor,
            )

        return RequestSearchOut.model_validate(await _answer(run))

    @router.get("/requests/{request_id}", responses={404: {"model": ErrorOut}})
    async def request_detail(
        request_id: Annotated[str, Path(description="The X-Request-Id the gateway returned.")],
        scope: ProjectScope = scope_of,
        from_: Annotated[
            str | None,
            Query(alias="from", description="Narrow the lookup (default: every kept day)."),
        ] = None,
        to: To = None,
    ) -> RequestDetailOut:
        """A request and every call of it; with each call's params and answer (excerpts,
        secrets redacted) when the project captures payloads (`capture_payloads`). A browser
        key (one with origins) sees only the requests made with it, and never their
        payloads."""
        explorer = RequestExplorer(store())

        async def run() -> dict[str, Any] | None:
            start = end = None
            if from_ is not None or to is not None:
                start, end = explorer.bounds(from_, to)
            # Request ids are not secrets (a process prefix and a counter): a browser key could
            # walk them, so it finds its own requests only.
            return await explorer.detail(
                scope.project_id,
                request_id,
                org=scope.org_id or None,
                start=start,
                end=end,
                key=scope.key_id if scope.browser else None,
                payloads=not scope.browser,
            )

        found = await _answer(run)
        if found is None:
            raise ApiError(404, "not_found", f"no request {request_id!r} in this project")
        return RequestDetailOut.model_validate(found)

    return router

"""The portal's logs pages: a project's application logs and its RPC request records.

``/portal/logs`` searches the application logs (text, level, service, time range, attributes),
newest first with a "more" button (keyset paging, htmx), and shows the top errors by fingerprint,
the error rate per 5 minutes and the volume by level (Chart.js; the series are in the page as
JSON, ``<script type="application/json" id="logs-data">``). ``/portal/logs/requests`` is the
request explorer (time range, chain, method, outcome, error code, latency above, key) and
``/portal/logs/requests/{id}`` a request's detail. The queries and their parameters are those of
the logs API (``hoodrun.api.logs_query``), read in the same way (``hoodrun.explorer``).

One project at a time, of the viewer's org, named by ``?project=prj_...`` (by default the first
by name): a project of another org is not found (404), so no query ever names it; the request
explorer also names the org, as the API does for a key. It needs ``logs:read``; without the
analytics store the pages answer 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.datastructures import QueryParams

from hoodrun.explorer.query import LogFilter, LogQuery, parse_attributes
from hoodrun.explorer.requests import RequestExplorer
from hoodrun.explorer.schema import LEVELS
from hoodrun.store.tables import projects
from hoodrun.telemetry.store import StoreError
from hoodrun.web.context import WebContext
from hoodrun.web.render import render
from hoodrun.web.session import BadRequest, PageNotFound, PortalAuth, Unavailable, Viewer

__all__ = ["LogForm", "RequestForm", "logs_routes"]

log = logging.getLogger("hoodrun.web")
T = TypeVar("T")

LINES_PER_PAGE = 50
CALLS_PER_PAGE = 50
TOP_ERRORS = 10
SPANS = ("15m", "1h", "6h", "24h", "7d", "14d")
LEVEL_CHOICES = (
    ("", "any level"),
    *((level, level) for level in LEVELS),
    (">=warn", "warn and above"),
    (">=error", "error and above"),
)
OUTCOMES = ("ok", "rpc_error", "rate_limited", "quota_exceeded", "method_not_allowed")
_AT_SLACK = timedelta(minutes=1)  # around a request's time, where its detail is looked up
_NOT_OPEN = "Logs and requests are not available: the analytics store is not open."
_FAILED = "Logs and requests are not available right now; try again shortly."


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str


# --- the forms (GET: the URL is the search, so it can be bookmarked and shared) -----------------


def _text(query: QueryParams, name: str) -> str:
    return (query.get(name) or "").strip()


@dataclass(frozen=True, slots=True)
class LogForm:
    """The logs search as the page's form sends it (the API's parameters)."""

    q: str = ""
    level: str = ""
    service: str = ""
    attrs: tuple[str, ...] = ()
    start: str = ""  # from: ISO-8601 or a span ago (24h); default 24h
    end: str = ""  # to: default now

    @classmethod
    def read(cls, query: QueryParams) -> LogForm:
        attrs = tuple(a.strip() for a in query.getlist("attr") if a.strip())
        return cls(
            q=_text(query, "q"),
            level=_text(query, "level"),
            service=_text(query, "service"),
            attrs=attrs,
            start=_text(query, "from"),
            end=_text(query, "to"),
        )

    def filters(self) -> LogFilter:
        """The search's filters; ``ValueError`` says what is wrong."""
        return LogFilter.parse(
            level=self.level or None,
            service=self.service or None,
            attributes=parse_attributes(self.attrs),
            q=self.q or None,
        )

    def params(self) -> list[tuple[str, str]]:
        """The non-empty fields, as URL parameters."""
        pairs = [("q", self.q), ("level", self.level), ("service", self.service)]
        pairs += [("attr", attr) for attr in self.attrs]
        pairs += [("from", self.start), ("to", self.end)]
        return [(name, value) for name, value in pairs if value]


@dataclass(frozen=True, slots=True)
class RequestForm:
    """The request explorer's filters as the page's form sends them."""

    chain: str = ""
    method: str = ""
    outcome: str = ""
    error_code: str = ""
    latency_above: str = ""
    key: str = ""
    start: str = ""
    end: str = ""

    @classmethod
    def read(cls, query: QueryParams) -> RequestForm:
        return cls(
            chain=_text(query, "chain"),
            method=_text(query, "method"),
            outcome=_text(query, "outcome"),
            error_code=_text(query, "error_code"),
            latency_above=_text(query, "latency_above"),
            key=_text(query, "key"),
            start=_text(query, "from"),
            end=_text(query, "to"),
        )

    def options(self) -> dict[str, Any]:
        """``RequestExplorer.search``'s filters; ``ValueError`` says what is wrong."""
        options: dict[str, Any] = {
            name: getattr(self, name) or None for name in ("chain", "method", "outcome", "key")
        }
        try:
            options["error_code"] = int(self.error_code) if self.error_code else None
        except ValueError:
            raise ValueError(f"error code: {self.error_code!r} is not a whole number") from None
        try:
            options["latency_above"] = float(self.latency_above) if self.latency_above else None
        except ValueError:
            raise ValueError(f"latency above: {self.latency_above!r} is not a number") from None
        return options

    def params(self) -> list[tuple[str, str]]:
        pairs = [
            ("chain", self.chain),
            ("method", self.method),
            ("outcome", self.outcome),
            ("error_code", self.error_code),
            ("latency_above", self.latency_above),
            ("key", self.key),
            ("from", self.start),
            ("to", self.end),
        ]
        return [(name, value) for name, value in pairs if value]


def _page_links(
    found: dict[str, Any], project: Project, params: list[tuple[str, str]], more: str, page: str
) -> dict[str, Any]:
    """The links past a page: ``more_url`` (htmx rows) and ``next_url`` (the whole page), or
    ``None`` at the end."""
    after = found["next_cursor"]
    if not after:
        return {"more_url": None, "next_url": None}
    return {
        "more_url": _url(more, project, params, cursor=after),
        "next_url": _url(page, project, params, cursor=after),
    }


def _url(path: str, project: Project, params: list[tuple[str, str]], **extra: str) -> str:
    return f"{path}?{urlencode([('project', project.id), *params, *extra.items()])}"


# --- what the pages show ------------------------------------------------------------------------


def chart_series(rate: dict[str, Any] | None, volume: dict[str, Any] | None) -> dict[str, Any]:
    """The charts' data: per 5-minute window (``labels``: UTC ``MM-DD HH:MM``) the lines, the
    error lines and the rate in percent; per level its lines."""
    windows = rate["rows"] if rate is not None else []
    levels = volume["rows"] if volume is not None else []
    return {
        "windows": [row["window"] for row in windows],
        "labels": [row["window"][5:16].replace("T", " ") for row in windows],
        "total": [row["total"] for row in windows],
        "errors": [row["errors"] for row in windows],
        "rate": [round(row["rate"] * 100, 2) for row in windows],
        "levels": [row["level"] for row in levels],
        "lines": [row["lines"] for row in levels],
    }


def payloads(detail: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The captured excerpts of a request (``params_excerpt``, ``response_excerpt``), per call
    where the calls carry them, else the request's own; ``None`` when none were captured."""

    def shown(value: Any) -> str | None:
        if value is None or value == "":
            return None
        return value if isinstance(value, str) else orjson.dumps(value).decode()

    found = []
    for call in detail.get("calls", []):
        params, answer = shown(call.get("params_excerpt")), shown(call.get("response_excerpt"))
        if params is not None or answer is not None:
            found.append({"call": call.get("call_index"), "params": params, "response": answer})
    if not found:
        params = shown(detail.get("params_excerpt"))
        answer = shown(detail.get("response_excerpt"))
        if params is not None or answer is not None:
            found.append({"call": None, "params": params, "response": answer})
    return found or None


def _log_bounds(query: LogQuery, form: LogForm) -> tuple[LogFilter, datetime, datetime]:
    """The search's filters and range; ``ValueError`` says what is wrong."""
    filters = form.filters()
    start, end = query.bounds(form.start or None, form.end or None)
    return filters, start, end


async def _or_problem(run: Awaitable[T]) -> tuple[T | None, str | None]:
    """``run``'s result, or what is wrong with its arguments (a range too long for a chart)."""
    try:
        return await run, None
    except ValueError as exc:
        return None, str(exc)


# --- routes -------------------------------------------------------------------------------------


def logs_routes(router: APIRouter, ctx: WebContext, auth: PortalAuth) -> None:
    read = Depends(auth.require("logs:read", "see logs and requests"))

    async def org_projects(viewer: Viewer) -> list[Project]:
        stmt = (
            select(projects.c.id, projects.c.name)
            .where(projects.c.org_id == viewer.org_id)
            .order_by(projects.c.name, projects.c.id)
        )
        async with ctx.store.connect() as conn:
            return [Project(row.id, row.name) for row in await conn.execute(stmt)]

    async def chosen(viewer: Viewer, wanted: str) -> tuple[list[Project], Project | None]:
        """The org's projects and the one asked for (only ever one of them)."""
        found = await org_projects(viewer)
        if not wanted:
            return found, found[0] if found else None
        for project in found:
            if project.id == wanted:
                return found, project
        raise PageNotFound("No such project in your org.")

    async def one_project(viewer: Viewer, wanted: str) -> Project:
        _, project = await chosen(viewer, wanted)
        if project is None:
            raise PageNotFound("Your org has no project yet.")
        return project

    def analytics() -> tuple[LogQuery, RequestExplorer]:
        reports = ctx.reports()
        if reports is None:
            raise Unavailable(_NOT_OPEN)
        clock = reports.now
        return LogQuery(reports.store, clock=clock), RequestExplorer(reports.store, clock=clock)

    async def guarded(run: Awaitable[T]) -> T:
        try:
            return await run
        except StoreError as exc:
            log.warning("portal logs query failed: %s", exc)
            raise Unavailable(_FAILED) from None

    # --- application logs

    async def lines_page(
        query: LogQuery,
        project: Project,
        form: LogForm,
        cursor: str | None,
        bounds: tuple[LogFilter, datetime, datetime] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A page of lines and the links to the next (``ValueError`` for a bad filter)."""
        filters, start, end = bounds or _log_bounds(query, form)
        found = await guarded(
            query.search(
                project.id,
                start=start,
                end=end,
                filters=filters,
                limit=LINES_PER_PAGE,
                cursor=cursor,
            )
        )
        return found, _page_links(
            found, project, form.params(), "/portal/logs/lines", "/portal/logs"
        )

    @router.get("/logs")
    async def logs_page(request: Request, viewer: Viewer = read) -> Response:
        query_params = request.query_params
        query, _ = analytics()
        all_projects, project = await chosen(viewer, _text(query_params, "project"))
        form = LogForm.read(query_params)
        context: dict[str, Any] = {
            "projects": all_projects,
            "project": project,
            "form": form,
            "level_choices": LEVEL_CHOICES,
            "spans": SPANS,
            "error": None,
            "found": None,
            "more_url": None,
            "next_url": None,
            "top": None,
            "series": None,
            "chart_problem": None,
            "top_problem": None,
        }
        if project is None:
            return render(request, "portal/logs.html", **context)
        try:
            filters, start, end = bounds = _log_bounds(query, form)
            cursor = _text(query_params, "cursor") or None
            found, links = await lines_page(query, project, form, cursor, bounds)
        except ValueError as exc:
            context["error"] = str(exc)
            return render(request, "portal/logs.html", status=400, **context)
        # The top errors and the charts count every level of the range (the other filters
        # apply): the error rate needs them all.
        every_level = LogFilter((), filters.services, filters.attributes, filters.q)
        span: dict[str, Any] = {"start": start, "end": end, "filters": every_level}
        (top, top_problem), (rate, rate_problem), (volume, volume_problem) = await guarded(
            asyncio.gather(
                _or_problem(query.top_errors(project.id, limit=TOP_ERRORS, **span)),
                _or_problem(query.error_rate(project.id, **span)),
                _or_problem(query.volume(project.id, **span)),
            )
        )
        context.update(
            found=found,
            **links,
            top=top,
            top_problem=top_problem,
            series=chart_series(rate, volume),
            chart_problem=rate_problem or volume_problem,
        )
        return render(request, "portal/logs.html", **context)

    @router.get("/logs/lines")
    async def more_lines(request: Request, viewer: Viewer = read) -> Response:
        """The next page of lines (htmx): its rows and the next "more" row."""
        query, _ = analytics()
        project = await one_project(viewer, _text(request.query_params, "project"))
        form = LogForm.read(request.query_params)
        try:
            cursor = _text(request.query_params, "cursor") or None
            found, links = await lines_page(query, project, form, cursor)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return render(request, "portal/logs_lines.html", found=found, **links)

    # --- the request explorer

    async def calls_page(
        explorer: RequestExplorer,
        viewer: Viewer,
        project: Project,
        form: RequestForm,
        cursor: str | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A page of calls and the links to the next (``ValueError`` for a bad filter)."""
        options = form.options()
        start, end = explorer.bounds(form.start or None, form.end or None)
        found = await guarded(
            explorer.search(
                project.id,
                org=viewer.org_id,
                start=start,
                end=end,
                limit=CALLS_PER_PAGE,
                cursor=cursor,
                **options,
            )
        )
        links = _page_links(
            found, project, form.params(), "/portal/logs/calls", "/portal/logs/requests"
        )
        return found, links

    @router.get("/logs/requests")
    async def requests_page(request: Request, viewer: Viewer = read) -> Response:
        query_params = request.query_params
        _, explorer = analytics()
        all_projects, project = await chosen(viewer, _text(query_params, "project"))
        form = RequestForm.read(query_params)
        keys = []
        if project is not None:
            keys = [r for r in await ctx.keys.list(org=viewer.org_id) if r.project_id == project.id]
        context: dict[str, Any] = {
            "projects": all_projects,
            "project": project,
            "form": form,
            "spans": SPANS,
            "chains": [c.name for c in ctx.config.chains],
            "outcomes": OUTCOMES,
            "keys": keys,
            "error": None,
            "found": None,
            "more_url": None,
            "next_url": None,
        }
        if project is None:
            return render(request, "portal/requests.html", **context)
        try:
            cursor = _text(query_params, "cursor") or None
            found, links = await calls_page(explorer, viewer, project, form, cursor)
        except ValueError as exc:
            context["error"] = str(exc)
            return render(request, "portal/requests.html", status=400, **context)
        context.update(found=found, **links)
        return render(request, "portal/requests.html", **context)

    @router.get("/logs/calls")
    async def more_calls(request: Request, viewer: Viewer = read) -> Response:
        """The next page of calls (htmx): its rows and the next "more" row."""
        _, explorer = analytics()
        project = await one_project(viewer, _text(request.query_params, "project"))
        form = RequestForm.read(request.query_params)
        try:
            cursor = _text(request.query_params, "cursor") or None
            found, links = await calls_page(explorer, viewer, project, form, cursor)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return render(request, "portal/requests_rows.html", found=found, project=project, **links)

    @router.get("/logs/requests/{request_id}")
    async def request_detail(request: Request, request_id: str, viewer: Viewer = read) -> Response:
        _, explorer = analytics()
        project = await one_project(viewer, _text(request.query_params, "project"))
        # ``at`` (the request's time, from the list) narrows the lookup to the days around it;
        # without it every kept day is read.
        start = end = None
        at = _text(request.query_params, "at")
        if at:
            try:
                when = datetime.fromisoformat(at)
            except ValueError:
                raise BadRequest(f"at: {at!r} is not a time") from None
            if when.tzinfo is not None:
                start, end = when - _AT_SLACK, when + _AT_SLACK
        try:
            detail = await guarded(
                explorer.detail(project.id, request_id, org=viewer.org_id, start=start, end=end)
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if detail is None:
            raise PageNotFound(f"No request {request_id} in {project.name} (or no longer kept).")
        return render(
            request,
            "portal/requests_detail.html",
            project=project,
            detail=detail,
            payloads=payloads(detail),
            back=_url("/portal/logs/requests", project, []),
        )

"""OpenMeter's API (``/api/v1``): usage events in, meters and their usage out, so OpenMeter's
clients (the official ``openmeter`` Python package, ``curl`` after its docs) work against HoodRun.

- ``POST /api/v1/events``: one CloudEvent (``application/cloudevents+json``), a JSON array of
  them (``application/cloudevents-batch+json``), or either as ``application/json``; 204, and the
  events are stored (de-duplicated on source and id) when it answers.
- ``GET /api/v1/meters``, ``GET /api/v1/meters/{meterIdOrSlug}``: the meters (id = slug).
- ``GET`` and ``POST /api/v1/meters/{meterIdOrSlug}/query``: usage per window, subject and group.
  ``filterGroupBy`` is taken as ``filterGroupBy[chain]=eth`` (OpenAPI deepObject), as JSON, or as
  the Python dict text the official client sends (``filterGroupBy={'chain': 'eth'}``).
- ``GET /api/v1/meters/{meterIdOrSlug}/subjects``: subjects with usage.

Behind the admin bearer token. Errors are RFC 7807 ``application/problem+json``
``{type, title, status, detail, instance}``: 400 invalid event (naming the field) or query, 401 no
or wrong token, 404 unknown meter, 413 body too large, 415 content type, 503 analytics store down.
The routes render their own errors (``_ProblemRoute``), so the rest of the app keeps its format.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from hoodrun.api.app import ApiError
from hoodrun.api.rbac import Auth
from hoodrun.metering.events import InvalidEvent
from hoodrun.metering.meters import (
    WINDOW_SIZES,
    MeterError,
    MeterQuery,
    MeterService,
    UnknownMeter,
    meter_query,
)
from hoodrun.telemetry.store import StoreError

__all__ = [
    "EVENT_CONTENT_TYPES",
    "MAX_BODY_BYTES",
    "CloudEventIn",
    "MeterOut",
    "MeterQueryBody",
    "MeterQueryResultOut",
    "MeterQueryRowOut",
    "ProblemOut",
    "openmeter_router",
]

log = logging.getLogger("hoodrun.api")

PROBLEM = "application/problem+json"
ONE, BATCH, JSON = (
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "application/json",
)
EVENT_CONTENT_TYPES = (ONE, BATCH, JSON)
MAX_BODY_BYTES = 16 * 1024 * 1024
_MAX_FILTER_TEXT = 8192  # a filterGroupBy object in the query string
_DEEP_FILTER = re.compile(r"^filterGroupBy\[([^\]]+)\](?:\[\])?$")


# --- problems ----------------------------------------------------------------------------------


class ProblemOut(BaseModel):
    """An RFC 7807 problem."""

    type: str = Field(default="about:blank", description="Always about:blank.")
    title: str = Field(description="The HTTP status's phrase.")
    status: int
    detail: str = Field(description="What is wrong, naming the field or parameter.")
    instance: str | None = Field(default=None, description="The request's path.")


class Problem(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def problem(status: int, detail: str, instance: str | None = None) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


class _ProblemRoute(APIRoute):
    """A route whose errors (its own, the admin token's, FastAPI's validation) are problems."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Response:
            path = request.url.path
            try:
                return await handler(request)
            except Problem as exc:
                return problem(exc.status, exc.detail, path)
            except ApiError as exc:  # the admin token's check
                return problem(exc.status_code, exc.message, path)
            except RequestValidationError as exc:
                found = [
                    f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}"
                    for err in exc.errors()
                ]
                return problem(400, "; ".join(found) or "invalid request", path)

        return run


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    schema = {"schema": {"$ref": "#/components/schemas/ProblemOut"}}
    return {
        code: {
            "model": ProblemOut,
            "description": HTTPStatus(code).phrase,
            "content": {PROBLEM: schema},
        }
        for code in codes
    }


# --- bodies ------------------------------------------------------------------------------------


class CloudEventIn(BaseModel):
    """A CloudEvents 1.0 event as OpenMeter takes it (documentation; checked by the metering
    module, which names each invalid field)."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str = Field(min_length=1, description="Who sent it; (source, id) is unique.")
    type: str = Field(min_length=1, description="Matched against the meters' event_type.")
    subject: str = Field(min_length=1, description="Whose usage: an org, customer, ...")
    time: str | None = Field(default=None, description="RFC 3339; default: when it arrives.")
    datacontenttype: Literal["application/json"] | None = None
    dataschema: str | None = None
    data: dict[str, Any] | None = Field(default=None, description="A JSON object.")


class MeterOut(BaseModel):
    """A meter as OpenMeter shows it (read only: meters are declared in the config)."""

    id: str = Field(description="The slug.")
    slug: str
    name: str
    description: str | None = None
    aggregation: Literal["SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"]
    eventType: str
    valueProperty: str | None = None
    groupBy: dict[str, str]
    createdAt: str
    updatedAt: str
    annotations: dict[str, Any] | None = None


class MeterQueryRowOut(BaseModel):
    value: float
    windowStart: str
    windowEnd: str
    subject: str | None = Field(description="Null unless filtered or grouped by subject.")
    groupBy: dict[str, str | None]


class MeterQueryResultOut(BaseModel):
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    windowSize: Literal["MINUTE", "HOUR", "DAY", "MONTH"] | None = None
    data: list[MeterQueryRowOut]


class MeterQueryBody(BaseModel):
    """``POST .../query``: the parameters of the GET form in a JSON body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    client_id: str | None = Field(default=None, alias="clientId", description="Ignored.")
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    window_size: str | None = Field(default=None, alias="windowSize")
    window_time_zone: str | None = Field(default=None, alias="windowTimeZone")
    subject: list[str] = Field(default_factory=list)
    filter_customer_id: list[str] = Field(default_factory=list, alias="filterCustomerId")
    filter_group_by: dict[str, list[str] | str] = Field(default_factory=dict, alias="filterGroupBy")
    advanced_meter_group_by_filters: dict[str, Any] | None = Field(
        default=None, alias="advancedMeterGroupByFilters"
    )
    group_by: list[str] = Field(default_factory=list, alias="groupBy")


_WINDOWS = ", ".join(WINDOW_SIZES)
From = Annotated[str | None, Query(alias="from", description="Start (RFC 3339), included.")]
To = Annotated[str | None, Query(description="End (RFC 3339), excluded; default now.")]
WindowSize = Annotated[
    str | None, Query(alias="windowSize", description=f"{_WINDOWS}; none: one row per group.")
]
WindowTimeZone = Annotated[
    str | None, Query(alias="windowTimeZone", description="IANA zone the windows align to; UTC.")
]
Subjects = Annotated[list[str] | None, Query(alias="subject", description="Only these subjects.")]
GroupBy = Annotated[
    list[str] | None,
    Query(alias="groupBy", description="Group names of the meter, or subject; repeated."),
]
FilterGroupBy = Annotated[
    str | None,
    Query(
        alias="filterGroupBy",
        description="filterGroupBy[name]=value (repeat for any of several), or one object as "
        "JSON or Python dict text: {'name': 'value'}.",
    ),
]


def _filter_object(text: str) -> dict[str, Any]:
    """A filterGroupBy object from JSON or from the official client's Python dict text."""
    if len(text) > _MAX_FILTER_TEXT:
        raise Problem(400, f"filterGroupBy: longer than {_MAX_FILTER_TEXT} characters")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            value = ast.literal_eval(text)  # literals only: never evaluates code
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            # TypeError: a literal that cannot be built, like a dict with a list for a key
            value = None
    if not isinstance(value, dict):
        raise Problem(
            400, "filterGroupBy: use filterGroupBy[name]=value, or an object like {'name': 'value'}"
        )
    return value


def _query_filters(request: Request) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key == "filterGroupBy":
            for name, wanted in _filter_object(value).items():
                listed = wanted if isinstance(wanted, list) else [wanted]
                if not all(isinstance(item, str) for item in listed):
                    raise Problem(400, f"filterGroupBy[{name}]: a string or a list of strings")
                filters.setdefault(str(name), []).extend(listed)
        elif match := _DEEP_FILTER.match(key):
            filters.setdefault(match.group(1), []).append(value)
    return filters


def _split(values: list[str] | None) -> list[str]:
    """Repeated parameters, each possibly a comma list."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


# --- the router --------------------------------------------------------------------------------


def openmeter_router(service: MeterService, auth: Auth) -> APIRouter:
    """OpenMeter's event and meter endpoints over ``service``: sending events is the platform's
    (``usage:write``); reading meters ``usage:read``, a member's for their org's subject."""
    router = APIRouter(
        prefix="/api/v1",
        tags=["openmeter"],
        dependencies=[auth.authenticated()],
        responses=_responses(400, 401, 503),
        route_class=_ProblemRoute,
    )

    async def answer(run: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await run
        except UnknownMeter as exc:
            raise Problem(404, f"no meter {exc.slug!r}: GET /api/v1/meters lists them") from None
        except (MeterError, InvalidEvent) as exc:
            raise Problem(400, str(exc)) from None
        except StoreError as exc:
            log.warning("metering: the analytics store failed: %s", exc)
            raise Problem(503, f"the analytics store failed: {exc}") from None

    async def one_subject(request: Request) -> str | None:
        # A member reads their own org's usage: one subject, theirs; several are an operator's.
        if request.method == "POST":
            try:
                body = await request.json()
            except ValueError:
                return None
            given = body.get("subject") if isinstance(body, dict) else None
            subjects = set(given) if isinstance(given, list) else set()
        else:
            subjects = set(request.query_params.getlist("subject"))
        found = subjects.pop() if len(subjects) == 1 else None
        return found if isinstance(found, str) else None

    platform_reads = [auth.require("usage:read")]
    org_reads = [auth.require("usage:read", one_subject)]

    @router.post(
        "/events",
        status_code=204,
        dependencies=[auth.require("usage:write")],
        response_class=Response,
        responses=_responses(413, 415),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    ONE: {"schema": CloudEventIn.model_json_schema()},
                    BATCH: {"schema": {"type": "array", "items": CloudEventIn.model_json_schema()}},
                    JSON: {
                        "schema": {
                            "oneOf": [
                                CloudEventIn.model_json_schema(),
                                {"type": "array", "items": CloudEventIn.model_json_schema()},
                            ]
                        }
                    },
                },
            }
        },
    )
    async def ingest_events(request: Request) -> Response:
        """Ingest usage events (CloudEvents 1.0): stored when this answers 204, duplicates
        (same source and id) counted once. An invalid event refuses the whole batch."""
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind not in EVENT_CONTENT_TYPES:
            raise Problem(
                415, f"send events as {', '.join(EVENT_CONTENT_TYPES)}, not {kind or 'no type'}"
            )
        too_large = Problem(413, f"the body is over {MAX_BODY_BYTES} bytes: send smaller batches")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_large  # before reading it
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise too_large
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Problem(400, f"the body is not JSON: {exc}") from None
        if kind == BATCH and not isinstance(parsed, list):
            raise Problem(400, f"{BATCH} is a JSON array of events")
        if kind == ONE and not isinstance(parsed, dict):
            raise Problem(400, f"{ONE} is one event, a JSON object; send arrays as {BATCH}")
        batch = isinstance(parsed, list)
        await answer(service.events.ingest(parsed if batch else [parsed], batch=batch))
        return Response(status_code=204)

    @router.get("/meters", response_model=list[MeterOut], dependencies=platform_reads)
    async def list_meters(
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(alias="pageSize", ge=1, le=1000)] = 100,
        order: Annotated[Literal["ASC", "DESC"], Query()] = "ASC",
        order_by: Annotated[str, Query(alias="orderBy", description="key, aggregation")] = "key",
        include_deleted: Annotated[
            bool, Query(alias="includeDeleted", description="No meter is ever deleted.")
        ] = False,
    ) -> JSONResponse:
        """The meters: the built-ins (requests, compute_units) and the config's."""
        meters = service.describe_all()
        if order_by == "aggregation":
            meters.sort(key=lambda meter: (meter["aggregation"], meter["slug"]))
        else:  # the rest are the slug's order (every meter has the same times)
            meters.sort(key=lambda meter: meter["slug"])
        if order == "DESC":
            meters.reverse()
        return JSONResponse(meters[(page - 1) * page_size : page * page_size])

    @router.get(
        "/meters/{meterIdOrSlug}",
        response_model=MeterOut,
        responses=_responses(404),
        dependencies=platform_reads,
    )
    async def get_meter(meterIdOrSlug: str) -> JSONResponse:
        """One meter, by slug (its id is its slug)."""
        return JSONResponse(await answer(_describe(service, meterIdOrSlug)))

    async def run_query(slug: str, query: MeterQuery) -> JSONResponse:
        return JSONResponse(await answer(service.query(slug, query)))

    def build(**options: Any) -> MeterQuery:
        try:
            return meter_query(**options)
        except MeterError as exc:
            raise Problem(400, str(exc)) from None

    def unsupported(customers: list[str] | None, advanced: object) -> None:
        if customers:
            raise Problem(400, "filterCustomerId: HoodRun has no customers; filter by subject")
        if advanced:
            raise Problem(400, "advancedMeterGroupByFilters is not supported; use filterGroupBy")

    @router.get(
        "/meters/{meterIdOrSlug}/query",
        response_model=MeterQueryResultOut,
        responses=_responses(404),
        dependencies=org_reads,
    )
    async def query_meter(
        request: Request,
        meterIdOrSlug: str,
        from_: From = None,
        to: To = None,
        window_size: WindowSize = None,
        window_time_zone: WindowTimeZone = None,
        subject: Subjects = None,
        group_by: GroupBy = None,
        filter_group_by: FilterGroupBy = None,
        filter_customer_id: Annotated[
            list[str] | None, Query(alias="filterCustomerId", include_in_schema=False)
        ] = None,
        advanced: Annotated[
            str | None, Query(alias="advancedMeterGroupByFilters", include_in_schema=False)
        ] = None,
        client_id: Annotated[str | None, Query(alias="clientId", include_in_schema=False)] = None,
    ) -> JSONResponse:
        """Usage of a meter per window, subject and group (OpenMeter's query)."""
        unsupported(filter_customer_id, advanced)
        query = build(
            start=from_,
            end=to,
            window_size=window_size,
            window_time_zone=window_time_zone,
            subjects=subject or [],
            group_by=_split(group_by),
            filter_group_by=_query_filters(request),
        )
        return await run_query(meterIdOrSlug, query)

    @router.post(
        "/meters/{meterIdOrSlug}/query",
        response_model=MeterQueryResultOut,
        responses=_responses(404),
        dependencies=org_reads,
    )
    async def query_meter_post(
        meterIdOrSlug: str,
        body: MeterQueryBody,
    ) -> JSONResponse:
        """The same query with its parameters in a JSON body."""
        unsupported(body.filter_customer_id, body.advanced_meter_group_by_filters)
        query = build(
            start=body.from_,
            end=body.to,
            window_size=body.window_size,
            window_time_zone=body.window_time_zone,
            subjects=body.subject,
            group_by=_split(body.group_by),
            filter_group_by=body.filter_group_by,
        )
        return await run_query(meterIdOrSlug, query)

    @router.get(
        "/meters/{meterIdOrSlug}/subjects",
        response_model=list[str],
        responses=_responses(404),
        dependencies=platform_reads,
    )
    async def meter_subjects(
        meterIdOrSlug: str,
        from_: From = None,
        to: To = None,
    ) -> JSONResponse:
        """The subjects with usage of the meter (in the range, when given)."""
        query = build(start=from_, end=to)
        return JSONResponse(await answer(service.subjects(meterIdOrSlug, query.start, query.end)))

    return router


async def _describe(service: MeterService, slug: str) -> dict[str, Any]:
    return service.describe(slug)

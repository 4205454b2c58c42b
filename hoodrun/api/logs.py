"""``POST /logs/v1``: application logs sent by a project, with its API key.

The body (JSON or MessagePack: one line, an array, or ``{"logs": [...]}``) and the checks are
``hoodrun.explorer.lines``'; the limits and the write are ``hoodrun.explorer.ingest``'s. ``202
{"accepted": n}`` once the lines are stored. Errors are the API's ``{"error": {"code",
"message"}}``, with ``errors`` (``[{"index", "field", "message"}]``) on 422 and a
``Retry-After`` header (seconds) on 429 and 503: 400 malformed body, 401 no or invalid key, 403
the admin token (logs are sent with a project's key), 413 body or batch too large, 415 content
type, 422 invalid lines, 429 rate limit or daily quota, 503 queue full or store down.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from hoodrun.api.models import ErrorOut
from hoodrun.api.projects import ProjectScope
from hoodrun.explorer.ingest import LogIngestor
from hoodrun.explorer.lines import JSON_TYPES, MSGPACK_TYPES, BodyTooLarge, InvalidLogs, LogsError

__all__ = ["AcceptedOut", "LogLineIn", "logs_router"]


class LogLineIn(BaseModel):
    """One log line (documentation: the checks are ``hoodrun.explorer.lines``', which name
    every invalid field)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(description="Cut at logs.max_message_bytes (noted in _truncated).")
    level: str | int | None = Field(
        default="info",
        description="trace, debug, info, warn, error, fatal (and aliases, syslog 0-7, "
        "Python 10-50).",
    )
    timestamp: str | float | None = Field(
        default=None, description="RFC 3339, or epoch seconds or ms; default: on arrival."
    )
    ts: str | float | None = Field(default=None, description="timestamp's other name.")
    service: str | None = None
    id: str | None = Field(
        default=None, description="1-128 characters; a line with the same id and time is kept once."
    )
    stack: str | None = None
    attributes: dict[str, str | int | float | bool | None] | None = Field(
        default=None, description="At most 64 keys of scalar values."
    )
    trace_id: str | None = None
    span_id: str | None = None


class AcceptedOut(BaseModel):
    accepted: int = Field(description="Lines stored.")


def _refusal(exc: LogsError) -> JSONResponse:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if isinstance(exc, InvalidLogs):
        error["errors"] = [problem.as_dict() for problem in exc.errors]
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse({"error": error}, status_code=exc.status, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    """The body, read no further than ``limit`` bytes (``BodyTooLarge`` beyond)."""
    too_large = BodyTooLarge(f"the body is over {limit} bytes: send smaller batches")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large  # before reading it
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def logs_router(
    ingestor: LogIngestor, scope_dependency: Callable[..., Awaitable[ProjectScope]]
) -> APIRouter:
    """``POST /logs/v1`` into ``ingestor``, for the project of the caller's API key
    (``scope_dependency`` is ``project_scope(...)``)."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 413, 415, 422, 429, 503)
    }
    router = APIRouter(prefix="/logs", tags=["logs"], responses=errors)
    # A default, not an Annotated alias: the alias would be local, and the annotations (strings
    # here) are resolved in the module's namespace.
    scope_of = Depends(scope_dependency)
    line = LogLineIn.model_json_schema()
    body_schema = {
        "oneOf": [
            line,
            {"type": "array", "items": line},
            {
                "type": "object",
                "properties": {"logs": {"type": "array", "items": line}},
                "required": ["logs"],
            },
        ]
    }

    @router.post(
        "/v1",
        status_code=202,
        response_model=AcceptedOut,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {kind: {"schema": body_schema} for kind in JSON_TYPES + MSGPACK_TYPES},
            }
        },
    )
    async def ingest_logs(request: Request, caller: ProjectScope = scope_of) -> JSONResponse:
        """Store log lines of the key's project (all or none); answers once they are stored."""
        content_type = request.headers.get("content-type", "")
        try:
            body = await _body(request, ingestor.config.max_body_bytes)
            accepted = await ingestor.ingest(caller, body, content_type)
        except LogsError as exc:
            return _refusal(exc)
        return JSONResponse({"accepted": accepted}, status_code=202)

    return router

"""JSON-RPC 2.0 request parsing: single calls, batches and notifications."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from hoodrun.gateway.errors import BatchTooLarge, InvalidRequest, ParseError

__all__ = ["Call", "parse_body"]


@dataclass(slots=True)
class Call:
    """One entry of a request. ``method`` is None when the entry is not a valid call."""

    obj: Any
    method: str | None
    id: Any
    notification: bool


def _call(obj: Any) -> Call:
    if not isinstance(obj, dict):
        return Call(obj, None, None, False)
    request_id = obj.get("id")
    notification = "id" not in obj
    method = obj.get("method")
    params = obj.get("params", ())
    valid = (
        obj.get("jsonrpc") == "2.0"
        and isinstance(method, str)
        and method != ""
        and isinstance(params, list | dict | tuple)
        and (request_id is None or (isinstance(request_id, str | int | float)))
        and not isinstance(request_id, bool)
    )
    if not valid:
        # The spec answers an invalid entry with id null unless its id is usable.
        usable_id = (
            request_id
            if isinstance(request_id, str | int) and not isinstance(request_id, bool)
            else None
        )
        return Call(obj, None, usable_id, False)
    return Call(obj, method, request_id, notification)


def parse_body(body: bytes, max_batch: int) -> tuple[bool, list[Call]]:
    """Parse a request body into ``(is_batch, calls)``.

    Raises ``ParseError`` for bad JSON, ``InvalidRequest`` for an empty batch or a body that is
    neither an object nor an array, ``BatchTooLarge`` past ``max_batch`` calls. Invalid entries
    inside a batch come back as calls with ``method=None`` (answered with -32600 each).
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ParseError("Parse error: the request body is not valid JSON") from None
    if isinstance(data, list):
        if not data:
            raise InvalidRequest("Invalid Request: empty batch; send at least one call")
        if len(data) > max_batch:
            raise BatchTooLarge(
                f"Invalid Request: batch of {len(data)} calls is larger than the {max_batch} "
                "allowed; split it into smaller batches"
            )
        return True, [_call(item) for item in data]
    if isinstance(data, dict):
        return False, [_call(data)]
    raise InvalidRequest()

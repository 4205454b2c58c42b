"""Refusals the gateway itself gives, each a JSON-RPC error with a fitting HTTP status.

    GatewayError                    (one root; ``status``, ``code``, ``reason`` on every class)
    ├── ParseError                  400  -32700  parse_error
    ├── InvalidRequest              400  -32600  invalid_request
    │   └── BatchTooLarge           413  -32600  batch_too_large
    ├── BodyTooLarge                413  -32600  body_too_large
    ├── Unauthorized                401  -32016  key_missing / key_invalid / key_revoked / ...
    ├── Forbidden                   403  -32016  chain_not_allowed / origin_not_allowed / ip_denied
    │   └── MethodNotAllowed        403  -32004  method_not_allowed
    ├── NeedsWebSocket              400  -32601  use_websocket (eth_subscribe over HTTP)
    ├── UnknownChain                404  -32001  unknown_chain
    ├── NotFound                    404  -32601  not_found (a path the gateway does not serve)
    ├── MethodNotPost               405  -32600  use_post
    ├── LimitExceeded               400  -32005  logs_range_exceeded / logs_results_exceeded
    ├── RateLimited                 429  -32005  rate_limited / upstream_rate_limited
    ├── UpstreamFailed              502  -32603  upstream_error
    ├── Unavailable                 503  -32002  no_healthy_upstream / key_store_unavailable
    └── UpstreamTimedOut            504  -32015  upstream_timeout

Codes follow JSON-RPC 2.0 and EIP-1474 (-32001 resource not found, -32002 resource unavailable,
-32004 method not supported, -32005 limit exceeded) plus the gateway codes peers use for
unauthorized (-32016) and node timeout (-32015). ``data.reason`` is a stable string to match on.
Messages say what to fix and never contain the API key.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

__all__ = [
    "BatchTooLarge",
    "BodyTooLarge",
    "Forbidden",
    "GatewayError",
    "InvalidParams",
    "InvalidRequest",
    "LimitExceeded",
    "MethodNotAllowed",
    "MethodNotPost",
    "NeedsWebSocket",
    "NotFound",
    "ParseError",
    "QuotaExceeded",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "UnknownChain",
    "UpstreamFailed",
    "UpstreamTimedOut",
    "error_object",
]


class GatewayError(Exception):
    """The gateway refused the request."""

    status: ClassVar[int] = 500
    code: ClassVar[int] = -32603
    default_reason: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or "error").strip()
        self.reason = reason or self.default_reason
        self.headers = headers or []
        super().__init__(self.message)

    def to_object(self, request_id: Any = None) -> dict[str, Any]:
        return error_object(self.code, self.message, request_id, {"reason": self.reason})

    def body(self, request_id: Any = None) -> bytes:
        return orjson.dumps(self.to_object(request_id))


def error_object(
    code: int, message: str, request_id: Any = None, data: Any = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class ParseError(GatewayError):
    """Parse error: the body is not valid JSON."""

    status, code, default_reason = 400, -32700, "parse_error"


class InvalidRequest(GatewayError):
    """Invalid Request: expected a JSON-RPC 2.0 call object or a non-empty array of them."""

    status, code, default_reason = 400, -32600, "invalid_request"


class InvalidParams(GatewayError):
    """Invalid params: the call's params are not what the method takes."""

    status, code, default_reason = 400, -32602, "invalid_params"


class BatchTooLarge(InvalidRequest):
    """Invalid Request: the batch has more calls than allowed; split it into smaller batches."""

    status, default_reason = 413, "batch_too_large"


class BodyTooLarge(GatewayError):
    """Invalid Request: the request body is larger than allowed."""

    status, code, default_reason = 413, -32600, "body_too_large"


class Unauthorized(GatewayError):
    """Unauthorized: send a valid API key in the path (/{chain}/v1/{KEY}), as Authorization:
    Bearer, or as X-Api-Key."""

    status, code, default_reason = 401, -32016, "key_invalid"


class Forbidden(GatewayError):
    """Forbidden: this key may not make this request."""

    status, code, default_reason = 403, -32016, "forbidden"


class MethodNotAllowed(Forbidden):
    """Method not allowed on this key's plan."""

    code, default_reason = -32004, "method_not_allowed"


class NeedsWebSocket(GatewayError):
    """Subscriptions need a WebSocket."""

    status, code, default_reason = 400, -32601, "use_websocket"


class UnknownChain(GatewayError):
    """Unknown chain."""

    status, code, default_reason = 404, -32001, "unknown_chain"


class NotFound(GatewayError):
    """Not found: send JSON-RPC to POST /{chain}/v1/{KEY}."""

    status, code, default_reason = 404, -32601, "not_found"


class MethodNotPost(GatewayError):
    """Use POST with a JSON-RPC body (or OPTIONS for a CORS preflight)."""

    status, code, default_reason = 405, -32600, "use_post"


class LimitExceeded(GatewayError):
    """Limit exceeded: the request asks for more than the plan allows."""

    status, code, default_reason = 400, -32005, "limit_exceeded"


class RateLimited(GatewayError):
    """Rate limit exceeded: slow down and retry after the Retry-After seconds."""

    status, code, default_reason = 429, -32005, "rate_limited"


class QuotaExceeded(GatewayError):
    """Quota exceeded: the plan's monthly quota is used up until it resets or the plan changes."""

    status, code, default_reason = 429, -32005, "quota_exceeded"


class UpstreamFailed(GatewayError):
    """Upstream error: the node did not give a usable answer; retry shortly."""

    status, code, default_reason = 502, -32603, "upstream_error"


class Unavailable(GatewayError):
    """Service unavailable: no healthy node for this chain right now; retry shortly."""

    status, code, default_reason = 503, -32002, "no_healthy_upstream"


class UpstreamTimedOut(GatewayError):
    """Upstream timeout: the node did not answer in time; retry shortly."""

    status, code, default_reason = 504, -32015, "upstream_timeout"

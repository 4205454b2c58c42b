"""Upstream failures. Each class's docstring is its default message.

::

    UpstreamError                      502  root; ``maybe_delivered`` says whether the node may
    │                                       have received (and acted on) the request
    ├── UpstreamConnectError           502  connect refused or failed: certainly not delivered
    ├── UpstreamTimeout                504  no answer in time (delivered unless it timed out
    │                                       while waiting for or opening a connection)
    ├── UpstreamDisconnected           502  connection dropped after the request was written
    ├── UpstreamProtocolError          502  garbled HTTP from the node
    ├── UpstreamBadResponse            502  HTTP 5xx or a body that is not JSON
    │   └── UpstreamRateLimited        503  the node answered HTTP 429
    ├── NoHealthyUpstream              503  no upstream of the chain is eligible right now
    └── ChainIdMismatch                 —   an upstream serves another chain (fatal at start)

``http_status``, ``rpc_code`` and ``code`` are what the gateway's error renderer puts on the wire.
"""

from __future__ import annotations

__all__ = [
    "ChainIdMismatch",
    "NoHealthyUpstream",
    "UpstreamBadResponse",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """The upstream node failed to answer."""

    http_status: int = 502
    rpc_code: int = -32603
    code: str = "upstream_error"
    #: The node may have received the request: a write must not be replayed blindly.
    maybe_delivered: bool = True
    #: The upstream's name, once a ChainPool knows which one failed.
    upstream: str | None = None

    def __init__(self, message: str | None = None, *, maybe_delivered: bool | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        if maybe_delivered is not None:
            self.maybe_delivered = maybe_delivered


class UpstreamConnectError(UpstreamError):
    """Could not connect to the upstream node."""

    code = "upstream_unreachable"
    maybe_delivered = False


class UpstreamTimeout(UpstreamError):
    """The upstream node did not answer in time."""

    http_status = 504
    code = "upstream_timeout"


class UpstreamDisconnected(UpstreamError):
    """The upstream node closed the connection before answering."""

    code = "upstream_disconnected"


class UpstreamProtocolError(UpstreamError):
    """The upstream node sent an invalid HTTP response."""

    code = "upstream_protocol_error"


class UpstreamBadResponse(UpstreamError):
    """The upstream node answered with an error status or a body that is not JSON."""

    code = "upstream_bad_response"

    def __init__(
        self, message: str | None = None, *, status: int = 0, maybe_delivered: bool | None = None
    ) -> None:
        super().__init__(message, maybe_delivered=maybe_delivered)
        self.status = status  # the node's HTTP status


class UpstreamRateLimited(UpstreamBadResponse):
    """The upstream node is rate-limiting the gateway (HTTP 429)."""

    http_status = 503
    rpc_code = -32005
    code = "upstream_rate_limited"
    maybe_delivered = False  # refused, not processed


class NoHealthyUpstream(UpstreamError):
    """No healthy upstream is available for this chain."""

    http_status = 503
    code = "no_healthy_upstream"
    maybe_delivered = False

    def __init__(self, message: str | None = None, *, need: str | None = None) -> None:
        super().__init__(message)
        self.need = need  # the capability no healthy upstream offered, if that was the cause


class ChainIdMismatch(UpstreamError):
    """An upstream reports a different chain id than the configured one."""

    code = "chain_id_mismatch"
    maybe_delivered = False

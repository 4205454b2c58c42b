"""The upstream side of the hot path: per-chain pools of JSON-RPC nodes.

``ChainPool`` (one per chain) checks its nodes' health, picks the best one per request, retries
on others and guards writes; ``HttpPool`` is the lean keep-alive HTTP/1.1 client under it.
"""

from hoodrun.upstreams._http import HttpPool
from hoodrun.upstreams.breaker import BreakerState, CircuitBreaker
from hoodrun.upstreams.errors import (
    ChainIdMismatch,
    NoHealthyUpstream,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from hoodrun.upstreams.health import HealthReport, check_upstream
from hoodrun.upstreams.pool import ChainPool, UpstreamReply
from hoodrun.upstreams.upstream import Upstream

__all__ = [
    "BreakerState",
    "ChainIdMismatch",
    "ChainPool",
    "CircuitBreaker",
    "HealthReport",
    "HttpPool",
    "NoHealthyUpstream",
    "Upstream",
    "UpstreamBadResponse",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRateLimited",
    "UpstreamReply",
    "UpstreamTimeout",
    "check_upstream",
]

"""Prometheus metrics of the gateway, fed by the telemetry sink and by scrape-time collectors.

Label values are bounded: chain names come from the config, methods are kept only when they look
like JSON-RPC method names and fewer than ``MAX_METHODS`` distinct ones were seen (the rest count
as ``other``). No label ever carries a key, a key id or an address.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hoodrun.telemetry.sink import RequestRecord

__all__ = ["GatewayMetrics", "MetricsSink"]

MAX_METHODS = 300
_METHOD = re.compile(r"^[a-z][a-z0-9]{0,15}_[A-Za-z0-9_]{1,64}$")
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _PoolCollector(Collector):
    """Upstream health, head, breaker state and chain head, read from the pools at scrape time."""

    def __init__(self, snapshots: Callable[[], Iterable[tuple[str, int | None, list[Any]]]]):
        self._snapshots = snapshots

    def collect(self) -> Iterator[GaugeMetricFamily]:
        healthy = GaugeMetricFamily(
            "hoodrun_upstream_healthy",
            "1 if the upstream takes traffic",
            labels=["chain", "upstream"],
        )
        head = GaugeMetricFamily(
            "hoodrun_upstream_head_block",
            "Latest block seen on the upstream",
            labels=["chain", "upstream"],
        )
        lag = GaugeMetricFamily(
            "hoodrun_upstream_lag_blocks",
            "Blocks behind the chain's best head",
            labels=["chain", "upstream"],
        )
        breaker = GaugeMetricFamily(
            "hoodrun_upstream_breaker_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["chain", "upstream"],
        )
        latency = GaugeMetricFamily(
            "hoodrun_upstream_latency_ewma_seconds",
            "Smoothed upstream latency",
            labels=["chain", "upstream"],
        )
        chain_head = GaugeMetricFamily(
            "hoodrun_chain_head_block", "Best head block of the chain's upstreams", labels=["chain"]
        )  # fmt: skip
        for chain, best, upstreams in self._snapshots():
            if best is not None:
                chain_head.add_metric([chain], best)
            for up in upstreams:
                labels = [chain, up["name"]]
                healthy.add_metric(labels, 1 if up["healthy"] else 0)
                if up.get("head") is not None:
                    head.add_metric(labels, up["head"])
                if up.get("lag") is not None:
                    lag.add_metric(labels, up["lag"])
                breaker.add_metric(labels, int(up["breaker"]))
                if up.get("latency_ms") is not None:
                    latency.add_metric(labels, up["latency_ms"] / 1000.0)
        yield from (healthy, head, lag, breaker, latency, chain_head)


class GatewayMetrics:
    """All gateway metrics in one registry (one per gateway, so tests can run many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "hoodrun_requests",
            "JSON-RPC calls by chain, method and HTTP status (each call of a batch counts)",
            ["chain", "method", "status"],
            registry=r,
        )
        self.http_requests = Counter(
            "hoodrun_http_requests",
            "HTTP requests by chain and status",
            ["chain", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "hoodrun_request_duration_seconds",
            "Time in the gateway per HTTP request",
            ["chain"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "hoodrun_upstream_request_duration_seconds",
            "Upstream answer time per forwarded request",
            ["chain", "upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "hoodrun_refusals",
            "Requests the gateway refused itself, by reason (rate_limited, key_invalid, ...)",
            ["chain", "reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "hoodrun_rate_limit_refusals",
            "Requests refused by a rate limit, by the limit's scope",
            ["chain", "scope"],
            registry=r,
        )
        self.upstream_attempts = Counter(
            "hoodrun_upstream_retries",
            "Extra upstream attempts made after a failure",
            ["chain"],
            registry=r,
        )
        self._methods: set[str] = set()
        self._children: dict[tuple[str, ...], Any] = {}

    def watch_pools(
        self, snapshots: Callable[[], Iterable[tuple[str, int | None, list[Any]]]]
    ) -> None:
        self.registry.register(_PoolCollector(snapshots))

    def method_label(self, method: str) -> str:
        if method in self._methods:
            return method
        if len(self._methods) < MAX_METHODS and _METHOD.match(method):
            self._methods.add(method)
            return method
        return "other"

    def child(self, metric: Any, *labels: str) -> Any:
        # labels() costs ~1 µs; a dict of children is a few hundred ns.
        key = (metric._name, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsSink:
    """The telemetry sink that feeds ``/metrics``."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def emit(self, record: RequestRecord) -> None:
        m = self._m
        status = str(record.status)
        chain = record.chain
        child = m.child
        child(m.http_requests, chain, status).inc()
        for method in record.methods:
            child(m.requests, chain, m.method_label(method) if method else "invalid", status).inc()
        child(m.latency, chain).observe(record.latency)
        if record.upstream is not None and record.upstream_latency is not None:
            child(m.upstream_latency, chain, record.upstream).observe(record.upstream_latency)
        if record.attempts > 1:
            child(m.upstream_attempts, chain).inc(record.attempts - 1)
        if record.reason is not None:
            child(m.refusals, chain, record.reason).inc()

    async def aclose(self) -> None:
        return None

"""Prometheus metrics of the gateway, fed by the telemetry sink and by scrape-time collectors.

Label values are bounded: chain names come from the config, methods are kept only when they look
like JSON-RPC method names and fewer than ``MAX_METHODS`` distinct ones were seen (the rest count
as ``other``). No label ever carries a key, a key id or an address.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from hoodrun import __version__
from hoodrun.telemetry.sink import RequestRecord

__all__ = ["GatewayMetrics", "MetricsSink"]

MAX_METHODS = 300
_METHOD = re.compile(r"^[a-z][a-z0-9]{0,15}_[A-Za-z0-9_]{1,64}$")
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


# Per upstream: (metric name, help, the snapshot's field, scale). Absent values are not exported
# (a node without ``net_peerCount`` or a closed ``txpool`` namespace has no series).
_UPSTREAM_GAUGES = (
    ("hoodrun_upstream_healthy", "1 if the upstream takes traffic", "healthy", 1.0),
    ("hoodrun_upstream_cordoned", "1 if an operator cordoned the upstream", "cordoned", 1.0),
    ("hoodrun_upstream_head_block", "Latest block seen on the upstream", "head", 1.0),
    ("hoodrun_upstream_lag_blocks", "Blocks behind the chain's best head", "lag", 1.0),
    ("hoodrun_upstream_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
     "breaker", 1.0),
    ("hoodrun_upstream_latency_ewma_seconds", "Smoothed upstream latency", "latency_ms", 0.001),
    ("hoodrun_upstream_check_latency_seconds", "Round trip of the last health check",
     "check_latency_ms", 0.001),
    ("hoodrun_upstream_peers", "Peers of the node (net_peerCount)", "peers", 1.0),
    ("hoodrun_upstream_syncing", "1 if the node says it is syncing (eth_syncing)", "syncing",
     1.0),
    ("hoodrun_upstream_txpool_pending", "Pending transactions in the node's pool (txpool_status)",
     "txpool_pending", 1.0),
    ("hoodrun_upstream_txpool_queued", "Queued transactions in the node's pool (txpool_status)",
     "txpool_queued", 1.0),
)  # fmt: skip


class _PoolCollector(Collector):
    """The node monitor's view of every upstream (health, head, lag, breaker, peers, sync state,
    transaction pool, client version, latency) and each chain's head, read from the pools at
    scrape time."""

    def __init__(self, snapshots: Callable[[], Iterable[tuple[str, int | None, list[Any]]]]):
        self._snapshots = snapshots

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["chain", "upstream"]
        gauges = [
            (GaugeMetricFamily(name, doc, labels=labels), field, scale)
            for name, doc, field, scale in _UPSTREAM_GAUGES
        ]
        info = GaugeMetricFamily(
            "hoodrun_upstream_info",
            "Always 1; the node's client version (web3_clientVersion) as a label",
            labels=["chain", "upstream", "client_version"],
        )
        chain_head = GaugeMetricFamily(
            "hoodrun_chain_head_block", "Best head block of the chain's upstreams", labels=["chain"]
        )  # fmt: skip
        attempts = CounterMetricFamily(
            "hoodrun_upstream_attempts",
            "Request attempts sent to the upstream, by result (failed: transport error, timeout, "
            "5xx, 429 or a garbled answer)",
            labels=["chain", "upstream", "result"],
        )
        for chain, best, upstreams in self._snapshots():
            if best is not None:
                chain_head.add_metric([chain], best)
            for up in upstreams:
                names = [chain, up["name"]]
                for family, field, scale in gauges:
                    value = up.get(field)
                    if value is not None:
                        family.add_metric(names, float(value) * scale)
                info.add_metric([*names, up.get("client_version") or "unknown"], 1)
                for result, count in up.get("attempts", {}).items():
                    attempts.add_metric([*names, result], count)
        yield from (family for family, _, _ in gauges)
        yield info
        yield attempts
        yield chain_head


class _Counter:
    """A labelled counter as a plain dict: an increment is a dict update, no lock.

    prometheus_client's ``Counter.inc`` takes a mutex and costs about 1.2 µs, ``labels()`` about
    1 µs more; the gateway does several per request on one event loop, where a lock protects
    nothing. Scrapes read the dict through ``_Collector`` and render with prometheus_client.
    """

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        return family


class _Histogram:
    """A labelled histogram as plain lists (same reasoning as ``_Counter``)."""

    __slots__ = ("bounds", "doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]):
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        # per label set: [count per bucket (+Inf last)..., sum]
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        slots = self.values.get(labels)
        if slots is None:
            slots = self.values[labels] = [0.0] * (len(self.bounds) + 2)
        slots[bisect_left(self.bounds, value)] += 1
        slots[-1] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for labels, slots in list(self.values.items()):
            running = 0.0
            buckets = []
            for bound, count in zip((*self.bounds, float("inf")), slots[:-1], strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric(labels, buckets, slots[-1])
        return family


class _Collector(Collector):
    def __init__(self, metrics: list[_Counter | _Histogram]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        for metric in self._metrics:
            yield metric.family()


class _Fixed(Collector):
    def __init__(self, families: list[InfoMetricFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[InfoMetricFamily]:
        yield from self._families


class GatewayMetrics:
    """All gateway metrics in one registry (one per gateway, so tests can run many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = _Counter(
            "hoodrun_requests",
            "JSON-RPC calls by chain, method and HTTP status (each call of a batch counts)",
            ("chain", "method", "status"),
        )
        self.http_requests = _Counter(
            "hoodrun_http_requests", "HTTP requests by chain and status", ("chain", "status")
        )
        self.latency = _Histogram(
            "hoodrun_request_duration_seconds",
            "Time in the gateway per HTTP request",
            ("chain",),
            _LATENCY_BUCKETS,
        )
        self.upstream_latency = _Histogram(
            "hoodrun_upstream_request_duration_seconds",
            "Upstream answer time per forwarded request",
            ("chain", "upstream"),
            _LATENCY_BUCKETS,
        )
        self.refusals = _Counter(
            "hoodrun_refusals",
            "Requests the gateway refused itself, by reason (rate_limited, key_invalid, ...)",
            ("chain", "reason"),
        )
        self.rate_limited = _Counter(
            "hoodrun_rate_limit_refusals",
            "Requests refused by a rate limit, by the limit's scope",
            ("chain", "scope"),
        )
        self.upstream_retries = _Counter(
            "hoodrun_upstream_retries", "Extra upstream attempts made after a failure", ("chain",)
        )
        self.cache_lookups = _Counter(
            "hoodrun_cache_lookups", "Response cache lookups (hit, miss)", ("chain", "result")
        )
        self.ws_sessions = _Counter(
            "hoodrun_ws_sessions", "WebSocket connections opened", ("chain",)
        )
        self.hedges = _Counter(
            "hoodrun_hedged_requests", "Reads also sent to a second upstream", ("chain",)
        )
        self.hedge_wins = _Counter(
            "hoodrun_hedge_wins", "Hedged reads the second upstream answered first", ("chain",)
        )
        self.coalesced = _Counter(
            "hoodrun_coalesced_requests",
            "Reads answered by an identical read's upstream call already in flight",
            ("chain",),
        )
        self.registry.register(
            _Collector(
                [
                    self.requests,
                    self.http_requests,
                    self.latency,
                    self.upstream_latency,
                    self.refusals,
                    self.rate_limited,
                    self.upstream_retries,
                    self.cache_lookups,
                    self.coalesced,
                    self.hedges,
                    self.hedge_wins,
                    self.ws_sessions,
                ]
            )
        )
        ProcessCollector(registry=self.registry)  # process_start_time_seconds, CPU, memory
        build = InfoMetricFamily("hoodrun_build", "HoodRun's version", {"version": __version__})
        self.registry.register(_Fixed([build]))
        self._methods: set[str] = set()

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
        m.http_requests.inc((chain, status))
        requests = m.requests
        for method in record.methods:
            requests.inc((chain, m.method_label(method) if method else "invalid", status))
        m.latency.observe((chain,), record.latency)
        if record.upstream is not None and record.upstream_latency is not None:
            m.upstream_latency.observe((chain, record.upstream), record.upstream_latency)
        if record.attempts > 1:
            m.upstream_retries.inc((chain,), record.attempts - 1)
        if record.reason is not None:
            m.refusals.inc((chain, record.reason))

    async def aclose(self) -> None:
        return None

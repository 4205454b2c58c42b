"""The request pipeline, assembled once and run in order for every request:

    route → client IP → chain → key → scopes → parse → limits → upstream → telemetry

Everything here answers from memory except the upstream call, a cache-miss key lookup and (when
configured) one Redis round trip for the limits. Every refusal is a JSON-RPC error object with a
fitting HTTP status (see ``errors.py``); node answers to well-formed calls pass through unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hoodrun.config import ChainConfig, Config, PlanConfig
from hoodrun.gateway.blocks import capability_refusal, need_of, pin_tags
from hoodrun.gateway.cache import RedisCache
from hoodrun.gateway.chain import ChainState, loads
from hoodrun.gateway.clientip import IpPolicy
from hoodrun.gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    MethodNotPost,
    NeedsWebSocket,
    NotFound,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnknownChain,
    UpstreamFailed,
    UpstreamTimedOut,
    error_object,
)
from hoodrun.gateway.http import Request, Response
from hoodrun.gateway.jsonrpc import Call, parse_body
from hoodrun.gateway.metrics import GatewayMetrics
from hoodrun.gateway.payloads import excerpts
from hoodrun.gateway.policy import Policy
from hoodrun.gateway.reads import Reads, error_code
from hoodrun.gateway.ws import CURRENT_SESSION, WebSockets
from hoodrun.keys.record import KeyRecord
from hoodrun.keys.verifier import KeyDenied, KeyStoreDown, KeyVerifier
from hoodrun.limits import Bucket, Decision, Limiter, LimiterUnavailable, MemoryLimiter
from hoodrun.logs import REQUEST_ID
from hoodrun.metering.entitlements import Entitlements
from hoodrun.telemetry.sink import RequestRecord, TelemetrySink
from hoodrun.upstreams import (
    ChainIdMismatch,
    ChainPool,
    NoHealthyUpstream,
    Upstream,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)

__all__ = ["Gateway"]

log = logging.getLogger("hoodrun.gateway")

ReadinessCheck = Callable[[], Awaitable[None]]

_KEY_MESSAGES = {
    "key_missing": "Unauthorized: no API key; put it in the path (/{chain}/v1/{KEY}), "
    "or send Authorization: Bearer {KEY} or X-Api-Key: {KEY}",
    "key_invalid": "Unauthorized: unknown API key; check the key or create one",
    "key_revoked": "Unauthorized: this API key was revoked; use a current key",
    "key_disabled": "Unauthorized: this API key is disabled; ask the operator to enable it",
    "key_expired": "Unauthorized: this API key has expired; create or rotate a key",
}
_CORS_EXPOSE = (
    "X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After, X-Request-Id, "
    "X-Cache"
)
_WRITE_METHOD = "eth_sendRawTransaction"
_CHAIN_SHAPE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TOO_DEEP = "Invalid Request: the call is nested too deeply"


class Trace:
    """What the telemetry record needs, filled in as the pipeline goes."""

    __slots__ = (
        "answers",
        "attempts",
        "cache",
        "call_results",
        "chain",
        "client_ip",
        "error_code",
        "fresh",
        "hedge_delay",
        "need",
        "record",
        "rpc_errors",
        "slow",
        "upstream",
        "upstream_latency",
    )

    def __init__(self, client_ip: str) -> None:
        self.chain = "-"
        self.client_ip = client_ip
        self.record: KeyRecord | None = None
        self.upstream: str | None = None
        self.upstream_latency: float | None = None
        self.attempts = 0
        self.rpc_errors = 0
        self.cache: str | None = None  # "HIT" or "MISS" for cacheable calls
        self.slow = False  # a call slow by nature (eth_getLogs): longer deadline
        self.hedge_delay: float | None = None  # seconds before a second upstream is asked
        self.need: str | None = None  # a capability the call needs: archive, trace
        self.fresh = False  # the call reads the tip: nodes at the best head first
        self.error_code = 0
        self.call_results: tuple[tuple[int, str | None], ...] | None = None
        self.answers: list[Any] | None = None  # a batch's, kept for payload capture only


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        verifier: KeyVerifier,
        pools: Mapping[str, ChainPool],
        sink: TelemetrySink,
        metrics: GatewayMetrics,
        limiter: Limiter | None = None,
        readiness: Mapping[str, ReadinessCheck] | None = None,
        tracer: Any = None,
        shared_cache: RedisCache | None = None,
        entitlements: Entitlements | None = None,
    ) -> None:
        self.config = config
        self.entitlements = entitlements  # quotas; None: no plan has any
        self.verifier = verifier
        self.limiter: Limiter = limiter or MemoryLimiter()
        # The in-process limiter answers synchronously: no task switch on the hot path.
        self._sync_limiter = self.limiter if isinstance(self.limiter, MemoryLimiter) else None
        self.metrics = metrics
        self.sink = sink
        self.chains = {
            name: ChainState(config.chain(name) or _missing(name), p) for name, p in pools.items()
        }
        self.ip_policy = IpPolicy(
            config.gateway.trusted_proxies, config.gateway.ip_allow, config.gateway.ip_deny
        )
        self.readiness = dict(readiness or {})
        self.policy = Policy(config)
        self._domain_suffix = "." + config.domain.lower() if config.domain else None
        self._max_batch = config.gateway.max_batch
        self._request_timeout = config.gateway.request_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_id = self.new_request_id = _request_ids()
        self.sockets = WebSockets(self)
        self.tracer = tracer  # an OpenTelemetry tracer, or None: no tracing work at all
        self.reads = Reads(self, shared_cache)
        self._retiring: set[asyncio.Task[None]] = set()
        self._metrics_watch()

    def _metrics_watch(self) -> None:
        def snapshots() -> list[tuple[str, int | None, list[Any]]]:
            return [(c.name, c.pool.best_head(), c.pool.snapshot()) for c in self.chains.values()]

        self.metrics.watch_pools(snapshots)

    # --- reload ----------------------------------------------------------------------------

    async def reload(self, config: Config) -> None:
        """Adopt ``config``'s chains, upstreams and plans while serving (SIGHUP).

        ``config`` is the running config with only its reloadable parts changed (see
        ``hoodrun.configdiff.reloadable``). New chains start (their upstreams checked first);
        existing ones adopt their new upstreams in place (``ChainPool.reconfigure``); removed
        chains and upstreams leave at once and are closed once the requests they serve are done
        (at most ``gateway.request_timeout`` later). A request in flight finishes where it
        began; the next one sees the new set. A new chain whose node reports another chain id
        is not added (logged).
        """
        grace = self.config.gateway.request_timeout + 1.0
        chains = dict(self.chains)
        retiring: list[Upstream] = []
        for chain_config in config.chains:
            health = config.health_for(chain_config)
            state = chains.get(chain_config.name)
            if state is None:
                pool = ChainPool(chain_config, health, config.gateway)
                try:
                    await pool.start()
                except ChainIdMismatch as exc:
                    log.error("reload: chain %s not added: %s", chain_config.name, exc)
                    continue
                chains[chain_config.name] = ChainState(chain_config, pool)
                log.info("reload: chain %s added", chain_config.name)
            else:
                retiring += await state.pool.reconfigure(chain_config, health)
                state.reconfigure(chain_config)
        removed = [state for name, state in chains.items() if config.chain(name) is None]
        for state in removed:
            del chains[state.name]
            log.info("reload: chain %s removed", state.name)
        self.config = config
        self.policy = Policy(config)
        self.chains = chains  # one assignment: a request sees the old set or the new one
        for state in removed:
            await self.sockets.drop_chain(state.name)
        if retiring or removed:
            task = asyncio.get_running_loop().create_task(
                self._retire(retiring, [state.pool for state in removed], grace)
            )
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(upstreams: list[Upstream], pools: list[ChainPool], grace: float) -> None:
        """Close what left rotation once the requests it serves are done (at most ``grace``
        seconds from now)."""
        busy = [*upstreams, *(up for pool in pools for up in pool.upstreams)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(up.inflight for up in busy) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(
            *(up.aclose() for up in upstreams),
            *(pool.aclose() for pool in pools),
            return_exceptions=True,
        )

    async def close_pools(self) -> None:
        """Close every chain's pool (at shutdown, after the server stopped: nothing is in
        flight, so what a reload retired closes at once)."""
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await asyncio.gather(*(state.pool.aclose() for state in self.chains.values()))

    # --- entry -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Awaitable[Response]:
        # A plain function returning the coroutine: JSON-RPC calls skip one coroutine level.
        if request.method == "POST":
            return self._rpc(request) if self.tracer is None else self._traced(request)
        return self._other(request)

    async def _traced(self, request: Request) -> Response:
        # The span's name and attributes never hold the path: it may carry the key.
        with self.tracer.start_as_current_span(
            "jsonrpc", kind=_SERVER_KIND, attributes={"http.route": "/{chain}/v1/{key}"}
        ):
            return await self._rpc(request)

    async def _other(self, request: Request) -> Response:
        method = request.method
        path = request.path
        if method in ("GET", "HEAD"):
            if path == "/health/live":
                return Response(200, b'{"status":"ok"}')
            if path == "/health/ready":
                return await self._ready()
            if path == "/metrics":
                return Response(
                    200, self.metrics.render(), content_type=b"text/plain; version=0.0.4"
                )
        if method == "OPTIONS":
            return await self._preflight(request)
        error: GatewayError = MethodNotPost() if self._looks_like_rpc(path) else NotFound()
        return Response(error.status, error.body(), [("allow", "POST, OPTIONS")])

    def fallback(self, status: int, message: bytes) -> Response:
        """Protocol-level failures from the HTTP server (bad HTTP, body too large)."""
        if status == 413:
            limit = self.config.gateway.max_body_bytes
            text = f"Invalid Request: the body is larger than {limit} bytes; send smaller batches"
            return Response(
                413, orjson.dumps(error_object(-32600, text, None, {"reason": "body_too_large"}))
            )
        code = -32600 if status < 500 else -32603
        body = orjson.dumps(error_object(code, message.decode(), None, {"reason": "bad_http"}))
        return Response(status, body)

    # --- routing ---------------------------------------------------------------------------

    def _looks_like_rpc(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        return parts[0] in self.chains or parts[0] == "v1"

    def _route(self, request: Request) -> tuple[str, str | None]:
        """(chain name, key from the path or headers)."""
        parts = request.path.strip("/").split("/")
        key: str | None = None
        if parts[0] == "v1":
            host = request.headers.get("host", "").split(":", 1)[0].lower()
            if self._domain_suffix is None or not host.endswith(self._domain_suffix):
                raise NotFound(
                    "Not found: use POST /{chain}/v1/{KEY}, or /v1/{KEY} on {chain}."
                    + (self.config.domain or "<domain>")
                )
            chain = host[: -len(self._domain_suffix)]
            rest = parts[1:]
        else:
            chain = parts[0]
            if len(parts) < 2 or parts[1] != "v1":
                if chain in self.chains:
                    raise NotFound(f"Not found: use POST /{chain}/v1/{{KEY}}")
                raise NotFound()
            rest = parts[2:]
        if len(rest) > 1:
            raise NotFound()
        if rest and rest[0]:
            key = rest[0]
        if key is None:
            auth = request.headers.get("authorization")
            if auth is not None and auth[:7].lower() == "bearer ":
                key = auth[7:].strip() or None
            else:
                key = request.headers.get("x-api-key") or None
        return chain, key

    # --- the JSON-RPC path -----------------------------------------------------------------

    async def _rpc(self, request: Request) -> Response:
        trace = Trace(request.peer)
        request_id = self._new_id()
        REQUEST_ID.set(request_id)  # this request's task only: log lines carry it
        headers: list[tuple[str, str]] = [("x-request-id", request_id)]
        origin = request.headers.get("origin")
        calls: list[Call] = []
        reason: str | None = None
        try:
            chain_name, key = self._route(request)
            trace.chain = chain_name
            trace.client_ip = client_ip = self.ip_policy.client_ip(
                request.peer, request.headers.get("x-forwarded-for")
            )
            if not self.ip_policy.allowed(client_ip):
                raise Forbidden(
                    "Forbidden: requests from this address are not allowed", reason="ip_denied"
                )
            chain = self.chain_for(chain_name)
            record = await self._authenticate(key, origin)
            trace.record = record
            if record is not None and record.chains is not None and chain_name not in record.chains:
                raise Forbidden(
                    f"Forbidden: this key may not use chain {chain_name!r}; it allows "
                    + ", ".join(sorted(record.chains)),
                    reason="chain_not_allowed",
                )
            if record is not None:
                plan = self.policy.plan_of(record)
                if self.entitlements is not None and (plan.quotas or plan.spending_cap):
                    self._check_quotas(self.entitlements, record, plan)
            elif self.policy.public_plan is not None:  # keyless: _authenticate allowed it
                plan = self.policy.public_plan
            else:
                raise Unauthorized(_KEY_MESSAGES["key_missing"], reason="key_missing")
            if origin is not None:
                headers += (
                    ("access-control-allow-origin", origin),
                    ("vary", "Origin"),
                    ("access-control-expose-headers", _CORS_EXPOSE),
                )
            is_batch, calls = parse_body(request.body, plan.max_batch or self._max_batch)
            buckets = self.policy.buckets(record, plan, chain, client_ip)
            # The in-process limiter answers synchronously: no coroutine, no task switch.
            decision = (
                self._sync_limiter.acquire_now(buckets, len(calls))
                if self._sync_limiter is not None
                else await self._acquire(buckets, len(calls), chain)
            )
            if decision is not None and (refusal := self.policy.admit(decision, headers)):
                scope, error = refusal
                self.metrics.rate_limited.inc((chain.name, scope))
                raise error
            if is_batch:
                body = await self._forward_batch(chain, record, plan, calls, trace)
                response = Response(200 if body else 204, body, headers)
            else:
                response = await self._forward_single(
                    chain, record, plan, calls[0], request.body, trace
                )
                if trace.cache is not None:
                    headers.append(("x-cache", trace.cache))
                response.headers = headers
        except GatewayError as error:
            reason = error.reason
            trace.error_code = error.code
            call_id = calls[0].id if len(calls) == 1 else None
            response = Response(error.status, error.body(call_id), headers + error.headers)
        except Exception:  # a bug: answer it properly and keep the record
            log.exception("unexpected error in the request pipeline")
            reason = "internal_error"
            trace.error_code = -32603
            failure = error_object(-32603, "Internal error", None, {"reason": reason})
            response = Response(500, orjson.dumps(failure), headers)
        self._emit(request, request_id, trace, calls, response, reason)
        return response

    @staticmethod
    def _check_quotas(entitlements: Entitlements, record: KeyRecord, plan: PlanConfig) -> None:
        spent = entitlements.exhausted(record.org_id, plan)
        if spent is not None:
            when, wait = _reset(entitlements)
            raise QuotaExceeded(
                f"Quota exceeded: plan {plan.name!r} allows {spent.limit:,} {spent.name} a month "
                f"and {spent.used:,} were used; it resets at {when}, or upgrade the plan",
                headers=[("retry-after", wait)],
            )
        over = entitlements.over_cap(record.org_id, plan)
        if over is not None:
            amount, cap = over
            when, wait = _reset(entitlements)
            raise QuotaExceeded(
                f"Spending cap reached: plan {plan.name!r} stops at {cap.amount} {cap.currency} "
                f"a month and {amount.amount} {amount.currency} was used; it resets at {when}, "
                "or raise the cap",
                reason="spending_cap_reached",
                headers=[("retry-after", wait)],
            )

    def chain_for(self, name: str) -> ChainState:
        chain = self.chains.get(name)
        if chain is None:
            # Echo the name only when it looks like one: a key in the wrong place must not come
            # back in the message.
            shown = f" {name!r}" if _CHAIN_SHAPE.match(name) else ""
            raise UnknownChain(f"Unknown chain{shown}: use one of {', '.join(sorted(self.chains))}")
        return chain

    async def _authenticate(self, key: str | None, origin: str | None) -> KeyRecord | None:
        if key is None:
            if self.policy.public_plan is not None:
                return None
            raise Unauthorized(_KEY_MESSAGES["key_missing"], reason="key_missing")
        try:
            record = self.verifier.check(key) or await self.verifier.verify(key)
        except KeyDenied as denied:
            raise Unauthorized(_KEY_MESSAGES.get(denied.reason), reason=denied.reason) from None
        except KeyStoreDown:
            raise Unavailable(
                "Service unavailable: keys cannot be verified right now; retry shortly",
                reason="key_store_unavailable",
            ) from None
        if origin is not None and record.origins is not None and origin not in record.origins:
            raise Forbidden(
                f"Forbidden: origin {origin} is not allowed for this key",
                reason="origin_not_allowed",
            )
        return record

    async def _acquire(
        self, buckets: tuple[Bucket, ...], cost: int, chain: ChainState
    ) -> Decision | None:
        """A shared limiter's decision; ``None`` when it cannot decide (limits fail open)."""
        try:
            return await self.limiter.acquire(buckets, cost)
        except LimiterUnavailable:
            # A limiter outage must not take the platform down: fail open, and count it.
            self.metrics.rate_limited.inc((chain.name, "limiter_unavailable"))
            return None

    # --- forwarding ------------------------------------------------------------------------

    def _upstream_failure(self, chain: ChainState, exc: UpstreamError) -> GatewayError:
        if isinstance(exc, NoHealthyUpstream) and exc.need is not None:
            return Unavailable(
                f"Service unavailable: this call needs an {exc.need!r} node and chain "
                f"{chain.name!r} has no healthy one right now; retry shortly"
            )
        if isinstance(exc, NoHealthyUpstream):
            return Unavailable(
                f"Service unavailable: no healthy node for chain {chain.name!r} right now; "
                "retry shortly"
            )
        if isinstance(exc, UpstreamTimeout):
            return UpstreamTimedOut()
        if isinstance(exc, UpstreamRateLimited):
            return RateLimited(
                "Rate limit exceeded: every node of this chain is throttling; retry shortly",
                reason="upstream_rate_limited",
                headers=[("retry-after", "1")],
            )
        # The message names the node (host:port): for the operator's log, not the client.
        log.warning("chain %s: upstream failure: %s", chain.name, exc)
        return UpstreamFailed()

    def _deadline(self, slow: bool = False) -> float:
        loop = self._loop
        if loop is None:  # get_running_loop() costs a getpid() syscall: once is enough
            loop = self._loop = asyncio.get_running_loop()
        if slow:
            return loop.time() + max(self._request_timeout, self.config.gateway.logs_timeout)
        return loop.time() + self._request_timeout

    async def _call_upstream(
        self,
        chain: ChainState,
        body: bytes,
        trace: Trace,
        write_tx: bytes | None = None,
        need: str | None = None,
    ) -> tuple[int, bytes]:
        if self.tracer is not None:
            with self.tracer.start_as_current_span(
                "upstream", kind=_CLIENT_KIND, attributes={"hoodrun.chain": chain.name}
            ) as span:
                status, body = await self._call_upstream_untraced(
                    chain, body, trace, write_tx, need
                )
                span.set_attributes(
                    {
                        "hoodrun.upstream": trace.upstream or "",
                        "hoodrun.attempts": trace.attempts,
                        "http.response.status_code": status,
                    }
                )
                return status, body
        return await self._call_upstream_untraced(chain, body, trace, write_tx, need)

    async def _call_upstream_untraced(
        self,
        chain: ChainState,
        body: bytes,
        trace: Trace,
        write_tx: bytes | None = None,
        need: str | None = None,
    ) -> tuple[int, bytes]:
        try:
            if trace.hedge_delay is not None and write_tx is None:
                reply = await chain.pool.call_hedged(
                    body, deadline=self._deadline(), delay=trace.hedge_delay, need=need
                )
                if reply.hedged:
                    self.metrics.hedges.inc((chain.name,))
                    if reply.hedge_won:
                        self.metrics.hedge_wins.inc((chain.name,))
            else:
                reply = await chain.pool.call(
                    body,
                    deadline=self._deadline(trace.slow),
                    write_tx=write_tx,
                    slow_ok=trace.slow,
                    need=need,
                    fresh=trace.fresh,
                )
            chain.observe_latency(reply.latency)
        except UpstreamError as exc:
            raise self._upstream_failure(chain, exc) from None
        trace.upstream = reply.upstream
        trace.upstream_latency = reply.latency
        trace.attempts += reply.attempts
        return reply.status, reply.body

    async def _forward_single(
        self,
        chain: ChainState,
        record: KeyRecord | None,
        plan: PlanConfig,
        call: Call,
        body: bytes,
        trace: Trace,
    ) -> Response:
        method = call.method
        if method is None:
            raise InvalidRequest()
        if not self.policy.permits(record, plan, method):
            raise MethodNotAllowed(f"Method {method} is not allowed on plan {plan.name!r}")
        need = need_of(chain, method, call)
        if need is not None:
            refusal = capability_refusal(plan, method, need)
            if refusal is not None:
                raise refusal
            trace.need = need
        body, trace.fresh = pin_tags(chain, method, call, body)
        if method in _SUBSCRIPTION_METHODS:
            session = CURRENT_SESSION.get()
            if session is None:
                raise NeedsWebSocket(
                    f"{method} needs a WebSocket: connect to ws(s)://<host>/{chain.name}/v1/<KEY>"
                )
            if method == "eth_subscribe":
                return await session.subscribe(call)
            return await session.unsubscribe(call)
        if method == "eth_getLogs":
            return await self.reads.get_logs(chain, plan, call, body, trace)
        if method in self.reads.methods:
            return await self.reads.read(chain, call, method, body, trace)
        write_tx = _raw_tx(call) if method == _WRITE_METHOD else None
        status, reply = await self._call_upstream(chain, body, trace, write_tx, trace.need)
        if method == "eth_blockNumber" and status == 200:
            reply = chain.monotonic_head_body(reply)
        elif status == 200 and b'"error"' in reply:
            trace.rpc_errors = 1
            trace.error_code = error_code(loads(reply))
        return Response(status, reply)

    async def _forward_batch(
        self,
        chain: ChainState,
        record: KeyRecord | None,
        plan: PlanConfig,
        calls: list[Call],
        trace: Trace,
    ) -> bytes:
        answers: list[Any] = [None] * len(calls)
        reads: list[tuple[int, Call]] = []
        writes: list[tuple[int, Call]] = []
        needs: set[str] = set()  # capabilities the reads need: the batch goes where all are
        for index, call in enumerate(calls):
            method = call.method
            if method is None:
                answers[index] = error_object(
                    -32600, "Invalid Request", call.id, {"reason": "invalid_request"}
                )
            elif not self.policy.permits(record, plan, method):
                answers[index] = _reply(
                    call,
                    error_object(
                        -32004,
                        f"Method {method} is not allowed on plan {plan.name!r}",
                        call.id,
                        {"reason": "method_not_allowed"},
                    ),
                )
            elif method == _WRITE_METHOD:
                writes.append((index, call))
            elif method in _SUBSCRIPTION_METHODS:
                answers[index] = _reply(
                    call,
                    NeedsWebSocket(
                        f"{method} must be sent alone over a WebSocket, not in a batch"
                    ).to_object(call.id),
                )
            elif method == "eth_getLogs" and (refused := self.reads.batch_logs(chain, plan, call)):
                answers[index] = _reply(call, refused.to_object(call.id))
            elif (need := need_of(chain, method, call)) is not None and (
                refusal := capability_refusal(plan, method, need)
            ):
                answers[index] = _reply(call, refusal.to_object(call.id))
            else:
                if need is not None:
                    needs.add(need)
                reads.append((index, call))
        jobs = []
        if reads:
            # With writes in the batch, a failure of the reads must not hide the writes' answers.
            # One upstream batch goes to one node: a trace node if any call traces, else an
            # archive node if any call reads old state (a batch needing both should be split).
            need = "trace" if "trace" in needs else "archive" if needs else None
            jobs.append(
                self._batch_reads(chain, reads, answers, trace, isolate=bool(writes), need=need)
            )
        for index, call in writes:
            jobs.append(self._batch_write(chain, index, call, answers, trace))
        if jobs:
            await asyncio.gather(*jobs)
        out = [a for a in answers if a is not None and not isinstance(a, _Unsent)]
        results = tuple(_call_result(a.answer if isinstance(a, _Unsent) else a) for a in answers)
        trace.call_results = results
        trace.rpc_errors = sum(1 for code, _ in results if code)
        if record is not None and record.capture_bytes is not None:
            trace.answers = [None if isinstance(a, _Unsent) else a for a in answers]
        return orjson.dumps(out) if out else b""

    async def _batch_reads(
        self,
        chain: ChainState,
        reads: list[tuple[int, Call]],
        answers: list[Any],
        trace: Trace,
        *,
        isolate: bool = False,
        need: str | None = None,
    ) -> None:
        # Ids are replaced by positions so duplicate or odd client ids cannot mix answers up.
        upstream_batch = [
            call.obj if call.notification else {**call.obj, "id": n}
            for n, (_, call) in enumerate(reads)
        ]
        try:
            payload = orjson.dumps(upstream_batch)
        except orjson.JSONEncodeError:
            # orjson reads deeper nesting than it writes: answer those entries, send the rest.
            fine = []
            for index, call in reads:
                try:
                    orjson.dumps(call.obj)
                except orjson.JSONEncodeError:
                    answers[index] = error_object(
                        -32600, _TOO_DEEP, call.id, {"reason": "invalid_request"}
                    )
                else:
                    fine.append((index, call))
            if fine:
                await self._batch_reads(chain, fine, answers, trace, isolate=isolate, need=need)
            return
        try:
            status, body = await self._call_upstream(chain, payload, trace, need=need)
        except GatewayError as error:
            if not isolate:
                raise
            for index, call in reads:
                answers[index] = _reply(call, error.to_object(call.id))
            return
        parsed = loads(body)
        if isinstance(parsed, list):
            by_id = {item.get("id"): item for item in parsed if isinstance(item, dict)}
            for n, (index, call) in enumerate(reads):
                if call.notification:
                    continue
                item = by_id.get(n)
                if item is None:
                    answers[index] = error_object(
                        -32603, "Upstream error: the node gave no answer for this call", call.id,
                        {"reason": "upstream_error"},
                    )  # fmt: skip
                    continue
                item["id"] = call.id
                if call.method == "eth_blockNumber" and "result" in item:
                    item["result"] = chain.monotonic_head(item["result"])
                answers[index] = item
            return
        # The node answered the whole batch with one object (an error, or a non-JSON body).
        for index, call in reads:
            if call.notification:
                continue
            if isinstance(parsed, dict) and "error" in parsed:
                answers[index] = {**parsed, "id": call.id}
            else:
                answers[index] = error_object(
                    -32603, f"Upstream error: unexpected answer (HTTP {status})", call.id,
                    {"reason": "upstream_error"},
                )  # fmt: skip

    async def _batch_write(
        self, chain: ChainState, index: int, call: Call, answers: list[Any], trace: Trace
    ) -> None:
        try:
            payload = orjson.dumps(call.obj)
        except orjson.JSONEncodeError:
            answers[index] = error_object(-32600, _TOO_DEEP, call.id, {"reason": "invalid_request"})
            return
        try:
            _, body = await self._call_upstream(chain, payload, trace, _raw_tx(call))
        except GatewayError as error:
            answers[index] = _reply(call, error.to_object(call.id))
            return
        parsed = loads(body)
        if not call.notification:
            answers[index] = (
                parsed
                if isinstance(parsed, dict)
                else error_object(
                    -32603,
                    "Upstream error: unexpected answer",
                    call.id,
                    {"reason": "upstream_error"},
                )
            )

    # --- CORS, health ----------------------------------------------------------------------

    async def _preflight(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is None:
            return Response(204, headers=[("allow", "POST, OPTIONS")])
        try:
            _, key = self._route(request)
            if key is not None:
                # A key in the path can be checked; a key in a header is not sent in preflights.
                record = self.verifier.check(key) or await self.verifier.verify(key)
                if record.origins is not None and origin not in record.origins:
                    return Response(
                        403,
                        Forbidden(
                            f"Forbidden: origin {origin} is not allowed for this key",
                            reason="origin_not_allowed",
                        ).body(),
                    )
        except (GatewayError, KeyDenied, KeyStoreDown):
            pass  # the real request will get the precise error
        requested = request.headers.get("access-control-request-headers")
        return Response(
            204,
            headers=[
                ("access-control-allow-origin", origin),
                ("vary", "Origin"),
                ("access-control-allow-methods", "POST, OPTIONS"),
                (
                    "access-control-allow-headers",
                    requested or "Content-Type, Authorization, X-Api-Key",
                ),
                ("access-control-max-age", str(self.config.gateway.cors_max_age)),
            ],
        )

    async def _ready(self) -> Response:
        checks: dict[str, Any] = {}
        ok = True
        for name, check in self.readiness.items():
            try:
                await asyncio.wait_for(check(), 2.0)
                checks[name] = {"ok": True}
            except Exception as exc:  # noqa: BLE001 (any failure means not ready)
                ok = False
                checks[name] = {"ok": False, "error": type(exc).__name__}
        for chain in self.chains.values():
            healthy = [u["name"] for u in chain.pool.snapshot() if u["healthy"]]
            checks[f"chain:{chain.name}"] = {
                "ok": bool(healthy),
                "healthy_upstreams": healthy,
                "head": chain.pool.best_head(),
            }
            ok = ok and bool(healthy)
        body = orjson.dumps({"status": "ok" if ok else "fail", "checks": checks})
        return Response(200 if ok else 503, body)

    # --- telemetry -------------------------------------------------------------------------

    def _annotate_span(
        self, request_id: str, trace: Trace, method: str, status: int, reason: str | None
    ) -> None:
        record = trace.record
        attributes: dict[str, Any] = {
            "hoodrun.request_id": request_id,
            "hoodrun.chain": trace.chain,
            "rpc.method": method,
            "http.response.status_code": status,
            "hoodrun.outcome": reason or ("rpc_error" if trace.rpc_errors else "ok"),
        }
        if record is not None:
            attributes["hoodrun.key_id"] = record.id
            attributes["hoodrun.org_id"] = record.org_id
        _current_span().set_attributes(attributes)

    def _emit(
        self,
        request: Request,
        request_id: str,
        trace: Trace,
        calls: list[Call],
        response: Response,
        reason: str | None,
    ) -> None:
        record = trace.record
        if len(calls) == 1:
            method = calls[0].method or ""
            methods: tuple[str, ...] = (method,)
        elif calls:
            method = "batch"
            methods = tuple(c.method or "" for c in calls)
        else:
            method, methods = "-", ("-",) if reason else ()
        latency = time.monotonic() - request.started
        if self.tracer is not None:
            self._annotate_span(request_id, trace, method, response.status, reason)
        try:
            entry = RequestRecord(
                ts=time.time() - latency,
                chain=trace.chain if trace.chain in self.chains else "-",
                method=method,
                methods=methods,
                calls=len(calls),
                status=response.status,
                reason=reason,
                key_id=record.id if record else None,
                org_id=record.org_id if record else None,
                project_id=record.project_id if record else None,
                client_ip=trace.client_ip,
                latency=latency,
                upstream=trace.upstream,
                upstream_latency=trace.upstream_latency,
                attempts=trace.attempts,
                bytes_in=len(request.body),
                bytes_out=len(response.body),
                rpc_errors=trace.rpc_errors,
                request_id=request_id,
                error_code=trace.error_code,
                call_results=trace.call_results,
                cache_hit=trace.cache == "HIT",
            )
            # Payload capture: the one test a key of a project without it pays.
            if record is not None and record.capture_bytes is not None and calls:
                self._capture(entry, record.capture_bytes, calls, trace, response)
            self.sink.emit(entry)
        except Exception:  # telemetry must never break a request
            log.exception("telemetry sink failed")

    @staticmethod
    def _capture(
        entry: RequestRecord, limit: int, calls: list[Call], trace: Trace, response: Response
    ) -> None:
        """The calls' params and answers, as excerpts, into the record (see ``payloads``)."""
        try:
            entry.excerpts = excerpts(calls, trace.answers, response.body, limit)
        except Exception:  # the record itself (usage, billing) must still be written
            log.exception("payload capture failed")


_SUBSCRIPTION_METHODS = frozenset({"eth_subscribe", "eth_unsubscribe"})


def _span_kinds() -> tuple[Any, Any]:
    try:
        from opentelemetry.trace import SpanKind
    except ImportError:  # pragma: no cover
        return None, None
    return SpanKind.SERVER, SpanKind.CLIENT


_SERVER_KIND, _CLIENT_KIND = _span_kinds()


def _reset(entitlements: Entitlements) -> tuple[str, str]:
    """When the month's quotas start again: (ISO time, Retry-After seconds). Only for refusals:
    the checks that pass never format anything."""
    resets = entitlements.counters.month_end
    wait = max(1, int(resets.timestamp() - time.time()))
    return resets.strftime("%Y-%m-%dT%H:%M:%SZ"), str(wait)


def _request_ids() -> Callable[[], str]:
    """Request ids: a random per-process prefix and a counter. Unique across processes and
    restarts (the telemetry store de-duplicates rows by them), cheap on the hot path."""
    prefix = secrets.token_hex(8)
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):010x}"


@dataclass(frozen=True, slots=True)
class _Unsent:
    """A notification's refusal or failure in a batch: not sent (a notification gets no
    answer), but recorded, so that the call is not billed as answered."""

    answer: Any


def _reply(call: Call, answer: Any) -> Any:
    """``answer`` as a batch entry: held back (``_Unsent``) for a notification."""
    return _Unsent(answer) if call.notification else answer


def _call_result(answer: Any) -> tuple[int, str | None]:
    """(code, the gateway's reason) of one batch answer; (0, None) for a result or none."""
    code = error_code(answer)
    if not code:
        return 0, None
    data = answer["error"].get("data")
    reason = data.get("reason") if isinstance(data, dict) else None
    return code, reason if isinstance(reason, str) else None


def _current_span() -> Any:
    from opentelemetry import trace

    return trace.get_current_span()


def _raw_tx(call: Call) -> bytes | None:
    params = call.obj.get("params") if isinstance(call.obj, dict) else None
    if isinstance(params, list) and params and isinstance(params[0], str):
        try:
            return bytes.fromhex(params[0].removeprefix("0x"))
        except ValueError:
            return None
    return None


def _missing(name: str) -> ChainConfig:
    raise ValueError(f"no chain {name!r} in the config")

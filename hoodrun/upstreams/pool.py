"""``ChainPool``: the upstream nodes of one chain, their health, selection and retries.

Selection: among upstreams whose health checks pass and whose breaker is closed, the lowest
``ewma_latency × (inflight + 1) × (1 + 10·error_rate) / weight``. When none qualifies, a healthy
upstream whose breaker grants its half-open probe may take the request. Otherwise the call fails
at once with ``NoHealthyUpstream`` (the gateway's fast 503): an upstream that is unreachable,
syncing, short of peers or too far behind is never used as a last resort, since its answers would
be wrong rather than slow. Lag is measured against the best head among reachable, synced
upstreams, so when the leader dies the next one up becomes the reference and is back in.

Outcomes of a request attempt:

======================================  ===========  =========  ==========================
outcome                                 error rate   breaker    then
======================================  ===========  =========  ==========================
2xx JSON or empty, 4xx (not 429)        success      success    returned (JSON-RPC errors
                                                                 pass through unchanged)
transport error, timeout, 5xx,          failure      failure    next-best other upstream
2xx that is not JSON
429                                     failure      neutral    next-best other upstream
======================================  ===========  =========  ==========================

A 429 moves traffic away (score) without opening the breaker: a throttled node is healthy.

Cordons (``set_cordoned``): an operator takes upstreams out of rotation by name. A cordoned
upstream gets no request, not even as a half-open probe or a last resort, but its health is
still checked (its head still counts for the others' lag) and its snapshot says ``cordoned``.
When every upstream a call could use is cordoned, the call fails as when none is healthy
(``NoHealthyUpstream``: the gateway's fast 503): a cordon is an operator's explicit order, so the
pool never overrides it, and a chain drained on purpose says so rather than serving anyway.

Writes (``write_tx``) are retried too, but once an attempt may have delivered the transaction, a
retry's "already known" error (or a "nonce too low" for a hash the node does know) is turned back
into the success reply the first copy would have produced; see ``_writes``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from hoodrun.config import ChainConfig, GatewayConfig, HealthConfig, UpstreamConfig
from hoodrun.upstreams._writes import (
    ALREADY_KNOWN,
    NONCE_TOO_LOW,
    error_message,
    success_reply,
    tx_hash,
)
from hoodrun.upstreams.breaker import BreakerState
from hoodrun.upstreams.errors import (
    ChainIdMismatch,
    NoHealthyUpstream,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from hoodrun.upstreams.health import check_upstream
from hoodrun.upstreams.upstream import ERROR_ALPHA, Upstream

__all__ = ["ChainPool", "UpstreamReply"]

log = logging.getLogger("hoodrun.upstreams")

_NEW, _RUNNING, _CLOSED = "new", "running", "closed"


@dataclass(slots=True)
class UpstreamReply:
    """A node's answer. ``latency`` is the answering attempt's, in seconds."""

    status: int
    body: bytes
    upstream: str
    attempts: int
    latency: float
    hedged: bool = False  # a second upstream was asked because the first was slow
    hedge_won: bool = False  # and its answer came first


class ChainPool:
    """The upstreams of one chain. ``start`` before use, ``aclose`` after (or ``async with``)."""

    def __init__(
        self,
        chain: ChainConfig,
        health: HealthConfig,
        gateway: GatewayConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.chain = chain
        self.name = chain.name
        self._health = health
        self._clock = clock
        self._max_attempts = gateway.max_retries + 1
        self._upstream_timeout = gateway.upstream_timeout
        self._connections = gateway.upstream_connections
        self._connect_timeout = min(2.0, gateway.upstream_timeout)
        self.upstreams: list[Upstream] = [self._upstream(config) for config in chain.upstreams]
        self._cordoned: frozenset[str] = frozenset()
        self._derive()
        self._best_head: int | None = None
        self._tasks: dict[Upstream, asyncio.Task[None]] = {}
        self._state = _NEW

    def _upstream(self, config: UpstreamConfig) -> Upstream:
        return Upstream(
            config,
            self._health,
            max_connections=self._connections,
            connect_timeout=self._connect_timeout,
            clock=self._clock,
            on_breaker_change=self._breaker_changed,
        )

    def _derive(self) -> None:
        # Capabilities some upstream declares; a chain with none, no fallback tier and no
        # in-flight caps selects by score alone (the fast path).
        self._offered = frozenset(tag for up in self.upstreams for tag in up.tags)
        self._plain = not self._offered and not any(
            up.fallback or up.max_inflight is not None for up in self.upstreams
        )
        # What selection looks at: the upstreams not cordoned (one list swapped in one step, so
        # the hot path pays nothing for cordons).
        for up in self.upstreams:
            up.cordoned = up.name in self._cordoned
        self._rotation = [up for up in self.upstreams if not up.cordoned]

    def set_cordoned(self, names: Iterable[str]) -> None:
        """Take exactly the upstreams named out of rotation (and put the others back). Names
        that are not upstreams of this chain are ignored (they may be of a config not loaded
        yet); a request in flight finishes where it is."""
        wanted = frozenset(names)
        if wanted == self._cordoned:
            return
        for up in self.upstreams:
            if (up.name in wanted) != up.cordoned:
                verb = "cordoned: no traffic" if up.name in wanted else "uncordoned: back in"
                log.warning("chain %s: upstream %s %s", self.name, up.name, verb)
        self._cordoned = wanted
        self._derive()

    def cordoned(self) -> frozenset[str]:
        """The names of this chain's upstreams out of rotation by cordon."""
        return frozenset(up.name for up in self.upstreams if up.cordoned)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every upstream once, refuse a wrong chain id, then keep checking.

        An unreachable upstream is not fatal: it starts out of rotation and joins once its
        checks (including the chain id) pass.
        """
        self._loop = asyncio.get_running_loop()
        if self._state is not _NEW:
            raise RuntimeError(f"chain pool {self.name!r} was already started")
        await self.check_now()
        wrong = [up for up in self.upstreams if up.wrong_chain_id is not None]
        if wrong:
            await self._close_upstreams()
            self._state = _CLOSED
            raise ChainIdMismatch(
                "; ".join(
                    f"chain {self.name!r}: upstream {up.name!r} ({up.url}) reports chain id "
                    f"{up.wrong_chain_id}, expected {self.chain.chain_id}"
                    for up in wrong
                )
            )
        self._state = _RUNNING
        for up in self.upstreams:
            self._watch(up)

    def _watch(self, up: Upstream) -> None:
        self._tasks[up] = asyncio.create_task(
            self._health_loop(up), name=f"health:{self.name}:{up.name}"
        )

    async def reconfigure(self, chain: ChainConfig, health: HealthConfig) -> list[Upstream]:
        """Adopt a new config of this chain while it serves.

        Upstreams whose config (and the health config) did not change keep their connections,
        health and breaker. New or changed ones are checked once before they join, so they
        enter rotation only when healthy (a wrong chain id keeps one out, with the reason in
        its snapshot). The list of upstreams is swapped in one step: a request in flight
        finishes on the upstream it chose. Returns the upstreams that left rotation, for the
        caller to close once their requests are done.
        """
        if chain.name != self.name:
            raise ValueError(f"chain pool {self.name!r} cannot become {chain.name!r}")
        if self._state is not _RUNNING:
            raise RuntimeError(f"chain pool {self.name!r} is not running")
        # Another chain id: every upstream is checked again, as at start.
        same_health = health == self._health and chain.chain_id == self.chain.chain_id
        self._health = health
        current = {up.name: up for up in self.upstreams}
        kept: list[Upstream] = []
        added: list[Upstream] = []
        for config in chain.upstreams:
            old = current.get(config.name)
            if old is not None and same_health and old.config == config:
                kept.append(current.pop(config.name))
            else:
                added.append(self._upstream(config))
        self.chain = chain  # the checks compare chain ids with the new config's
        await asyncio.gather(*(self._check(up, evaluate=False) for up in added))
        # A newcomer's latency so far is its health check's, a batch: slower than the calls
        # the others' figures come from, so it would never be chosen. It starts at the median
        # of theirs, and its own answers take over.
        serving = sorted(up.ewma_latency for up in kept if up.healthy and up.ewma_latency)
        if serving:
            for up in added:
                up.ewma_latency = serving[len(serving) // 2]
        order = {config.name: i for i, config in enumerate(chain.upstreams)}
        self.upstreams = sorted(kept + added, key=lambda up: order[up.name])
        self._derive()
        self._evaluate()
        for up in added:
            self._watch(up)
        gone = list(current.values())
        for up in gone:
            task = self._tasks.pop(up, None)
            if task is not None:
                task.cancel()
        for up in added:
            log.info("chain %s: upstream %s added (%s)", self.name, up.name, up.reason or "in")
        for up in gone:
            log.info("chain %s: upstream %s removed", self.name, up.name)
        return gone

    async def aclose(self) -> None:
        if self._state is _CLOSED:
            return
        self._state = _CLOSED
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks = {}
        await self._close_upstreams()

    async def __aenter__(self) -> ChainPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _close_upstreams(self) -> None:
        await asyncio.gather(*(up.aclose() for up in self.upstreams))

    # --- the hot path ------------------------------------------------------------------------

    async def call(
        self,
        body: bytes,
        *,
        deadline: float,
        write_tx: bytes | None = None,
        slow_ok: bool = False,
        shared: list[Upstream] | None = None,
        need: str | None = None,
        fresh: bool = False,
    ) -> UpstreamReply:
        """Send a JSON-RPC body to the best upstream, failing over until ``deadline`` (an
        absolute ``loop.time()``). ``write_tx``: the raw signed transaction when ``body`` is a
        single ``eth_sendRawTransaction``. ``slow_ok``: a call slow by nature (a wide
        ``eth_getLogs``): its timeouts say nothing of the node's health for other calls, so they
        do not count against it (breaker, error rate). ``shared``: upstreams another call of
        the same request (a hedge) is using; this one picks others, and adds its own.
        ``need``: a capability the call needs (``archive``, ``trace``); when some upstream of
        the chain declares it, only those are asked. ``fresh``: the call reads the chain's tip
        (``latest``): upstreams at the best head are asked first, so that a client never sees
        the head go backwards because a lagging node answered.

        Raises ``NoHealthyUpstream`` (503) when no upstream is eligible, ``UpstreamTimeout``
        (504) when the deadline passed, else the last attempt's ``UpstreamError`` (502).
        """
        if self._state is not _RUNNING:
            raise RuntimeError(f"chain pool {self.name!r} is not running")
        # Cached in start(): asyncio.get_running_loop() costs a getpid() syscall per call.
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        tried: list[Upstream] = []
        last: UpstreamError | None = None
        maybe_sent = False
        while len(tried) < self._max_attempts:
            started = loop.time()
            remaining = deadline - started
            if remaining <= 0:
                break
            probe = False
            taken = tried if shared is None else tried + shared
            up = self._select(taken, need, fresh)
            if up is None:
                up = self._select_probe(taken, need)
                if up is None:
                    break
                probe = True
            tried.append(up)
            if shared is not None:
                shared.append(up)
            up.inflight += 1
            try:
                status, reply, resent = await up.http.send(
                    body,
                    remaining
                    if slow_ok or remaining < self._upstream_timeout
                    else self._upstream_timeout,
                )
            except UpstreamError as exc:
                up.inflight -= 1
                if not (slow_ok and isinstance(exc, UpstreamTimeout)):
                    up.record_failure()
                exc.upstream = up.name
                log.info("chain %s: attempt on %s failed: %s", self.name, up.name, exc)
                last = exc
                maybe_sent = maybe_sent or exc.maybe_delivered
                continue
            except BaseException:
                up.inflight -= 1
                if probe:
                    up.breaker.release_probe()
                raise
            up.inflight -= 1
            latency = loop.time() - started
            if 200 <= status < 300:
                if not _looks_like_json(reply):
                    last = self._bad(up, f"HTTP {status} with a body that is not JSON", status)
                    maybe_sent = True
                    continue
            elif status == 429:
                up.record_failure(breaker=False)
                if probe:
                    up.breaker.release_probe()
                last = UpstreamRateLimited(status=429)
                last.upstream = up.name
                continue
            elif not 400 <= status < 500:
                last = self._bad(up, f"HTTP {status}", status)
                maybe_sent = True
                continue
            up.record_success(latency)
            if write_tx is not None and status == 200 and (maybe_sent or resent):
                reply = await self._settle_write(up, body, reply, write_tx, deadline)
            return UpstreamReply(status, reply, up.name, len(tried), latency)

        if last is not None and maybe_sent:
            last.maybe_delivered = True  # an earlier attempt may have got through
        if loop.time() >= deadline:
            if isinstance(last, UpstreamTimeout):
                raise last
            raise UpstreamTimeout(
                f"chain {self.name!r}: no answer before the request deadline "
                f"({len(tried)} attempt(s))",
                maybe_delivered=maybe_sent,
            ) from last
        if last is None:
            if not self._rotation:
                raise NoHealthyUpstream(f"every upstream of chain {self.name!r} is cordoned")
            if need is not None and need in self._offered:
                raise NoHealthyUpstream(
                    f"no healthy upstream with {need!r} for chain {self.name!r}", need=need
                )
            raise NoHealthyUpstream(f"no healthy upstream for chain {self.name!r}")
        raise last

    async def call_hedged(
        self, body: bytes, *, deadline: float, delay: float, need: str | None = None
    ) -> UpstreamReply:
        """A read sent to the best upstream and, if it has not answered after ``delay``
        seconds, to a second one as well: the first good answer wins, the other is cancelled.
        Never for writes. Without a second eligible upstream it is a plain ``call``."""
        shared: list[Upstream] = []
        loop = cast(asyncio.AbstractEventLoop, self._loop)
        first = loop.create_task(self.call(body, deadline=deadline, shared=shared, need=need))
        done, _ = await asyncio.wait({first}, timeout=delay)
        if done or self._select(shared, need) is None:
            return await first
        second = loop.create_task(self.call(body, deadline=deadline, shared=shared, need=need))
        pending = {first, second}
        failure: BaseException = NoHealthyUpstream(f"no upstream answered for chain {self.name!r}")
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is None:
                        reply = task.result()
                        reply.hedged, reply.hedge_won = True, task is second
                        return reply
                    failure = error
        finally:
            for task in pending:
                task.cancel()
        raise failure

    def _select(
        self, tried: list[Upstream], need: str | None = None, fresh: bool = False
    ) -> Upstream | None:
        if fresh and self._best_head is not None:
            tip = self._best_head
            lagging = [up for up in self.upstreams if up.head is not None and up.head < tip]
            if lagging:  # the nodes at the tip first; any node if none of them can answer
                chosen = self._select(tried + lagging, need)
                if chosen is not None:
                    return chosen
        if self._plain:  # no tags, tiers or caps on this chain: by score alone
            best: Upstream | None = None
            best_score = 0.0
            for up in self._rotation:
                if up.out_reason is None and up.breaker.closed and up not in tried:
                    score = up.score()
                    if best is None or score < best_score:
                        best, best_score = up, score
            return best
        eligible = [
            up
            for up in self._able(need)
            if up.out_reason is None and up.breaker.closed and up not in tried
        ]
        return min(eligible, key=lambda up: self._rank(up, need), default=None)

    def _able(self, need: str | None) -> list[Upstream]:
        """The upstreams in rotation that can serve a call needing ``need``: those declaring
        it, when any does (a chain that declares no capability serves everything everywhere)."""
        if need is None or need not in self._offered:
            return self._rotation
        return [up for up in self._rotation if need in up.tags]

    @staticmethod
    def _rank(up: Upstream, need: str | None) -> tuple[int, int, float]:
        """Own nodes with room first, then paid fallbacks with room, then full nodes; among
        equals, nodes without capabilities the call does not need (kept free for calls that
        do), then by score."""
        full = up.max_inflight is not None and up.inflight >= up.max_inflight
        spare = len(up.tags) - (1 if need in up.tags else 0)
        return (2 if full else 0) + (1 if up.fallback else 0), spare, up.score()

    def _select_probe(self, tried: list[Upstream], need: str | None = None) -> Upstream | None:
        """No closed breaker anywhere: let a request be a half-open probe."""
        candidates = [
            up
            for up in self._able(need)
            if up.out_reason is None and up not in tried and up.breaker.probe_available()
        ]
        for up in sorted(candidates, key=Upstream.score):
            if up.breaker.allow():
                return up
        return None

    def _bad(self, up: Upstream, what: str, status: int) -> UpstreamBadResponse:
        up.record_failure()
        error = UpstreamBadResponse(f"upstream {up.name!r} answered {what}", status=status)
        error.upstream = up.name
        return error

    async def _settle_write(
        self, up: Upstream, request: bytes, reply: bytes, raw_tx: bytes, deadline: float
    ) -> bytes:
        """A retried write may have been delivered before: see ``_writes``."""
        message = error_message(reply)
        if message is None:
            return reply
        if ALREADY_KNOWN.search(message):
            log.info("chain %s: retried transaction was already known to %s", self.name, up.name)
            return success_reply(request, tx_hash(raw_tx))
        if NONCE_TOO_LOW.search(message):
            digest = tx_hash(raw_tx)
            if await self._knows_tx(up, digest, deadline):
                log.info("chain %s: retried transaction %s was already in", self.name, digest)
                return success_reply(request, digest)
        return reply

    async def _knows_tx(self, up: Upstream, digest: str, deadline: float) -> bool:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        query = orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionByHash", "params": [digest]}
        )
        try:
            _, reply = await up.http.post(query, min(remaining, self._upstream_timeout))
            parsed = orjson.loads(reply)
        except (UpstreamError, orjson.JSONDecodeError):
            return False
        return isinstance(parsed, dict) and isinstance(parsed.get("result"), dict)

    # --- health ------------------------------------------------------------------------------

    def best_head(self) -> int | None:
        """The highest head among reachable, synced upstreams of the right chain."""
        return self._best_head

    def finalized_head(self, safe_depth: int | None = None) -> int | None:
        """The highest block every healthy upstream calls final: the lowest of their
        "finalized" tags (a node that lags cannot move it forward), else, for nodes without the
        tag, the best head minus ``safe_depth`` when one is given."""
        marks = [up.finalized for up in self.upstreams if up.healthy and up.finalized is not None]
        if marks:
            return min(marks)
        best = self._best_head
        if safe_depth is None or best is None:
            return None
        return max(best - safe_depth, -1)

    def snapshot(self) -> list[dict[str, Any]]:
        """Per upstream: health, reason, head, lag, breaker, latency, error rate, inflight,
        cordoned."""
        return [up.snapshot() for up in self.upstreams]

    async def check_now(self) -> None:
        """Check every upstream once, now (concurrently); the loop keeps its own rhythm."""
        await asyncio.gather(*(self._check(up) for up in self.upstreams))

    async def _health_loop(self, up: Upstream) -> None:
        # One task per upstream: a hanging node delays only its own checks.
        interval = self._health.interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self._check(up)
            except Exception:
                log.exception("chain %s: health check of %s crashed", self.name, up.name)

    async def _check(self, up: Upstream, *, evaluate: bool = True) -> None:
        want_chain_id = not up.chain_verified
        report = await check_upstream(
            up.health_http, self._health.timeout, want_chain_id=want_chain_id, batch=up.batch_ok
        )
        up.checked_at = self._clock()
        up.batch_ok = report.batch
        up.check_latency = report.latency
        if report.ok:
            up.reachable = True
            up.check_error = None
            up.head, up.syncing, up.peers = report.head, report.syncing, report.peers
            up.finalized = report.finalized
            up.txpool_pending, up.txpool_queued = report.txpool_pending, report.txpool_queued
            if report.client_version is not None:
                up.client_version = report.client_version
            if want_chain_id:
                if report.chain_id == self.chain.chain_id:
                    up.chain_verified = True
                    up.wrong_chain_id = None
                else:
                    up.wrong_chain_id = report.chain_id
            up.record_latency(report.latency)
            up.error_rate -= ERROR_ALPHA * up.error_rate
        else:
            up.reachable = False
            up.check_error = report.error
            up.chain_verified = False  # a node back from the dead may be another node
        breaker = up.breaker
        if not breaker.closed and breaker.allow():
            # Past the cool-down, the health check is the half-open probe.
            if report.ok and up.wrong_chain_id is None:
                breaker.record_success()
            else:
                breaker.record_failure()
        if evaluate:
            self._evaluate()

    def _evaluate(self) -> None:
        heads = [
            up.head
            for up in self.upstreams
            if up.reachable and up.head is not None and up.wrong_chain_id is None and not up.syncing
        ]
        best = max(heads) if heads else None
        self._best_head = best
        for up in self.upstreams:
            reason = self._judge(up, best)
            if reason != up.out_reason:
                if reason is None:
                    log.info("chain %s: upstream %s is back in", self.name, up.name)
                else:
                    log.warning("chain %s: upstream %s is out: %s", self.name, up.name, reason)
                up.out_reason = reason

    def _judge(self, up: Upstream, best: int | None) -> str | None:
        up.lag = None if best is None or up.head is None else max(0, best - up.head)
        if up.checked_at is None:
            return "not checked yet"
        if not up.reachable:
            return f"health check failed: {up.check_error}"
        if up.wrong_chain_id is not None:
            return f"wrong chain id {up.wrong_chain_id} (expected {self.chain.chain_id})"
        if up.syncing:
            return "syncing"
        if up.peers is not None and up.peers < self._health.min_peers:
            return f"{up.peers} peers (fewer than {self._health.min_peers})"
        if up.lag is not None and up.lag > self._health.max_lag:
            return f"{up.lag} blocks behind the best head {best}"
        return None

    def _breaker_changed(self, up: Upstream, old: BreakerState, new: BreakerState) -> None:
        log.warning(
            "chain %s: upstream %s breaker %s -> %s",
            self.name,
            up.name,
            old.name.lower(),
            new.name.lower(),
        )


def _looks_like_json(body: bytes) -> bool:
    """A cheap test: JSON-RPC answers are objects or arrays, or nothing at all (notifications
    get an empty 200 or 204)."""
    first = body[:1]
    if first == b"{" or first == b"[" or not first:
        return True
    first = body.lstrip()[:1]
    return first == b"{" or first == b"[" or not first

"""The read path: final answers from the cache, identical reads in flight sharing one upstream
call, and eth_getLogs within the plan's limits (split into the nodes' chunk size)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from hoodrun.config import PlanConfig
from hoodrun.gateway.blocks import logs_refusal, logs_span
from hoodrun.gateway.cache import (
    CACHEABLE,
    COALESCED,
    Coalescer,
    MemoryCache,
    RedisCache,
    plan_cache,
)
from hoodrun.gateway.chain import ChainState, loads
from hoodrun.gateway.errors import LimitExceeded
from hoodrun.gateway.http import Response
from hoodrun.gateway.jsonrpc import Call

if TYPE_CHECKING:
    from hoodrun.gateway.app import Gateway, Trace

__all__ = ["Reads", "error_code"]


class Reads:
    """The gateway's cache, coalescer and eth_getLogs guards."""

    def __init__(self, gateway: Gateway, shared_cache: RedisCache | None = None) -> None:
        self.gateway = gateway
        settings = gateway.config.cache
        self.cache = MemoryCache(settings.max_bytes) if settings.enabled else None
        self.shared_cache = shared_cache if settings.enabled else None
        self.coalescer = Coalescer() if settings.coalesce else None
        # The methods the pipeline hands to ``read``.
        self.methods: frozenset[str] = (
            COALESCED if settings.coalesce else CACHEABLE if settings.enabled else frozenset()
        )

    async def read(
        self, chain: ChainState, call: Call, method: str, body: bytes, trace: Trace
    ) -> Response:
        """A read without side effects: from the cache when its answer is final, else from a
        node, sharing the call with identical reads in flight (see ``hoodrun.gateway.cache``)."""
        params = call.obj.get("params")
        plan = None
        finalized = None
        if self.cache is not None and method in CACHEABLE:
            finalized = chain.pool.finalized_head(chain.config.finality_depth)
            plan = plan_cache(chain.name, method, params, finalized)
            if plan is not None:
                hit = self.cache.get(plan.key)
                if hit is None and self.shared_cache is not None:
                    hit = await self.shared_cache.get(plan.key)
                    if hit is not None:
                        self.cache.put(plan.key, hit)
                if hit is not None:
                    trace.cache = "HIT"
                    self.gateway.metrics.cache_lookups.inc((chain.name, "hit"))
                    return Response(200, _answer(call.id, hit))
                trace.cache = "MISS"
                self.gateway.metrics.cache_lookups.inc((chain.name, "miss"))
        if chain.config.hedge is not None and (
            method in COALESCED if chain.hedge_methods is None else method in chain.hedge_methods
        ):
            trace.hedge_delay = chain.hedge_delay()
        if self.coalescer is not None:
            try:
                key = orjson.dumps((chain.name, method, params))
            except orjson.JSONEncodeError:  # nested deeper than orjson writes: no sharing
                key = body
            (status, reply, upstream, latency), shared = await self.coalescer.run(
                key, lambda: self._shared_call(chain, body, trace)
            )
            if shared:
                trace.upstream, trace.upstream_latency = upstream, latency
                self.gateway.metrics.coalesced.inc((chain.name,))
                reply = _with_id(reply, call.id)
        else:
            status, reply = await self.gateway._call_upstream(chain, body, trace, need=trace.need)
        if status != 200:
            return Response(status, reply)
        if method == "eth_blockNumber":
            return Response(status, chain.monotonic_head_body(reply))
        if b'"error"' in reply:
            trace.rpc_errors = 1
            trace.error_code = error_code(loads(reply))
        elif plan is not None and self.cache is not None:
            answer = loads(reply)
            if isinstance(answer, dict) and "result" in answer:
                result = answer["result"]
                if plan.admits(result, finalized):
                    value = orjson.dumps(result)
                    self.cache.put(plan.key, value)
                    if self.shared_cache is not None:
                        self.shared_cache.put(plan.key, value)
        return Response(status, reply)

    async def get_logs(
        self, chain: ChainState, plan: PlanConfig, call: Call, body: bytes, trace: Trace
    ) -> Response:
        """eth_getLogs within the plan's limits: the block range (tags resolved to this
        chain's numbers) and the number of logs; ranges longer than the nodes take
        (``chains[].logs_chunk``) are split and their logs merged in order. Slow by nature: a
        longer deadline, and its timeouts do not count against a node's health."""
        trace.slow = True
        query, span = logs_span(chain, call)
        if span is not None:
            start, end = span
            refusal = logs_refusal(plan, self.gateway.config.gateway.max_logs_range, start, end)
            if refusal is not None:
                raise refusal
            chunk = chain.config.logs_chunk
            if chunk is not None and end - start + 1 > chunk and isinstance(query, dict):
                response = await self._split_logs(chain, call, query, start, end, chunk, trace)
            else:
                response = await self.read(chain, call, "eth_getLogs", body, trace)
        else:
            response = await self.read(chain, call, "eth_getLogs", body, trace)
        cap = plan.max_logs_results or self.gateway.config.gateway.max_logs_results
        if response.status == 200 and len(response.body) > cap * 100:  # cheap pre-check
            answer = loads(response.body)
            logs = answer.get("result") if isinstance(answer, dict) else None
            if isinstance(logs, list) and len(logs) > cap:
                raise LimitExceeded(
                    f"eth_getLogs matched {len(logs):,} logs; plan {plan.name!r} allows "
                    f"{cap:,} per request: narrow the block range or the filter",
                    reason="logs_results_exceeded",
                )
        return response

    def batch_logs(self, chain: ChainState, plan: PlanConfig, call: Call) -> LimitExceeded | None:
        _, span = logs_span(chain, call)
        if span is None:
            return None
        return logs_refusal(plan, self.gateway.config.gateway.max_logs_range, *span)

    async def _split_logs(
        self,
        chain: ChainState,
        call: Call,
        query: dict[str, Any],
        start: int,
        end: int,
        chunk: int,
        trace: Trace,
    ) -> Response:
        logs: list[Any] = []
        for first in range(start, end + 1, chunk):
            last = min(first + chunk - 1, end)
            part = {**query, "fromBlock": hex(first), "toBlock": hex(last)}
            body = orjson.dumps(
                {"jsonrpc": "2.0", "id": call.id, "method": "eth_getLogs", "params": [part]}
            )
            status, reply = await self.gateway._call_upstream(chain, body, trace)
            answer = loads(reply)
            if status != 200 or not isinstance(answer, dict) or "result" not in answer:
                if isinstance(answer, dict) and "error" in answer:
                    trace.rpc_errors = 1
                    trace.error_code = error_code(answer)
                return Response(status, reply)  # the failing part's answer, as the node gave it
            if isinstance(answer["result"], list):
                logs.extend(answer["result"])
        return Response(200, orjson.dumps({"jsonrpc": "2.0", "id": call.id, "result": logs}))

    async def _shared_call(
        self, chain: ChainState, body: bytes, trace: Trace
    ) -> tuple[int, bytes, str | None, float | None]:
        status, reply = await self.gateway._call_upstream(chain, body, trace, need=trace.need)
        return status, reply, trace.upstream, trace.upstream_latency


def _answer(call_id: Any, result: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (orjson.dumps(call_id), result)


def _with_id(reply: bytes, call_id: Any) -> bytes:
    """A node's answer to another caller's identical call, with this caller's id."""
    answer = loads(reply)
    if not isinstance(answer, dict) or answer.get("id") == call_id:
        return reply
    answer["id"] = call_id
    return orjson.dumps(answer)


def error_code(answer: Any) -> int:
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(code := error.get("code"), int):
            # Any integer a node sends; the records keep 32 bits.
            return code if -(2**31) <= code < 2**31 else -32603
        if error is not None:
            return -32603
    return 0

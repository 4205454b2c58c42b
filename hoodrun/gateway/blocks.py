"""Block references: tags resolved to a chain's numbers, what a call needs from a node, and the
eth_getLogs range. Pure functions over a ``ChainState``; the pipeline (``app.py``) applies them.

- ``pin_tags``: calls at ``latest`` (or with no block) are marked to go to the nodes at the best
  head first, so a client's head never goes backwards; ``finalized`` becomes the chain's
  finalized number, which every healthy node has and which never goes backwards.
- ``need_of``: ``trace`` for trace_* and debug_*; ``archive`` for state read further back than
  the chain's ``history`` blocks (or at ``earliest``).
- ``logs_span`` / ``logs_refusal``: an eth_getLogs range, tags resolved, against the plan.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from hoodrun.config import PlanConfig
from hoodrun.gateway.errors import LimitExceeded, MethodNotAllowed

if TYPE_CHECKING:
    from hoodrun.gateway.chain import ChainState
    from hoodrun.gateway.jsonrpc import Call

__all__ = [
    "BLOCK_ARGS",
    "STATE_READS",
    "block_number",
    "capability_refusal",
    "logs_refusal",
    "logs_span",
    "need_of",
    "pin_tags",
]

# State reads and where their block parameter sits: further back than a full node's history
# window, they need an archive node.
STATE_READS = {
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_getStorageAt": 2,
    "eth_call": 1,
    "eth_getProof": 2,
    "eth_estimateGas": 1,
    "eth_createAccessList": 1,
}
# Every method that reads at a block, and where the block parameter sits.
BLOCK_ARGS = {
    **STATE_READS,
    "eth_getBlockByNumber": 0,
    "eth_getBlockTransactionCountByNumber": 0,
    "eth_getTransactionByBlockNumberAndIndex": 0,
    "eth_getUncleByBlockNumberAndIndex": 0,
    "eth_getUncleCountByBlockNumber": 0,
    "eth_getBlockReceipts": 0,
}
_MOVING = ("latest", "pending", "safe", "finalized")


def block_number(chain: ChainState, ref: Any) -> int | None:
    """The number a block reference means on this chain now, if it can be known here."""
    if ref is None or ref in ("latest", "pending"):
        return chain.served_head or chain.pool.best_head()
    if ref == "earliest":
        return 0
    if ref in ("safe", "finalized"):
        return chain.pool.finalized_head(chain.config.finality_depth)
    if isinstance(ref, str) and ref.startswith("0x"):
        try:
            return int(ref, 16)
        except ValueError:
            return None
    return None


def pin_tags(chain: ChainState, method: str, call: Call, body: bytes) -> tuple[bytes, bool]:
    """(the body to send, whether the call reads the tip)."""
    if method == "eth_blockNumber":
        return body, True
    params = call.obj.get("params")
    if method == "eth_getLogs":
        query = params[0] if isinstance(params, list) and len(params) == 1 else None
        if not isinstance(query, dict) or isinstance(query.get("blockHash"), str):
            return body, False
        ends = {k: query.get(k) for k in ("fromBlock", "toBlock")}
        fresh = any(v in (None, "latest", "pending") for v in ends.values())
        if "finalized" not in ends.values() or (final := chain.finalized()) is None:
            return body, fresh
        pinned = {k: hex(final) for k, v in ends.items() if v == "finalized"}
        return _with_params(call, [{**query, **pinned}]), fresh
    index = BLOCK_ARGS.get(method)
    if index is None:
        return body, False
    ref = params[index] if isinstance(params, list) and len(params) > index else None
    if ref in (None, "latest", "pending"):
        return body, True
    if ref == "finalized" and isinstance(params, list):
        final = chain.finalized()
        if final is not None:
            return _with_params(call, [*params[:index], hex(final), *params[index + 1 :]]), False
    return body, False


def need_of(chain: ChainState, method: str, call: Call) -> str | None:
    """The capability a call needs beyond a full node, if any."""
    if method.startswith(("trace_", "debug_")):
        return "trace"
    index = STATE_READS.get(method)
    if index is None:
        return None
    params = call.obj.get("params")
    if not isinstance(params, list) or len(params) <= index:
        return None  # the block defaults to "latest"
    ref = params[index]
    if isinstance(ref, dict):  # EIP-1898; a block hash says nothing of its age here
        ref = ref.get("blockNumber")
    if not ref or ref in _MOVING:
        return None
    number = block_number(chain, ref)
    head = chain.served_head or chain.pool.best_head()
    if number is None or head is None:
        return None
    return "archive" if number < head - chain.config.history else None


def capability_refusal(plan: PlanConfig, method: str, need: str) -> MethodNotAllowed | None:
    if need == "archive" and not plan.archive:
        return MethodNotAllowed(
            f"Forbidden: {method} this far back needs archive access, which plan "
            f"{plan.name!r} does not include; read recent state or upgrade the plan",
            reason="archive_not_allowed",
        )
    if need == "trace" and not plan.trace:
        return MethodNotAllowed(
            f"Forbidden: {method} needs trace access, which plan {plan.name!r} does not include",
            reason="trace_not_allowed",
        )
    return None


def logs_span(
    chain: ChainState, call: Call
) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
    """The filter of an eth_getLogs call and its (first, last) block, tags resolved; the span
    is None when it cannot be known here (the node then answers as it would)."""
    params = call.obj.get("params")
    query = params[0] if isinstance(params, list) and len(params) == 1 else None
    if not isinstance(query, dict) or isinstance(query.get("blockHash"), str):
        return None, None
    start = block_number(chain, query.get("fromBlock"))
    end = block_number(chain, query.get("toBlock"))
    if start is None or end is None or end < start:
        return query, None
    return query, (start, end)


def logs_refusal(
    plan: PlanConfig, default_limit: int, start: int, end: int
) -> LimitExceeded | None:
    limit = plan.max_logs_range or default_limit
    if end - start + 1 <= limit:
        return None
    return LimitExceeded(
        f"eth_getLogs range too large: {end - start + 1:,} blocks asked "
        f"({start:#x}..{end:#x}); plan {plan.name!r} allows {limit:,} blocks per request: "
        "ask for smaller ranges",
        reason="logs_range_exceeded",
    )


def _with_params(call: Call, params: list[Any]) -> bytes:
    return orjson.dumps({**call.obj, "params": params})

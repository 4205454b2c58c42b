"""One health check of one upstream: head, sync state, peers, transaction pool (and chain id and
client version until the chain id is verified).

A check is one JSON-RPC batch ``[eth_blockNumber, eth_syncing, net_peerCount, the "finalized"
block's header, txpool_status (, eth_chainId, web3_clientVersion)]``. Nodes that refuse batches
get the calls one by one (and are remembered as such). Only ``eth_blockNumber`` (and
``eth_chainId`` when asked for) must succeed; an error from the others (anvil has no
``net_peerCount``, many nodes keep the ``txpool`` namespace closed, chains without finality tags
have no "finalized" block) means "unknown", which counts as fine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson

from hoodrun.upstreams._http import HttpPool
from hoodrun.upstreams.errors import UpstreamError

__all__ = ["HealthReport", "check_upstream"]

_BLOCK, _SYNCING, _PEERS, _CHAIN, _FINAL, _TXPOOL, _VERSION = 1, 2, 3, 4, 5, 6, 7
_METHODS = {
    _BLOCK: "eth_blockNumber",
    _SYNCING: "eth_syncing",
    _PEERS: "net_peerCount",
    _CHAIN: "eth_chainId",
    _FINAL: "eth_getBlockByNumber",
    _TXPOOL: "txpool_status",
    _VERSION: "web3_clientVersion",
}
_PARAMS: dict[int, list[Any]] = {_FINAL: ["finalized", False]}


def _call(ident: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0", "id": ident, "method": _METHODS[ident], "params": _PARAMS.get(ident, [])
    }  # fmt: skip


_ALWAYS = (_BLOCK, _SYNCING, _PEERS, _FINAL, _TXPOOL)
_FIRST = (*_ALWAYS, _CHAIN, _VERSION)  # until the chain id is verified
_REQUIRED = frozenset({_BLOCK, _CHAIN})
_BATCH = orjson.dumps([_call(i) for i in _ALWAYS])
_BATCH_WITH_CHAIN = orjson.dumps([_call(i) for i in _FIRST])
_SINGLE = {ident: orjson.dumps(_call(ident)) for ident in _METHODS}


class _CheckFailed(Exception):
    pass


@dataclass(slots=True)
class HealthReport:
    """What one check found. ``ok`` False means the node did not answer usefully (``error``)."""

    ok: bool
    error: str | None = None
    head: int | None = None
    syncing: bool | None = None
    peers: int | None = None
    finalized: int | None = None  # the node's "finalized" block number, if it has the tag
    txpool_pending: int | None = None
    txpool_queued: int | None = None
    chain_id: int | None = None
    client_version: str | None = None  # asked with the chain id
    latency: float = 0.0
    batch: bool = True  # the node accepts batches


async def check_upstream(
    http: HttpPool, timeout: float, *, want_chain_id: bool, batch: bool = True
) -> HealthReport:
    """Run one check within ``timeout`` seconds; never raises for an upstream failure."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    try:
        answers: dict[int, dict[str, Any]] | None = None
        if batch:
            answers = await _batch(http, deadline, want_chain_id)
            batch = answers is not None
        if answers is None:
            answers = await _one_by_one(http, deadline, want_chain_id)
        report = _read(answers, want_chain_id)
    except UpstreamError as exc:
        report = HealthReport(ok=False, error=f"{type(exc).__name__}: {exc}")
    except _CheckFailed as exc:
        report = HealthReport(ok=False, error=str(exc))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a malformed answer
        report = HealthReport(ok=False, error=f"unexpected answer: {exc!r}")
    report.latency = loop.time() - started
    report.batch = batch
    return report


async def _batch(
    http: HttpPool, deadline: float, want_chain_id: bool
) -> dict[int, dict[str, Any]] | None:
    """The answers by id, or None when the node does not take batches."""
    body = _BATCH_WITH_CHAIN if want_chain_id else _BATCH
    status, reply = await http.post(body, _remaining(deadline))
    try:
        parsed = orjson.loads(reply)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, list):
        # A single error object (or a non-2xx page) in answer to a batch: try one by one.
        if status >= 500:
            raise _CheckFailed(f"HTTP {status} from the node")
        return None
    return {item["id"]: item for item in parsed if isinstance(item, dict) and "id" in item}


async def _one_by_one(
    http: HttpPool, deadline: float, want_chain_id: bool
) -> dict[int, dict[str, Any]]:
    answers: dict[int, dict[str, Any]] = {}
    idents = _FIRST if want_chain_id else _ALWAYS
    for ident in idents:
        try:
            status, reply = await http.post(_SINGLE[ident], _remaining(deadline))
            parsed = orjson.loads(reply)
        except orjson.JSONDecodeError:
            if ident in _REQUIRED:
                raise _CheckFailed(f"{_METHODS[ident]}: HTTP {status}, not JSON") from None
            continue  # a provider refusing an optional method its own way: unknown
        except UpstreamError:
            if ident in _REQUIRED:
                raise
            continue
        if isinstance(parsed, dict):
            answers[ident] = parsed
    return answers


def _read(answers: dict[int, dict[str, Any]], want_chain_id: bool) -> HealthReport:
    head = _quantity(answers, _BLOCK, required=True)
    chain_id = _quantity(answers, _CHAIN, required=True) if want_chain_id else None
    syncing: bool | None = None
    sync = answers.get(_SYNCING)
    if sync is not None and sync.get("result") is not None:
        # false, or an object describing the sync; some nodes say true.
        syncing = sync["result"] is not False
    peers = _quantity(answers, _PEERS, required=False)
    final = answers.get(_FINAL)
    block = None if final is None else final.get("result")
    finalized = _hex(block.get("number")) if isinstance(block, dict) else None
    pending = queued = None
    txpool = answers.get(_TXPOOL)
    pool = None if txpool is None else txpool.get("result")
    if isinstance(pool, dict):
        pending, queued = _hex(pool.get("pending")), _hex(pool.get("queued"))
    version = answers.get(_VERSION)
    client = None if version is None else version.get("result")
    return HealthReport(
        ok=True, head=head, syncing=syncing, peers=peers, finalized=finalized,
        txpool_pending=pending, txpool_queued=queued, chain_id=chain_id,
        client_version=client[:200] if isinstance(client, str) else None,
    )  # fmt: skip


def _hex(value: Any) -> int | None:
    if isinstance(value, str):
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


def _quantity(answers: dict[int, dict[str, Any]], ident: int, *, required: bool) -> int | None:
    answer = answers.get(ident)
    result = None if answer is None else answer.get("result")
    value = _hex(result)
    if value is not None or not required:
        return value
    method = _METHODS[ident]
    if answer is None:
        raise _CheckFailed(f"{method}: no answer")
    error = answer.get("error")
    if isinstance(error, dict):
        raise _CheckFailed(f"{method}: {error.get('message', error)}")
    raise _CheckFailed(f"{method}: unexpected result {result!r}")


def _remaining(deadline: float) -> float:
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise _CheckFailed("health check timed out")
    return left

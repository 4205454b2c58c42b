"""The response cache: only answers that cannot change, and concurrent identical reads coalesced.

What is cached (``CachePolicy.plan``), per chain:

- ``eth_chainId``, ``net_version``: always the same.
- Lookups by block hash (``eth_getBlockByHash``, counts and transactions by block hash, a block
  hash in an EIP-1898 block parameter, ``eth_getLogs`` with ``blockHash``): a block's content never
  changes; if the block is reorged away, its hash is simply not asked for any more.
- Reads at a block number at or below the chain's finalized block (``eth_getBlockByNumber``,
  ``eth_getBalance``/``eth_getCode``/``eth_getStorageAt``/``eth_getTransactionCount``/``eth_call``
  at that height, ``eth_getLogs`` whose ``toBlock`` is final, ...): final blocks cannot be
  reorganized. The finalized block is the lowest "finalized" tag among the healthy upstreams (or
  the head minus ``chains[].finality_depth`` for chains without the tag).
- ``eth_getTransactionByHash`` / ``eth_getTransactionReceipt``: once the answer shows the
  transaction in a final block.

Never cached: errors, null results (not known yet, or not any more), anything at ``latest``,
``pending``, ``safe`` or ``finalized`` (those move; resolving them first would cache for a moment
only), heights above the finalized block, and every method not listed (writes, filters, traces).

Entries are the node's ``result`` bytes, keyed by chain, method and canonical params; a hit is
answered with the caller's own id. In process, bounded by bytes, least recently used out first;
with ``cache.backend: redis`` a shared second level in Redis, so gateway processes fill it for
each other (entries are final: a TTL only bounds Redis's memory).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = ["Coalescer", "MemoryCache", "Plan", "RedisCache", "plan_cache", "quantity"]

# Where the block parameter sits, per method that reads at a block.
_BLOCK_ARG = {
    "eth_getBlockByNumber": 0,
    "eth_getBlockTransactionCountByNumber": 0,
    "eth_getTransactionByBlockNumberAndIndex": 0,
    "eth_getUncleByBlockNumberAndIndex": 0,
    "eth_getUncleCountByBlockNumber": 0,
    "eth_getBlockReceipts": 0,
    "eth_getBalance": 1,
    "eth_getCode": 1,
    "eth_getTransactionCount": 1,
    "eth_call": 1,
    "eth_getStorageAt": 2,
    "eth_getProof": 2,
}
_BY_HASH = frozenset(
    {
        "eth_getBlockByHash",
        "eth_getBlockTransactionCountByHash",
        "eth_getTransactionByBlockHashAndIndex",
        "eth_getUncleByBlockHashAndIndex",
        "eth_getUncleCountByBlockHash",
    }
)
_BY_TX = frozenset({"eth_getTransactionByHash", "eth_getTransactionReceipt"})
_STATIC = frozenset({"eth_chainId", "net_version"})
CACHEABLE = frozenset({*_BLOCK_ARG, *_BY_HASH, *_BY_TX, *_STATIC, "eth_getLogs"})

# Reads without side effects: identical ones in flight at once share one upstream call.
COALESCED = CACHEABLE | frozenset(
    {
        "eth_blockNumber",
        "eth_gasPrice",
        "eth_maxPriorityFeePerGas",
        "eth_feeHistory",
        "eth_estimateGas",
        "eth_syncing",
        "web3_clientVersion",
        "net_listening",
        "net_peerCount",
        "eth_blobBaseFee",
    }
)

_ALWAYS, _FINAL_TX = "always", "final_tx"


class Plan:
    """A cacheable call: its key, and the condition its answer must meet to be stored."""

    __slots__ = ("condition", "key")

    def __init__(self, key: str, condition: str = _ALWAYS) -> None:
        self.key = key
        self.condition = condition

    def admits(self, result: Any, finalized: int | None) -> bool:
        if result is None:
            return False
        if self.condition == _FINAL_TX:
            number = quantity(result.get("blockNumber")) if isinstance(result, dict) else None
            return number is not None and finalized is not None and number <= finalized
        return True


def plan_cache(chain: str, method: str, params: Any, finalized: int | None) -> Plan | None:
    """How to cache this call on this chain now, or None when it must not be."""
    if method not in CACHEABLE:
        return None
    if params is None:
        params = []
    if not isinstance(params, list):
        return None
    if method in _STATIC:
        return Plan(f"{chain}|{method}")
    try:
        canonical = orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: not worth a key
        return None
    key = f"{chain}|{method}|{canonical}"
    if method in _BY_HASH:
        return Plan(key) if params and isinstance(params[0], str) else None
    if method in _BY_TX:
        return Plan(key, _FINAL_TX) if params and isinstance(params[0], str) else None
    if method == "eth_getLogs":
        return Plan(key) if _final_filter(params, finalized) else None
    index = _BLOCK_ARG[method]
    if len(params) <= index:  # the block defaults to "latest"
        return None
    return Plan(key) if _final_block(params[index], finalized) else None


def _final_block(ref: Any, finalized: int | None) -> bool:
    """The block parameter names a block whose content cannot change."""
    if isinstance(ref, dict):  # EIP-1898
        if isinstance(ref.get("blockHash"), str):
            return True
        ref = ref.get("blockNumber")
    if ref == "earliest":
        return True
    number = quantity(ref)
    return number is not None and finalized is not None and number <= finalized


def _final_filter(params: list[Any], finalized: int | None) -> bool:
    if len(params) != 1 or not isinstance(params[0], dict):
        return False
    query = params[0]
    if isinstance(query.get("blockHash"), str):
        return True
    # Both ends must be numbers (a missing end means "latest") and the upper one final.
    start, end = query.get("fromBlock"), query.get("toBlock")
    return quantity(start) is not None and _final_block(end, finalized) and end != "earliest"


def quantity(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x") and 2 < len(value) <= 18:
        try:
            return int(value, 16)
        except ValueError:
            return None
    return None


class MemoryCache:
    """Result bytes by key, least recently used out first, bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: str, value: bytes) -> None:
        cost = len(value) + len(key)
        if cost > self.max_bytes // 8:  # one huge answer must not flush the whole cache
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= len(old) + len(key)
        self._entries[key] = value
        self.size += cost
        while self.size > self.max_bytes:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted) + len(evicted_key)
            self.evictions += 1


class RedisCache:
    """The shared second level: GET / SET PX through the gateway's Redis client. A Redis
    failure is a miss (or a lost write), never a failed request."""

    def __init__(
        self, execute: Callable[..., Awaitable[Any]], prefix: str, ttl: float = 86400.0
    ) -> None:
        self._execute = execute
        self._prefix = f"{prefix}:cache:"
        self._ttl_ms = int(ttl * 1000)
        self.errors = 0
        self._writes: set[asyncio.Task[None]] = set()

    def _key(self, key: str) -> str:
        return self._prefix + hashlib.sha256(key.encode()).hexdigest()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._execute("GET", self._key(key))
        except Exception as exc:  # noqa: BLE001 (Redis down or slow: a miss)
            self._failed(exc)
            return None
        return value if isinstance(value, bytes) else None

    def put(self, key: str, value: bytes) -> None:
        """Stored in the background: the answer does not wait for Redis."""
        task = asyncio.get_running_loop().create_task(self._put(key, value))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, key: str, value: bytes) -> None:
        try:
            await self._execute("SET", self._key(key), value, "PX", self._ttl_ms)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
            logging.getLogger("hoodrun.gateway").warning(
                "shared cache (Redis) failed %d time(s): %s", self.errors, exc
            )


class Coalescer:
    """Identical reads in flight at once share one upstream call: the first caller makes it,
    the others wait for its outcome (answer or error). If the first caller is cancelled (its
    client left), a waiting caller makes the call itself."""

    def __init__(self) -> None:
        self._inflight: dict[bytes, asyncio.Future[Any]] = {}
        self.shared = 0

    async def run(self, key: bytes, call: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """(outcome, whether it came from another caller's call)."""
        waiting = self._inflight.get(key)
        if waiting is not None:
            try:
                outcome = await asyncio.shield(waiting)
            except asyncio.CancelledError:
                if not waiting.cancelled():
                    raise  # this caller was cancelled, not the call it waited for
            else:
                self.shared += 1
                return outcome, True
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            outcome = await call()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: no warning when nobody waited
            raise
        else:
            future.set_result(outcome)
            return outcome, False
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

"""Compute units: what one JSON-RPC call weighs, per method and chain.

The default table follows the public tables of the large providers (Alchemy's compute units:
eth_blockNumber 10, eth_call 26, eth_getLogs 75, eth_sendRawTransaction 250,
debug_traceTransaction 309, ...). The config can change any entry, per chain too; a method that is
in no table costs ``compute_units.default``. Calls the gateway refused or could not serve cost
nothing; a call answered from the response cache costs ``compute_units.cache_hit_percent`` of
its units (100 by default: a cache hit is still the customer's call). A WebSocket notification
(a record of method ``eth_subscription``) costs a unit per ``notification_bytes_per_unit`` bytes,
rounded up (25 by default: 0.04 units a byte, as the large providers charge); it is not a call,
so it counts towards compute units, never towards requests.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_COMPUTE_UNITS", "NOTIFICATION", "ComputeUnits", "discounted"]

NOTIFICATION = "eth_subscription"  # the method of a WebSocket notification's record

DEFAULT_COMPUTE_UNITS: Mapping[str, int] = {
    # free of charge: identity and liveness
    "eth_chainId": 0,
    "net_version": 0,
    "net_listening": 0,
    "eth_syncing": 0,
    "web3_clientVersion": 0,
    "eth_protocolVersion": 0,
    # reads
    "eth_blockNumber": 10,
    "eth_feeHistory": 10,
    "eth_maxPriorityFeePerGas": 10,
    "eth_accounts": 10,
    "net_peerCount": 10,
    "web3_sha3": 10,
    "eth_getTransactionReceipt": 15,
    "eth_getBlockByNumber": 16,
    "eth_getBlockByHash": 16,
    "eth_getBlockTransactionCountByHash": 20,
    "eth_getBlockTransactionCountByNumber": 20,
    "eth_getTransactionByHash": 17,
    "eth_getTransactionByBlockHashAndIndex": 15,
    "eth_getTransactionByBlockNumberAndIndex": 15,
    "eth_getStorageAt": 17,
    "eth_getBalance": 19,
    "eth_getCode": 19,
    "eth_gasPrice": 19,
    "eth_getUncleCountByBlockHash": 15,
    "eth_getUncleCountByBlockNumber": 15,
    "eth_getUncleByBlockHashAndIndex": 15,
    "eth_getUncleByBlockNumberAndIndex": 15,
    "eth_getTransactionCount": 26,
    "eth_call": 26,
    "eth_getProof": 21,
    "eth_getBlockReceipts": 500,
    "eth_getLogs": 75,
    "eth_newFilter": 20,
    "eth_newBlockFilter": 20,
    "eth_newPendingTransactionFilter": 20,
    "eth_getFilterChanges": 20,
    "eth_getFilterLogs": 75,
    "eth_uninstallFilter": 10,
    "eth_estimateGas": 87,
    "eth_createAccessList": 87,
    # writes and subscriptions
    "eth_sendRawTransaction": 250,
    "eth_subscribe": 10,
    "eth_unsubscribe": 10,
    "eth_subscription": 0,  # a notification, when not charged by its bytes
    # traces
    "debug_traceTransaction": 309,
    "debug_traceCall": 309,
    "debug_traceBlockByNumber": 497,
    "debug_traceBlockByHash": 497,
    "trace_transaction": 26,
    "trace_block": 26,
    "trace_call": 75,
    "trace_filter": 75,
    "trace_replayTransaction": 2983,
    "trace_replayBlockTransactions": 2983,
}


class ComputeUnits:
    """``of(chain, method)``: the default table, overridden by the config, per chain last."""

    def __init__(
        self,
        default: int = 20,
        methods: Mapping[str, int] | None = None,
        chains: Mapping[str, Mapping[str, int]] | None = None,
        cache_hit_percent: int = 100,
        notification_bytes_per_unit: int | None = None,
    ) -> None:
        self.default = default
        self.cache_hit_percent = cache_hit_percent
        self.notification_bytes_per_unit = notification_bytes_per_unit
        self._methods = {**DEFAULT_COMPUTE_UNITS, **(methods or {})}
        self._chains = {
            chain: {**self._methods, **table} for chain, table in (chains or {}).items()
        }

    def of(self, chain: str, method: str) -> int:
        table = self._chains.get(chain, self._methods)
        return table.get(method, self.default)

    def notification(self, chain: str, size: int) -> int:
        """The units a WebSocket notification of ``size`` bytes costs."""
        per = self.notification_bytes_per_unit
        if per is None:
            return self.of(chain, NOTIFICATION)
        return -(-size // per)

    def charged(self, chain: str, method: str, cache_hit: bool) -> int:
        """The units a call answered by a node (or by the cache) costs."""
        units = self.of(chain, method)
        return discounted(units, self.cache_hit_percent) if cache_hit else units


def discounted(units: int, percent: int) -> int:
    """``percent`` of ``units``, rounded half up to a whole unit."""
    return (units * percent + 50) // 100

"""The period close's usage, apart from the ``PeriodCloser``: the queries that count it in the
hourly rollups, and the steps that cut a month into contract parts, split the usage between them,
weigh it under a price and report what is not billed. Re-exported by ``hoodrun.billing.close``,
whose docstring says how the close uses them.

What is counted
    Calls answered by a node or the cache (outcome ok or rpc_error) count as requests and their
    compute units count; WebSocket notifications (``eth_subscription``) add compute units only;
    refused and failed calls count nothing. Rows are kept by (chain, method); a method's kind is
    trace (``trace_*``, ``debug_*``) or plain.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hoodrun.billing.snapshots import Unbilled
from hoodrun.metering.config import PriceConfig, TierConfig
from hoodrun.metering.entitlements import method_kind
from hoodrun.metering.rating import ContractTerms, weigh
from hoodrun.metering.store import Contract

_BILLABLE = "outcome IN ('ok', 'rpc_error')"
_CALLS = f"{_BILLABLE} AND method != 'eth_subscription'"

# Billable usage of [start, end) per org, chain and method.
USAGE_BY_METHOD = f"""
SELECT org_id, chain, method,
    sumIf(requests, {_CALLS}) AS requests,
    sumIf(compute_units, {_BILLABLE}) AS compute_units
FROM {{db}}.usage_hourly FINAL
WHERE hour >= toDateTime({{start:Int64}}, 'UTC') AND hour < toDateTime({{end:Int64}}, 'UTC')
    AND org_id != ''
GROUP BY org_id, chain, method
HAVING requests > 0 OR compute_units > 0
"""  # noqa: S608 (constant fragments; values are parameters)

# The same per hour, for the orgs named (comma-separated ids): those whose month splits in parts.
USAGE_BY_HOUR = f"""
SELECT org_id, toUnixTimestamp(hour) AS hour, chain, method,
    sumIf(requests, {_CALLS}) AS requests,
    sumIf(compute_units, {_BILLABLE}) AS compute_units
FROM {{db}}.usage_hourly FINAL
WHERE hour >= toDateTime({{start:Int64}}, 'UTC') AND hour < toDateTime({{end:Int64}}, 'UTC')
    AND has(splitByChar(',', {{orgs:String}}), org_id)
GROUP BY org_id, hour, chain, method
HAVING requests > 0 OR compute_units > 0
"""  # noqa: S608

# (chain, method) -> [requests, compute units]
_Counts = dict[tuple[str, str], list[int]]


@dataclass(frozen=True, slots=True)
class _Part:
    start: datetime
    end: datetime
    contract: Contract | None


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


def _parts(history: Sequence[Contract], start: datetime, end: datetime) -> list[_Part]:
    """The month cut where the contract in force changes (None: no contract)."""
    cuts = {start, end}
    for other in history:
        for at in (other.starts_at, other.ends_at):
            if at is not None and start < at < end:
                cuts.add(at)
    points = sorted(cuts)
    parts: list[_Part] = []
    for left, right in itertools.pairwise(points):
        # The newest contract covering the part's start, as ContractBook decides.
        covering = [c for c in history if c.in_force(left)]
        contract = covering[-1] if covering else None
        if parts and _same(parts[-1].contract, contract):
            parts[-1] = _Part(parts[-1].start, right, contract)
        else:
            parts.append(_Part(left, right, contract))
    return parts


def _same(a: Contract | None, b: Contract | None) -> bool:
    return (a.id if a else None) == (b.id if b else None)


def _split(parts: Sequence[_Part], hourly: Mapping[int, _Counts]) -> list[_Counts]:
    """Hourly usage into the parts: an hour goes to the part its start falls in."""
    out: list[_Counts] = [{} for _ in parts]
    for hour, counts in hourly.items():
        at = datetime.fromtimestamp(hour, UTC)
        index = next((i for i, p in enumerate(parts) if p.start <= at < p.end), len(parts) - 1)
        for key, (requests, units) in counts.items():
            into = out[index].setdefault(key, [0, 0])
            into[0] += requests
            into[1] += units
    return out


def _add(counts: _Counts, item: Mapping[str, Any]) -> None:
    into = counts.setdefault((str(item["chain"]), str(item["method"])), [0, 0])
    into[0] += int(item["requests"])
    into[1] += int(item["compute_units"])


def _weigh(counts: _Counts, price: PriceConfig) -> Decimal:
    """The quantity of ``price.meter`` the counts weigh under ``price``'s multipliers."""
    index = 0 if price.meter == "requests" else 1
    rows = (
        (chain, method_kind(method), Decimal(c[index])) for (chain, method), c in counts.items()
    )
    return weigh(rows, price)


def _usage_json(counts: _Counts) -> list[dict[str, Any]]:
    return [
        {
            "chain": chain,
            "kind": method_kind(method),
            "method": method,
            "requests": requests,
            "compute_units": units,
        }
        for (chain, method), (requests, units) in sorted(counts.items())
    ]


def _unbilled(org: str, period: str, counts: _Counts, reason: str) -> Unbilled:
    requests = sum(value[0] for value in counts.values())
    units = sum(value[1] for value in counts.values())
    return Unbilled(org, period, requests, units, reason)


def _unbilled_of(
    org: str, period: str, usage: _Counts | None, late: Sequence[Mapping[str, Any]]
) -> list[Unbilled]:
    """An org without a contract in ``period``: its usage, and its late usage per month."""
    out = [_unbilled(org, period, usage, f"no contract in {period}")] if usage else []
    by_month: dict[str, _Counts] = defaultdict(dict)
    for row in late:
        _add(by_month[row["period"]], row)
    for month, counts in sorted(by_month.items()):
        out.append(_unbilled(org, month, counts, f"late usage; no contract in {period}"))
    return out


def _nothing(currency: str) -> PriceConfig:
    """A price that charges nothing and shows no line."""
    return PriceConfig(type="METERED", currency=currency, tiers=(TierConfig(),))


def _outside_terms(contract: Contract) -> ContractTerms:
    """Terms for a part outside any contract: no discount or minimum, the contract's tax terms."""
    return ContractTerms(
        currency=contract.currency,
        country=contract.country,
        tax_id=contract.tax_id,
        business=contract.business,
    )

"""Entitlements: may this org use a feature, and how much of its monthly quota is left.

``UsageCounters`` is a telemetry sink: it counts every billable call of the gateway's records
(answered by a node or by the cache; not refused, not failed) per org and calendar month (UTC),
in requests and compute units, the same rules as the analytics store's ``compute_units``. On
start it is seeded with the month so far from the analytics store, so a restart forgets nothing
that was written there.

``Entitlements.check(org, plan, name)`` answers from memory (a few dict lookups): a feature of
the plan (``archive``, ``trace``, ``websocket``) or a meter with a quota (``requests``,
``compute_units``) with what is left and when it resets. The gateway refuses a call once any
quota of the key's plan is used up (429, JSON-RPC -32005, reason ``quota_exceeded``); a plan
change applies to the next request, since the plan is looked up on each one.

Each gateway process counts its own traffic: with several gateway processes a quota is enforced
per process on top of the month so far at its start, and the analytics store holds the exact
total (the invoice's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from hoodrun.config import PlanConfig
from hoodrun.telemetry.schema import BILLABLE_SINCE
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.store import AnalyticsStore
from hoodrun.telemetry.units import ComputeUnits

__all__ = [
    "FEATURES",
    "Entitlement",
    "Entitlements",
    "UsageCounters",
    "billable_since",
    "month_bounds",
]

FEATURES = ("archive", "trace", "websocket")
_METERS = ("requests", "compute_units")


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) holding ``now``: [start, end)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


@dataclass(frozen=True, slots=True)
class Entitlement:
    """The answer of a check. For a feature only ``allowed``; for a meter also the quota."""

    name: str
    allowed: bool
    limit: int | None = None
    used: int | None = None
    remaining: int | None = None
    resets_at: datetime | None = None


class UsageCounters:
    """Month-to-date billable usage per org (a telemetry sink; see the module docstring)."""

    def __init__(self, units: ComputeUnits, clock: Callable[[], float] = time.time) -> None:
        self.units = units
        self._clock = clock
        self._month_end = 0.0
        self.month_start = datetime.fromtimestamp(0, UTC)
        self._usage: dict[str, list[int]] = {}  # org id -> [requests, compute units]
        self._roll()

    def _roll(self) -> None:
        start, end = month_bounds(datetime.fromtimestamp(self._clock(), UTC))
        self.month_start, self.month_end = start, end
        self._month_end = end.timestamp()
        self._usage = {}

    def emit(self, record: RequestRecord) -> None:
        org = record.org_id
        if org is None:
            return
        if record.ts >= self._month_end:
            self._roll()
        units = self.units
        if record.call_results is None:
            if record.reason is not None or record.status >= 500 or not record.calls:
                return  # refused by the gateway, or no node answered
            requests = record.calls
            cost = sum(
                units.charged(record.chain, method, record.cache_hit) for method in record.methods
            )
        else:  # a batch: the calls the gateway answered itself cost nothing
            requests = cost = 0
            for method, (_, reason) in zip(record.methods, record.call_results, strict=False):
                if reason is None:
                    requests += 1
                    cost += units.charged(record.chain, method, record.cache_hit)
        counts = self._usage.get(org)
        if counts is None:
            counts = self._usage[org] = [0, 0]
        counts[0] += requests
        counts[1] += cost

    async def aclose(self) -> None:
        return None

    def seed(self, totals: dict[str, tuple[int, int]]) -> None:
        """Add the month so far, per org: (requests, compute units), from the analytics store."""
        for org, (requests, cost) in totals.items():
            counts = self._usage.setdefault(org, [0, 0])
            counts[0] += requests
            counts[1] += cost

    def used(self, org: str, meter: str) -> int:
        if self._clock() >= self._month_end:
            self._roll()
        counts = self._usage.get(org)
        if counts is None:
            return 0
        return counts[0] if meter == "requests" else counts[1]


async def billable_since(store: AnalyticsStore, start: datetime) -> dict[str, tuple[int, int]]:
    """Per org: (requests, compute units) billable since ``start``, from the analytics store."""
    rows = await store.query(BILLABLE_SINCE, {"start": int(start.timestamp() * 1000)})
    return {row["org_id"]: (int(row["requests"]), int(row["compute_units"])) for row in rows}


class Entitlements:
    """Checks against a plan and the org's month so far (see the module docstring)."""

    def __init__(self, counters: UsageCounters) -> None:
        self.counters = counters

    def check(self, org: str, plan: PlanConfig, name: str) -> Entitlement:
        if name in FEATURES:
            return Entitlement(name, bool(getattr(plan, name)))
        if name not in _METERS and name not in plan.quotas:
            raise KeyError(name)
        limit = plan.quotas.get(name)
        used = self.counters.used(org, name) if name in _METERS else None
        if limit is None:
            return Entitlement(name, True, None, used, None, None)
        used = used or 0
        remaining = max(limit - used, 0)
        return Entitlement(name, used < limit, limit, used, remaining, self.counters.month_end)

    def exhausted(self, org: str, plan: PlanConfig) -> Entitlement | None:
        """The first quota of ``plan`` the org has used up this month, or None (the hot path:
        nothing to do for a plan without quotas)."""
        for meter, limit in plan.quotas.items():
            if meter in _METERS and self.counters.used(org, meter) >= limit:
                return self.check(org, plan, meter)
        return None

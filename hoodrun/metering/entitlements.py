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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from hoodrun.config import PlanConfig
from hoodrun.metering.money import Money
from hoodrun.metering.rating import ContractTerms, rate_period, weigh
from hoodrun.telemetry.schema import BILLABLE_SINCE
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.store import AnalyticsStore
from hoodrun.telemetry.units import NOTIFICATION, ComputeUnits

__all__ = [
    "FEATURES",
    "METERS",
    "Entitlement",
    "Entitlements",
    "OrgEntitlements",
    "UsageCounters",
    "billable_since",
    "method_kind",
    "month_bounds",
]

FEATURES = ("archive", "trace", "websocket")
METERS = ("requests", "compute_units")
_CHARGES = ("fee", "usage", "flat")  # a period's charges before discounts, minimum and tax


def method_kind(method: str) -> str:
    """The kind of a method for prices' multipliers: trace (trace_*, debug_*) or plain. (Whether
    a call needed an archive node is not in the record: archive multipliers apply to invoices
    rated from the analytics store, not to spending caps.)"""
    return "trace" if method.startswith(("trace_", "debug_")) else "plain"


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
        self.clock = self._clock = clock
        self._month_end = 0.0
        self.month_start = datetime.fromtimestamp(0, UTC)
        self._usage: dict[str, list[int]] = {}  # org id -> [requests, compute units]
        # org id -> (chain, method kind) -> [requests, compute units]: what prices weigh
        self._split: dict[str, dict[tuple[str, str], list[int]]] = {}
        self._roll()

    def _roll(self) -> None:
        start, end = month_bounds(datetime.fromtimestamp(self._clock(), UTC))
        self.month_start, self.month_end = start, end
        self._month_end = end.timestamp()
        self._usage = {}
        self._split = {}

    def emit(self, record: RequestRecord) -> None:
        org = record.org_id
        if org is None:
            return
        if record.ts >= self._month_end:
            self._roll()
        units = self.units
        chain = record.chain
        if record.call_results is None:
            if record.reason is not None or record.status >= 500 or not record.calls:
                return  # refused by the gateway, or no node answered
            if record.method == NOTIFICATION:  # not a call: its bytes, no request
                requests, cost = 0, units.notification(chain, record.bytes_out)
            else:
                requests = record.calls
                cost = sum(
                    units.charged(chain, method, record.cache_hit) for method in record.methods
                )
            self._add(org, chain, record.methods[0] if record.methods else "", requests, cost)
        else:  # a batch: the calls the gateway answered itself cost nothing
            requests = cost = 0
            for method, (_, reason) in zip(record.methods, record.call_results, strict=False):
                if reason is None:
                    charged = units.charged(chain, method, record.cache_hit)
                    requests += 1
                    cost += charged
                    # Each call under its own kind: a batch weighs what its calls do one by one.
                    self._add(org, chain, method, 1, charged)
        counts = self._usage.get(org)
        if counts is None:
            counts = self._usage[org] = [0, 0]
        counts[0] += requests
        counts[1] += cost

    def _add(self, org: str, chain: str, method: str, requests: int, cost: int) -> None:
        """Count usage under its (chain, method kind), what prices' multipliers weigh."""
        split = self._split.get(org)
        if split is None:
            split = self._split[org] = {}
        key = (chain, method_kind(method))
        part = split.get(key)
        if part is None:
            part = split[key] = [0, 0]
        part[0] += requests
        part[1] += cost

    async def aclose(self) -> None:
        return None

    def seed(self, totals: dict[str, tuple[int, int]]) -> None:
        """Add the month so far, per org: (requests, compute units), from the analytics store."""
        for org, (requests, cost) in totals.items():
            counts = self._usage.setdefault(org, [0, 0])
            counts[0] += requests
            counts[1] += cost

    def usage_rows(self, org: str, meter: str) -> list[tuple[str, str, Decimal]]:
        """The org's month so far as ``(chain, method kind, quantity)`` rows for ``weigh``
        (the month so far read at start has no split: it counts as plain calls of chain "-")."""
        index = 0 if meter == "requests" else 1
        rows = [
            (chain, kind, Decimal(part[index]))
            for (chain, kind), part in self._split.get(org, {}).items()
        ]
        counted = sum(int(q) for _, _, q in rows)
        seeded = self.used(org, meter) - counted
        if seeded > 0:
            rows.append(("-", "plain", Decimal(seeded)))
        return rows

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

    def __init__(self, counters: UsageCounters, *, cap_every: float = 1.0) -> None:
        self.counters = counters
        self._cap_every = cap_every
        # org id -> (recompute after, the plan it was for, amount so far)
        self._spent: dict[str, tuple[float, PlanConfig, Money]] = {}

    def spent(self, org: str, plan: PlanConfig) -> Money | None:
        """What the month so far costs under ``plan``'s price (before discounts, minimum and
        tax; None without a price): recomputed at most every ``cap_every`` seconds per org."""
        price = plan.price
        if price is None:
            return None
        now = self.counters.clock()
        cached = self._spent.get(org)
        if cached is not None and cached[0] > now and cached[1] is plan:
            return cached[2]
        start, end = self.counters.month_start, self.counters.month_end
        rated = rate_period(
            price,
            weigh(self.counters.usage_rows(org, price.meter), price),
            period_start=start,
            period_end=end,
            contract=ContractTerms(currency=price.currency, plan=plan.name),
        )
        amount = sum(
            (line.amount for line in rated.lines if line.kind in _CHARGES),
            Money.zero(price.currency),
        )
        self._spent[org] = (now + self._cap_every, plan, amount)
        return amount

    def over_cap(self, org: str, plan: PlanConfig) -> tuple[Money, Money] | None:
        """(spent, cap) when the org's month so far reached the plan's spending cap."""
        cap = plan.spending_cap
        if cap is None:
            return None
        spent = self.spent(org, plan)
        if spent is None:
            return None
        limit = Money(cap, spent.currency)
        return (spent, limit) if spent.amount >= cap else None

    def check(self, org: str, plan: PlanConfig, name: str) -> Entitlement:
        if name in FEATURES:
            return Entitlement(name, bool(getattr(plan, name)))
        if name not in METERS and name not in plan.quotas:
            raise KeyError(name)
        limit = plan.quotas.get(name)
        used = self.counters.used(org, name) if name in METERS else None
        if limit is None:
            return Entitlement(name, True, None, used, None, None)
        used = used or 0
        remaining = max(limit - used, 0)
        return Entitlement(name, used < limit, limit, used, remaining, self.counters.month_end)

    def exhausted(self, org: str, plan: PlanConfig) -> Entitlement | None:
        """The first quota of ``plan`` the org has used up this month, or None (the hot path:
        nothing to do for a plan without quotas)."""
        for meter, limit in plan.quotas.items():
            if meter in METERS and self.counters.used(org, meter) >= limit:
                return self.check(org, plan, meter)
        return None


class OrgEntitlements:
    """Entitlements by org id, for the HTTP API ("check access") of the api role.

    The plan is the org's (``orgs.plan``, else the config's default plan). Usage comes from this
    process's gateway counters when it runs one (``hoodrun up``), else from the analytics store's
    month so far, read again at most every ``refresh`` seconds.
    """

    def __init__(
        self,
        plans: Callable[[str | None], PlanConfig],
        org_plan: Callable[[str], Awaitable[str | None]],
        *,
        counters: UsageCounters | None = None,
        analytics: AnalyticsStore | None = None,
        units: ComputeUnits | None = None,
        refresh: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._plans = plans
        self._org_plan = org_plan
        self._counters = counters
        self._analytics = analytics
        self._units = units or ComputeUnits()
        self._refresh = refresh
        self._clock = clock
        self._read_at = -float("inf")

    async def _usage(self) -> UsageCounters:
        if self._counters is not None and self._analytics is None:
            return self._counters
        if self._counters is None or self._clock() - self._read_at >= self._refresh:
            counters = UsageCounters(self._units, self._clock)
            if self._analytics is not None:
                counters.seed(await billable_since(self._analytics, counters.month_start))
            self._counters, self._read_at = counters, self._clock()
        return self._counters

    async def plan(self, org: str) -> PlanConfig:
        """The org's plan; ``LookupError`` when no org has this id."""
        return self._plans(await self._org_plan(org))

    async def all(self, org: str) -> tuple[PlanConfig, list[Entitlement]]:
        plan = await self.plan(org)
        entitlements = Entitlements(await self._usage())
        names = [*FEATURES, *METERS]
        return plan, [entitlements.check(org, plan, name) for name in names]

    async def check(self, org: str, name: str) -> Entitlement:
        """``KeyError`` for a name that is neither a feature nor a meter."""
        if name not in FEATURES and name not in METERS:
            raise KeyError(name)
        plan = await self.plan(org)
        return Entitlements(await self._usage()).check(org, plan, name)

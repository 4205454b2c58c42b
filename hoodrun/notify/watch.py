"""The watcher (the ``notify-watch`` job): usage against quotas and spending caps, and error rates
per key, turned into events sent once.

Usage: per org whose plan (``orgs.plan``, else the default plan, as the gateway's) has a quota
(``requests``, ``compute_units``) or a spending cap, the month so far (UTC) as the gateway and the
entitlements API count it (``billable_since`` over the analytics store; the cap's amount rated by
the plan's price, ``Entitlements.spent``). Each threshold of ``notifications.usage_thresholds``
reached is a ``usage.threshold`` event, once per (org, month, meter, threshold); reaching 100% is
also ``quota.exhausted``, once per (org, month, meter). The spending cap is the meter
``spending_cap``, its amounts ``{"amount": "8.00", "currency": "USD"}``.

Errors: per key, the calls of the last ``notifications.error_window`` seconds (the raw rows,
exact to the second); at least ``error_min_requests`` of them with a share of ``error_rate`` or
more not ``ok`` (a node's error, a refusal, a failure: the usage reports' ``errors``) is an
``error_rate.spike`` event, once per (key, UTC hour).

"Once" is the ``notices`` table's: the notice's row is inserted (or found there, and nothing is
sent) in the transaction that emits the event, so two watchers at once send it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from hoodrun.config import Config, PlanConfig
from hoodrun.metering.entitlements import (
    METERS,
    Entitlements,
    UsageCounters,
    billable_since,
    month_bounds,
)
from hoodrun.metering.money import Money, round_line
from hoodrun.store import Store
from hoodrun.store.tables import notices, orgs
from hoodrun.telemetry.reporting import Reports
from hoodrun.telemetry.store import AnalyticsStore
from hoodrun.telemetry.units import ComputeUnits
from hoodrun.webhooks import WebhookBook

__all__ = ["SPENDING_CAP", "Watcher"]

log = logging.getLogger("hoodrun.notify")

SPENDING_CAP = "spending_cap"
"""The meter name of a spending cap in ``usage.threshold`` and ``quota.exhausted``."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Org:
    id: str
    plan: PlanConfig


def _money(value: Money) -> dict[str, str]:
    return {"amount": str(round_line(value.amount, value.currency)), "currency": value.currency}


class Watcher:
    """Checks usage and error rates and emits what they cross (see the module docstring).

    ``book`` emits the events (default: one on ``store``).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        analytics: AnalyticsStore,
        *,
        book: WebhookBook | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._config = config
        self._settings = config.notifications
        self._store = store
        self._analytics = analytics
        self._book = book if book is not None else WebhookBook(store, clock=clock)
        self._clock = clock

    async def check(self) -> dict[str, int]:
        """One check of everything; how many events of each kind were sent."""
        sent = {"usage.threshold": 0, "quota.exhausted": 0, "error_rate.spike": 0}
        if not self._settings.enabled:
            return sent
        now = self._clock()
        for event in await self.check_usage(now):
            sent[event] += 1
        for event in await self.check_errors(now):
            sent[event] += 1
        return sent

    # --- usage -----------------------------------------------------------------------------------

    async def _watched_orgs(self) -> list[_Org]:
        """The orgs whose plan has a quota of a meter counted here, or a spending cap."""
        async with self._store.connect() as conn:
            rows = (await conn.execute(select(orgs.c.id, orgs.c.plan).order_by(orgs.c.id))).all()
        found = []
        for org_id, plan_name in rows:
            plan = self._plan_named(plan_name)
            if any(meter in METERS for meter in plan.quotas) or plan.spending_cap is not None:
                found.append(_Org(org_id, plan))
        return found

    def _plan_named(self, name: str | None) -> PlanConfig:
        # As the gateway: an org's plan, the default plan for none (or one gone from the config).
        config = self._config
        found = config.plan(name) if name is not None else None
        return found or config.plan(config.default_plan) or config.plans[0]

    async def check_usage(self, now: datetime) -> list[str]:
        """Thresholds of quotas and spending caps reached this month; the events sent."""
        watched = await self._watched_orgs()
        if not watched:
            return []
        # Only seeded: the month's counts (compute units included) come from the analytics rows.
        counters = UsageCounters(ComputeUnits(), clock=now.timestamp)
        counters.seed(await billable_since(self._analytics, counters.month_start))
        entitlements = Entitlements(counters, cap_every=0.0)
        start, end = month_bounds(now)
        period = f"{start.year:04d}-{start.month:02d}"
        sent: list[str] = []
        for org in watched:
            if not any(counters.used(org.id, meter) for meter in METERS):
                continue  # nothing used this month
            for meter, limit in org.plan.quotas.items():
                if meter in METERS:
                    used = counters.used(org.id, meter)
                    shown: dict[str, object] = {"limit": limit, "used": used}
                    sent += await self._crossed(
                        org.id, meter, Decimal(used), Decimal(limit), shown, period, end
                    )
            cap = org.plan.spending_cap
            spent = entitlements.spent(org.id, org.plan)
            if cap is not None and spent is not None:
                shown = {"limit": _money(Money(cap, spent.currency)), "used": _money(spent)}
                sent += await self._crossed(
                    org.id, SPENDING_CAP, spent.amount, cap, shown, period, end
                )
        return sent

    async def _crossed(
        self,
        org_id: str,
        meter: str,
        used: Decimal,
        limit: Decimal,
        shown: Mapping[str, object],
        period: str,
        resets_at: datetime,
    ) -> list[str]:
        """The notices of one meter: each threshold reached, and 100% (exhausted). ``shown``:
        ``limit`` and ``used`` as the events carry them."""
        base = {"meter": meter, **shown, "period": period, "resets_at": resets_at.isoformat()}
        sent = []
        for percent in self._settings.usage_thresholds:
            if used * 100 >= limit * percent:
                key = f"usage.threshold:{org_id}:{period}:{meter}:{percent}"
                data = {**base, "percent": percent}
                if await self._notify(key, org_id, "usage.threshold", data):
                    sent.append("usage.threshold")
        if used >= limit:
            key = f"quota.exhausted:{org_id}:{period}:{meter}"
            if await self._notify(key, org_id, "quota.exhausted", base):
                sent.append("quota.exhausted")
        return sent

    # --- error rates -----------------------------------------------------------------------------

    async def check_errors(self, now: datetime) -> list[str]:
        """Keys whose error share over the window is too high; the events sent."""
        settings = self._settings
        window = timedelta(seconds=settings.error_window)
        reports = Reports(self._analytics, clock=lambda: now)
        report = await reports.usage(
            start=now - window, end=now, by=("org_id", "project_id", "key_id"), source="raw"
        )
        spiking = [
            row
            for row in report["rows"]
            if row["key_id"]
            and row["org_id"]
            and row["requests"] >= settings.error_min_requests
            and row["errors"] >= row["requests"] * settings.error_rate
        ]
        if not spiking:
            return []
        wanted = {row["org_id"] for row in spiking}
        async with self._store.connect() as conn:
            found = await conn.execute(select(orgs.c.id).where(orgs.c.id.in_(wanted)))
            known = set(found.scalars())
        hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        sent = []
        for row in spiking:
            if row["org_id"] not in known:
                continue  # calls of an org deleted since, or of another deployment's database
            data = {
                "key_id": row["key_id"],
                "project_id": row["project_id"],
                "requests": row["requests"],
                "errors": row["errors"],
                "rate": round(row["errors"] / row["requests"], 4),
                "window": settings.error_window,
            }
            key = f"error_rate.spike:{row['key_id']}:{hour.isoformat()}"
            if await self._notify(key, row["org_id"], "error_rate.spike", data):
                sent.append("error_rate.spike")
        return sent

    # --- once ------------------------------------------------------------------------------------

    async def _notify(self, key: str, org_id: str, event: str, data: Mapping[str, Any]) -> bool:
        """Record the notice and emit its event in one transaction; False when it was sent
        before (by this watcher or another)."""
        values = {"key": key, "org_id": org_id, "event": event, "data": dict(data)}
        stmt = (
            self._store.insert(notices)
            .values(**values, at=self._clock())
            .on_conflict_do_nothing(index_elements=[notices.c.key])
        )
        async with self._store.transaction() as conn:
            if (await conn.execute(stmt)).rowcount != 1:
                return False
            await self._book.emit(conn, event, org_id, data)
        log.info("notice %s sent (%s)", key, event)
        return True

"""Usage forecast and anomaly flag per org, from the hourly rollups.

The projection for the period (the calendar month, UTC): the usage so far plus the recent hourly
rate (the mean of the last ``window`` hours, at most a week, zero-filled) over the hours left.
With no history yet it is the usage so far scaled to the whole period.

The anomaly flag: the last complete hour is above ``factor`` times the median hour of the week
before it (zero-filled from the org's first active hour in that week) and above ``floor`` (a few
requests more than nothing is not an anomaly). It feeds abuse throttling and alerts; the figures
it used are returned with it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from hoodrun.metering.entitlements import month_bounds
from hoodrun.telemetry.schema import BILLABLE_HOURLY
from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["Forecast", "forecast"]

Meter = Literal["requests", "compute_units"]
_WEEK = 7 * 24


@dataclass(frozen=True, slots=True)
class Forecast:
    org: str
    meter: str
    period_start: datetime
    period_end: datetime
    used: int  # so far this period
    projected: int  # at the period's end
    hourly_rate: float  # the recent mean per hour the projection uses
    last_hour: int  # the last complete hour
    typical_hour: float  # the median hour of the week before it
    anomaly: bool


async def forecast(
    store: AnalyticsStore,
    org: str,
    meter: Meter,
    now: datetime,
    *,
    window: int = 24,
    factor: float = 4.0,
    floor: int = 100,
) -> Forecast:
    start, end = month_bounds(now)
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    since = min(start, hour - timedelta(hours=_WEEK + 1))
    rows = await store.query(BILLABLE_HOURLY, {"org": org, "start": int(since.timestamp())})
    by_hour = {int(row["hour"]): int(row[meter]) for row in rows}

    def at(h: datetime) -> int:
        return by_hour.get(int(h.timestamp()), 0)

    used = sum(v for h, v in by_hour.items() if start.timestamp() <= h < end.timestamp())
    elapsed = (now - start).total_seconds() / 3600
    history = min(window, int(elapsed))  # complete hours of this period to average over
    if history >= 1:
        rate = sum(at(hour - timedelta(hours=i)) for i in range(1, history + 1)) / history
        left = (end - now).total_seconds() / 3600
        projected = used + rate * left
    else:
        period = (end - start).total_seconds() / 3600
        rate = used / max(elapsed, 1 / 60)
        projected = used * period / max(elapsed, 1 / 60)
    last = at(hour - timedelta(hours=1))
    # The week before the last hour, from the org's first hour in it (a new org has no week).
    week = [at(hour - timedelta(hours=i)) for i in range(_WEEK + 1, 1, -1)]
    first = next((i for i, value in enumerate(week) if value), len(week))
    typical = statistics.median(week[first:]) if week[first:] else 0.0
    return Forecast(
        org=org,
        meter=meter,
        period_start=start,
        period_end=end,
        used=used,
        projected=round(projected),
        hourly_rate=rate,
        last_hour=last,
        typical_hour=typical,
        anomaly=last > floor and last > factor * typical,
    )

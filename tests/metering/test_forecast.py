"""The usage forecast and the anomaly flag, over rollups built from real rows in chDB."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hoodrun.metering.entitlements import month_bounds
from hoodrun.metering.forecast import forecast
from hoodrun.telemetry.pipeline import hours_of
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.units import ComputeUnits
from tests.telemetry.support import call_record


async def _load(store: Any, per_hour: dict[datetime, int], org: str) -> None:
    records = [
        call_record(f"{org}-{int(hour.timestamp())}-{n}", ts=hour.timestamp() + n, org_id=org)
        for hour, count in per_hour.items()
        for n in range(count)
    ]
    table = RowBuilder(ComputeUnits()).table(records)
    await store.insert(table)
    rollups = Rollups(store)
    rollups.mark(hours_of(table))
    await rollups.run()


async def test_projection_and_a_spike(analytics_store: Any) -> None:
    hour = datetime.fromtimestamp(time.time(), UTC).replace(minute=0, second=0, microsecond=0)
    now = hour + timedelta(minutes=30)
    # 10 calls an hour for two days, then 400 in the last complete hour; 5 so far this hour.
    per_hour = {hour - timedelta(hours=i): 10 for i in range(2, 50)}
    per_hour[hour - timedelta(hours=1)] = 400
    per_hour[hour] = 5
    await _load(analytics_store, per_hour, "org_spiky")
    await _load(analytics_store, dict.fromkeys(per_hour, 10), "org_calm")

    spiky = await forecast(analytics_store, "org_spiky", "requests", now)
    start, end = month_bounds(now)
    assert (spiky.period_start, spiky.period_end) == (start, end)
    assert spiky.used == sum(n for h, n in per_hour.items() if h >= start)
    assert spiky.last_hour == 400 and spiky.typical_hour == 10 and spiky.anomaly
    hours = min(24, int((now - start).total_seconds() // 3600))
    if hours >= 1:
        recent = [per_hour.get(hour - timedelta(hours=i), 0) for i in range(1, hours + 1)]
        rate = sum(recent) / hours
        left = (end - now).total_seconds() / 3600
        assert spiky.hourly_rate == rate
        assert spiky.projected == round(spiky.used + rate * left)
    assert spiky.projected >= spiky.used

    calm = await forecast(analytics_store, "org_calm", "compute_units", now)
    assert not calm.anomaly and calm.last_hour == 10 * 26  # eth_call: 26 units each
    assert calm.used == 26 * 10 * sum(1 for h in per_hour if h >= start)

    nobody = await forecast(analytics_store, "org_none", "requests", now)
    assert (nobody.used, nobody.projected, nobody.anomaly) == (0, 0, False)

"""Rollups: ``usage_hourly`` and ``usage_daily`` rebuilt from ``requests_raw`` for the hours that
received rows.

A rebuild is a pure function of the raw rows (read with ``FINAL``, so duplicates count once) and
its rows carry a newer version than the ones they replace: rebuilding an hour twice, or in two
processes at once, leaves the same answer. The writer marks the hours it wrote; a periodic check
(``catch_up``) finds hours whose rollup disagrees with the raw count, which covers a process that
died between a write and its rollup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from hoodrun.telemetry.schema import ROLLUP_DAILY, ROLLUP_HOURLY, STALE_HOURS
from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["Rollups"]

log = logging.getLogger("hoodrun.telemetry")
_HOUR = 3600


class Rollups:
    def __init__(self, store: AnalyticsStore, raw_days: int = 14) -> None:
        self.store = store
        self.raw_days = raw_days
        self._dirty: set[int] = set()  # epoch seconds of hour starts

    def mark(self, hours: Iterable[int]) -> None:
        self._dirty.update(hours)

    @property
    def pending(self) -> int:
        return len(self._dirty)

    async def run(self) -> int:
        """Rebuild every marked hour and its day; returns how many hours were rebuilt."""
        hours, self._dirty = sorted(self._dirty), set()
        try:
            for hour in hours:
                await self.store.execute(
                    ROLLUP_HOURLY, {"start": hour * 1000, "end": (hour + _HOUR) * 1000}
                )
            for day in sorted({hour - hour % 86400 for hour in hours}):
                await self.store.execute(ROLLUP_DAILY, {"start": day, "end": day + 86400})
        except Exception:
            self._dirty.update(hours)  # try again next time
            raise
        return len(hours)

    async def catch_up(self, now: datetime | None = None) -> int:
        """Mark and rebuild the hours (within the raw retention) whose rollup is stale."""
        since = (now or datetime.now(UTC)) - timedelta(days=self.raw_days)
        rows = await self.store.query(STALE_HOURS, {"since": int(since.timestamp() * 1000)})
        self.mark(int(row["hour"]) for row in rows)
        if rows:
            log.info("rolling up %d hours whose rollup was behind", len(rows))
        return await self.run()

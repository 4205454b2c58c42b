"""Alerts from Alertmanager, kept so the control center can list what is firing.

Alertmanager posts its webhook (``version`` "4") to ``/api/v1/alerts/alertmanager``; every alert
in it is upserted by its fingerprint. Notifications can arrive late, twice or out of order (it
retries, and several Alertmanagers of a cluster each notify), so an update older than what is
stored is ignored: an alert that starts later replaces an earlier episode, and within one episode
"resolved" is final.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select

from hoodrun.store import Store
from hoodrun.store.tables import alerts

__all__ = ["Alert", "AlertBook", "IncomingAlert"]

# Alertmanager's "not ended" time: the zero time of Go.
_NEVER = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class IncomingAlert:
    """One alert of a webhook notification (``alerts[]``)."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    fingerprint: str
    name: str
    status: str
    severity: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    updated_at: datetime


class AlertBook:
    """The alerts table: ``receive`` a notification, read ``active`` or ``recent`` ones."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def receive(self, incoming: Sequence[IncomingAlert]) -> int:
        """Store what the notification says; the number of alerts that changed."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        changed = 0
        async with self._store.transaction() as conn:
            for alert in incoming:
                row = (
                    await conn.execute(
                        select(alerts.c.status, alerts.c.starts_at).where(
                            alerts.c.fingerprint == alert.fingerprint
                        )
                    )
                ).first()
                if row is not None and _stale(alert, row.status, row.starts_at):
                    continue
                values: dict[str, Any] = {
                    "name": alert.labels.get("alertname", "")[:128],
                    "status": alert.status,
                    "severity": alert.labels.get("severity", "")[:32],
                    "labels": dict(alert.labels),
                    "annotations": dict(alert.annotations),
                    "starts_at": alert.starts_at,
                    "ends_at": None if alert.ends_at in (None, _NEVER) else alert.ends_at,
                    "generator_url": alert.generator_url[:512],
                    "updated_at": now,
                }
                stmt = self._store.insert(alerts).values(fingerprint=alert.fingerprint, **values)
                await conn.execute(
                    stmt.on_conflict_do_update(index_elements=[alerts.c.fingerprint], set_=values)
                )
                changed += 1
        return changed

    async def active(self) -> list[Alert]:
        """Firing alerts, the most severe and then the oldest first."""
        return await self._select(alerts.c.status == "firing", None)

    async def recent(self, limit: int = 100) -> list[Alert]:
        """Every alert, firing or resolved, the most recently updated first."""
        return await self._select(None, limit)

    async def _select(self, where: Any, limit: int | None) -> list[Alert]:
        stmt = select(alerts)
        if where is not None:
            stmt = stmt.where(where).order_by(alerts.c.starts_at)
        else:
            stmt = stmt.order_by(alerts.c.updated_at.desc()).limit(limit)
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        found = [Alert(**row) for row in rows]
        if where is not None:
            found.sort(key=lambda a: _SEVERITY.get(a.severity, len(_SEVERITY)))
        return found


_SEVERITY = {"critical": 0, "page": 0, "warning": 1, "info": 2}


def _stale(alert: IncomingAlert, status: str, starts_at: datetime) -> bool:
    if alert.starts_at < starts_at:
        return True  # an earlier episode
    return alert.starts_at == starts_at and status == "resolved" and alert.status == "firing"

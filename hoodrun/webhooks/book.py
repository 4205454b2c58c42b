"""The webhook book: an org's endpoints, the events they take, and the delivery log.

``emit`` is called inside the transaction of the change an event tells of (a key made, an invoice
paid): it inserts one delivery per enabled endpoint of the org subscribed to the event and
enqueues a ``webhook-deliver`` job for each (``JobQueue.enqueue_in``), so an event is sent if and
only if its change committed. The worker's handler (``hoodrun.webhooks.deliver``) then POSTs it.

The events members can get by mail (``hoodrun.notify.kinds.MAILED_EVENTS``: usage, error rate,
invoices, credits) also enqueue one ``notify-email`` job, in the same transaction, when a member
of the org would get it (``hoodrun.notify.mailing`` sends it, or skips it without SMTP).
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import RowMapping, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.jobs import JobQueue
from hoodrun.notify.kinds import MAILED_EVENTS, NOTIFY_EMAIL, job_policies, mail_key
from hoodrun.notify.recipients import anyone_wants
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import orgs, webhook_deliveries, webhook_endpoints
from hoodrun.webhooks.address import check_url
from hoodrun.webhooks.errors import (
    DeliveryNotFound,
    EndpointNotFound,
    InvalidEndpoint,
    NotReplayable,
    OrgNotFound,
)

__all__ = ["DELIVERY_KIND", "EVENTS", "Delivery", "Endpoint", "WebhookBook"]

EVENTS: Final = (
    "key.created",
    "key.revoked",
    "usage.threshold",
    "quota.exhausted",
    "error_rate.spike",
    "invoice.created",
    "invoice.paid",
    "credits.low",
)
"""The events an endpoint can take. ``usage.threshold``, ``quota.exhausted`` and
``error_rate.spike`` come from the worker's watcher (``hoodrun.notify.watch``)."""

DELIVERY_KIND: Final = "webhook-deliver"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
_MAX_ERROR = 2000


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An org's webhook endpoint. ``secret`` signs its deliveries (``hoodrun.webhooks.sign``)."""

    id: str
    org_id: str
    url: str
    secret: str
    events: tuple[str, ...]
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, row: RowMapping) -> Endpoint:
        return cls(
            id=row["id"],
            org_id=row["org_id"],
            url=row["url"],
            secret=row["secret"],
            events=tuple(row["events"]),
            enabled=bool(row["enabled"]),
            created_at=row["created_at"],
            disabled_at=row["disabled_at"],
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event sent (or being sent) to one endpoint. ``payload`` is the body's JSON."""

    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    status: str  # pending | delivered | failed
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, row: RowMapping) -> Delivery:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


def _check_events(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events))
    unknown = [event for event in chosen if event not in EVENTS]
    if not chosen or unknown:
        raise InvalidEndpoint(
            f"events {unknown or chosen}: choose one or more of {', '.join(EVENTS)}"
        )
    return chosen


class WebhookBook:
    """Endpoints and deliveries in the business store; ``emit`` inside a caller's transaction.

    ``mail``: also enqueue the ``notify-email`` job of each mailed event (the default; the
    job sends nothing without ``smtp.host``)."""

    def __init__(
        self, store: Store, *, clock: Callable[[], datetime] = _utc_now, mail: bool = True
    ) -> None:
        self._store = store
        self.clock = clock
        self.mail = mail
        self._queue = JobQueue(store, clock=clock, policies=job_policies())

    # --- endpoints -----------------------------------------------------------------------------

    async def create_endpoint(
        self, org_id: str, url: str, events: Iterable[str], *, actor: str = "admin"
    ) -> Endpoint:
        """A new enabled endpoint with a fresh secret (the caller shows it to the org once)."""
        endpoint_id, now, chosen = new_id("whe"), self.clock(), _check_events(events)
        values = {
            "id": endpoint_id,
            "org_id": org_id,
            "url": check_url(url),
            "secret": "whsec_" + secrets.token_urlsafe(32),
            "events": chosen,
            "enabled": True,
            "created_at": now,
            "disabled_at": None,
        }
        async with self._store.transaction() as conn:
            if await conn.scalar(select(orgs.c.id).where(orgs.c.id == org_id)) is None:
                raise OrgNotFound(f"no org {org_id!r}")
            await conn.execute(insert(webhook_endpoints).values(values))
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="webhook.create",
                target_type="webhook",
                target_id=endpoint_id,
                details={"org": org_id, "url": url, "events": chosen},
            )
            return await self._endpoint(conn, endpoint_id)

    async def endpoint(self, endpoint_id: str) -> Endpoint:
        async with self._store.connect() as conn:
            return await self._endpoint(conn, endpoint_id)

    async def endpoints(self, org_id: str) -> builtins.list[Endpoint]:
        """The org's endpoints, enabled and disabled, the oldest first."""
        stmt = (
            select(webhook_endpoints)
            .where(webhook_endpoints.c.org_id == org_id)
            .order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
        )
        async with self._store.connect() as conn:
            return [Endpoint.of(row) for row in (await conn.execute(stmt)).mappings()]

    async def disable(
        self, endpoint_id: str, *, actor: str = "admin", reason: str = "disabled"
    ) -> Endpoint:
        """Stop sending to the endpoint (its pending deliveries fail when their turn comes).
        Idempotent."""
        async with self._store.transaction() as conn:
            return await self._disable(conn, endpoint_id, actor=actor, reason=reason)

    async def _disable(
        self, conn: AsyncConnection, endpoint_id: str, *, actor: str, reason: str
    ) -> Endpoint:
        endpoint = await self._endpoint(conn, endpoint_id)
        if not endpoint.enabled:
            return endpoint
        now = self.clock()
        await conn.execute(
            update(webhook_endpoints)
            .where(webhook_endpoints.c.id == endpoint_id)
            .values(enabled=False, disabled_at=now)
        )
        await write_audit(
            conn,
            at=now,
            actor=actor,
            action="webhook.disable",
            target_type="webhook",
            target_id=endpoint_id,
            details={"reason": reason},
        )
        return await self._endpoint(conn, endpoint_id)

    async def _endpoint(self, conn: AsyncConnection, endpoint_id: str) -> Endpoint:
        stmt = select(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise EndpointNotFound(f"no webhook endpoint {endpoint_id!r}")
        return Endpoint.of(row)

    # --- events --------------------------------------------------------------------------------

    async def emit(
        self,
        conn: AsyncConnection,
        event_type: str,
        org_id: str,
        data: Mapping[str, Any],
        *,
        event_id: str | None = None,
    ) -> builtins.list[str]:
        """Queue ``event_type`` for the org's enabled endpoints that take it, and (a mailed
        event) its mail to the org's members, in the caller's transaction ``conn``; returns the
        deliveries' ids. ``event_id`` (default: a new one) makes emitting the same event again a
        no-op per endpoint and for the mail."""
        if event_type not in EVENTS:
            raise ValueError(f"unknown webhook event {event_type!r}")
        now = self.clock()
        event_id = event_id or new_id("evt")
        payload = {
            "id": event_id,
            "type": event_type,
            "created": now.isoformat(),
            "org_id": org_id,
            "data": dict(data),
        }
        made = await self._deliver(conn, event_type, org_id, payload, now)
        if (
            self.mail
            and event_type in MAILED_EVENTS
            and await anyone_wants(conn, org_id, event_type, data)
        ):
            await self._queue.enqueue_in(
                conn, NOTIFY_EMAIL, {"event": payload}, idempotency_key=mail_key(event_id)
            )
        return made

    async def _deliver(
        self,
        conn: AsyncConnection,
        event_type: str,
        org_id: str,
        payload: dict[str, Any],
        now: datetime,
    ) -> builtins.list[str]:
        stmt = select(webhook_endpoints.c.id, webhook_endpoints.c.events).where(
            (webhook_endpoints.c.org_id == org_id) & webhook_endpoints.c.enabled.is_(True)
        )
        targets = [row.id for row in await conn.execute(stmt) if event_type in row.events]
        event_id = payload["id"]
        made: builtins.list[str] = []
        for endpoint_id in targets:
            delivery_id = new_id("whd")
            row = {
                "id": delivery_id,
                "endpoint_id": endpoint_id,
                "event_id": event_id,
                "event_type": event_type,
                "payload": payload,
                "status": PENDING,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            keys = [webhook_deliveries.c.endpoint_id, webhook_deliveries.c.event_id]
            inserted = await conn.execute(
                self._store.insert(webhook_deliveries)
                .values(row)
                .on_conflict_do_nothing(index_elements=keys)
            )
            if inserted.rowcount != 1:
                continue  # this event was emitted before
            await self._queue.enqueue_in(
                conn, DELIVERY_KIND, {"delivery_id": delivery_id}, idempotency_key=_key(delivery_id)
            )
            made.append(delivery_id)
        return made

    # --- deliveries ----------------------------------------------------------------------------

    async def delivery(self, delivery_id: str) -> Delivery:
        async with self._store.connect() as conn:
            return await self._delivery(conn, delivery_id)

    async def deliveries(
        self, endpoint_id: str, *, status: str | None = None, limit: int = 100
    ) -> builtins.list[Delivery]:
        """The endpoint's deliveries, the newest first."""
        stmt = select(webhook_deliveries).where(webhook_deliveries.c.endpoint_id == endpoint_id)
        if status is not None:
            stmt = stmt.where(webhook_deliveries.c.status == status)
        stmt = stmt.order_by(
            webhook_deliveries.c.created_at.desc(), webhook_deliveries.c.id.desc()
        ).limit(limit)
        async with self._store.connect() as conn:
            await self._endpoint(conn, endpoint_id)
            return [Delivery.of(row) for row in (await conn.execute(stmt)).mappings()]

    async def replay(self, delivery_id: str, *, actor: str = "admin") -> Delivery:
        """Send a failed delivery again (same event id and body, a new job with all its
        attempts); the endpoint must be enabled. ``NotReplayable`` otherwise."""
        async with self._store.transaction() as conn:
            delivery = await self._delivery(conn, delivery_id, lock=True)
            endpoint = await self._endpoint(conn, delivery.endpoint_id)
            if delivery.status != FAILED:
                raise NotReplayable(f"delivery {delivery_id} is {delivery.status}, not failed")
            if not endpoint.enabled:
                raise NotReplayable(f"endpoint {endpoint.id} is disabled: create a new one")
            now = self.clock()
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(status=PENDING, updated_at=now)
            )
            # The first job's key stays taken by its dead job; each replay is a job of its own
            # (the status change above, under the row's lock, makes a second replay refused).
            await self._queue.enqueue_in(
                conn, DELIVERY_KIND, {"delivery_id": delivery_id}, idempotency_key=None
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="webhook.replay",
                target_type="webhook_delivery",
                target_id=delivery_id,
                details={"endpoint": endpoint.id, "event": delivery.event_id},
            )
            return await self._delivery(conn, delivery_id)

    async def target(self, delivery_id: str) -> tuple[Delivery, Endpoint]:
        """The delivery and its endpoint, for the worker's handler."""
        async with self._store.connect() as conn:
            delivery = await self._delivery(conn, delivery_id)
            return delivery, await self._endpoint(conn, delivery.endpoint_id)

    async def record(
        self,
        delivery_id: str,
        *,
        status: str,
        status_code: int | None,
        error: str | None,
        disable: bool = False,
    ) -> Delivery:
        """One attempt's outcome: ``status`` becomes the delivery's; ``disable`` also disables
        its endpoint (the receiver answered 410 Gone)."""
        now = self.clock()
        async with self._store.transaction() as conn:
            delivery = await self._delivery(conn, delivery_id, lock=True)
            await conn.execute(
                update(webhook_deliveries)
                .where(webhook_deliveries.c.id == delivery_id)
                .values(
                    status=status,
                    attempts=delivery.attempts + 1,
                    last_status_code=status_code,
                    last_error=error[:_MAX_ERROR] if error else None,
                    updated_at=now,
                    delivered_at=now if status == DELIVERED else None,
                )
            )
            if disable:
                await self._disable(
                    conn, delivery.endpoint_id, actor="webhooks", reason="the receiver answered 410"
                )
            return await self._delivery(conn, delivery_id)

    async def _delivery(
        self, conn: AsyncConnection, delivery_id: str, *, lock: bool = False
    ) -> Delivery:
        stmt = select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
        if lock and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise DeliveryNotFound(f"no webhook delivery {delivery_id!r}")
        return Delivery.of(row)


def _key(delivery_id: str) -> str:
    return f"webhook:{delivery_id}"

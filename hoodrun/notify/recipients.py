"""Who gets an org's notices by mail: its members with a verified address, not disabled, who did
not turn the event off (``notification_prefs``; no row means yes, ``kinds.DEFAULT_EMAIL``), and,
for a notice about money, whose role may see the org's billing.

An unverified address never gets a notice: it has not shown it belongs to the person the org
added (an invitee gets the invitation, then notices once they chose their password).

Money notices (``is_billing``) are the invoices (``invoice.created``, ``invoice.paid``), the
credit balance (``credits.low``) and the usage notices about the spending cap
(``usage.threshold`` and ``quota.exhausted`` of the meter ``spending_cap``): they go only to
members whose role grants ``billing:read`` (``hoodrun.identity.roles``), as the portal shows
invoices and credits only to them. The others (quotas of requests or compute units, error
rates) go to every member who wants them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, and_, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.identity.roles import ROLES, permissions_of
from hoodrun.store.tables import memberships, notification_prefs, users

__all__ = ["BILLING_EVENTS", "Recipient", "anyone_wants", "is_billing", "recipient", "recipients"]

BILLING_EVENTS: Final = frozenset({"invoice.created", "invoice.paid", "credits.low"})
"""Events about money whatever their data (usage notices are when their meter is the cap)."""
_USAGE_EVENTS: Final = frozenset({"usage.threshold", "quota.exhausted"})
_CAP_METER: Final = "spending_cap"
# The roles that may see the org's billing, from the one table of permissions.
_BILLING_ROLES: Final = tuple(role for role in ROLES if "billing:read" in permissions_of([role]))


def is_billing(event: str, data: Mapping[str, Any]) -> bool:
    """Whether ``event`` (with its ``data``) tells about money: mailed to billing readers only."""
    return event in BILLING_EVENTS or (event in _USAGE_EVENTS and data.get("meter") == _CAP_METER)


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: str
    email: str
    name: str


def _wanting(org_id: str, event: str, billing: bool) -> ColumnElement[bool]:
    chosen = and_(
        notification_prefs.c.user_id == memberships.c.user_id,
        notification_prefs.c.org_id == memberships.c.org_id,
        notification_prefs.c.event == event,
    )
    # The default is on (DEFAULT_EMAIL): only a row saying no keeps the mail back.
    said_no = exists().where(chosen, notification_prefs.c.email.is_(False))
    wanting = and_(
        memberships.c.org_id == org_id,
        users.c.disabled.is_(False),
        users.c.email_verified_at.is_not(None),
        ~said_no,
    )
    return and_(wanting, memberships.c.role.in_(_BILLING_ROLES)) if billing else wanting


def _members(org_id: str, event: str, data: Mapping[str, Any]) -> Select[tuple[str, str, str]]:
    return (
        select(users.c.id, users.c.email, users.c.name)
        .select_from(memberships.join(users, users.c.id == memberships.c.user_id))
        .where(_wanting(org_id, event, is_billing(event, data)))
    )


async def anyone_wants(
    conn: AsyncConnection, org_id: str, event: str, data: Mapping[str, Any]
) -> bool:
    """Whether any member of the org would get ``event`` (with its ``data``) by mail."""
    return (await conn.execute(_members(org_id, event, data).limit(1))).first() is not None


async def recipients(
    conn: AsyncConnection, org_id: str, event: str, data: Mapping[str, Any]
) -> list[Recipient]:
    """The members who get ``event`` (with its ``data``) by mail, the earliest to join first."""
    stmt = _members(org_id, event, data).order_by(memberships.c.created_at, users.c.id)
    return [Recipient(row.id, row.email, row.name) for row in await conn.execute(stmt)]


async def recipient(
    conn: AsyncConnection, org_id: str, event: str, data: Mapping[str, Any], user_id: str
) -> Recipient | None:
    """The member, if they (still) get ``event`` (with its ``data``) by mail: a member whose
    role changed since the notice was queued is judged by the role they have now."""
    stmt = _members(org_id, event, data).where(users.c.id == user_id)
    row = (await conn.execute(stmt)).first()
    return Recipient(row.id, row.email, row.name) if row is not None else None

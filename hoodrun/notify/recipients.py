"""Who gets an org's notices by mail: its members with a verified address, not disabled, who did
not turn the event off (``notification_prefs``; no row means yes, ``kinds.DEFAULT_EMAIL``).

An unverified address never gets a notice: it has not shown it belongs to the person the org
added (an invitee gets the invitation, then notices once they chose their password).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, and_, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.store.tables import memberships, notification_prefs, users

__all__ = ["Recipient", "anyone_wants", "recipient", "recipients"]


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: str
    email: str
    name: str


def _wanting(org_id: str, event: str) -> ColumnElement[bool]:
    chosen = and_(
        notification_prefs.c.user_id == memberships.c.user_id,
        notification_prefs.c.org_id == memberships.c.org_id,
        notification_prefs.c.event == event,
    )
    # The default is on (DEFAULT_EMAIL): only a row saying no keeps the mail back.
    said_no = exists().where(chosen, notification_prefs.c.email.is_(False))
    return and_(
        memberships.c.org_id == org_id,
        users.c.disabled.is_(False),
        users.c.email_verified_at.is_not(None),
        ~said_no,
    )


def _members(org_id: str, event: str) -> Select[tuple[str, str, str]]:
    return (
        select(users.c.id, users.c.email, users.c.name)
        .select_from(memberships.join(users, users.c.id == memberships.c.user_id))
        .where(_wanting(org_id, event))
    )


async def anyone_wants(conn: AsyncConnection, org_id: str, event: str) -> bool:
    """Whether any member of the org would get ``event`` by mail."""
    return (await conn.execute(_members(org_id, event).limit(1))).first() is not None


async def recipients(conn: AsyncConnection, org_id: str, event: str) -> list[Recipient]:
    """The members who get ``event`` by mail, the earliest to join first."""
    stmt = _members(org_id, event).order_by(memberships.c.created_at, users.c.id)
    return [Recipient(row.id, row.email, row.name) for row in await conn.execute(stmt)]


async def recipient(
    conn: AsyncConnection, org_id: str, event: str, user_id: str
) -> Recipient | None:
    """The member, if they (still) get ``event`` by mail."""
    stmt = _members(org_id, event).where(users.c.id == user_id)
    row = (await conn.execute(stmt)).first()
    return Recipient(row.id, row.email, row.name) if row is not None else None

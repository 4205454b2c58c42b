"""The identity service's queries, each on a caller's connection (so inside its transaction)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.identity.errors import OrgNotFound, UserNotFound
from hoodrun.store.tables import contracts, memberships, orgs, sessions, users

__all__ = [
    "admin_count",
    "lock_org",
    "membership_rows",
    "org_roles",
    "revoke_sessions",
    "tier_of",
    "user_by_email",
    "user_row",
]


async def user_row(conn: AsyncConnection, user_id: str, *, lock: bool = False) -> RowMapping:
    stmt = select(users).where(users.c.id == user_id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        raise UserNotFound(f"no user has the id {user_id!r}")
    return row


async def user_by_email(conn: AsyncConnection, email: str) -> RowMapping | None:
    return (await conn.execute(select(users).where(users.c.email == email))).mappings().first()


async def lock_org(conn: AsyncConnection, org_id: str) -> str:
    """The org's name; its row locked on PostgreSQL, so membership changes of one org run one
    at a time (the last-admin rule counts admins). SQLite's write transaction already does."""
    name = await conn.scalar(select(orgs.c.name).where(orgs.c.id == org_id).with_for_update())
    if name is None:
        raise OrgNotFound(f"no org has the id {org_id!r}")
    return str(name)


async def org_exists(conn: AsyncConnection, org_id: str) -> bool:
    return await conn.scalar(select(orgs.c.id).where(orgs.c.id == org_id)) is not None


def _memberships() -> Select[Any]:
    return (
        select(
            memberships.c.user_id,
            users.c.email,
            users.c.name,
            memberships.c.org_id,
            orgs.c.name.label("org_name"),
            memberships.c.role,
            memberships.c.created_at,
        )
        .join_from(memberships, users, memberships.c.user_id == users.c.id)
        .join(orgs, memberships.c.org_id == orgs.c.id)
        .order_by(memberships.c.created_at, memberships.c.org_id, memberships.c.user_id)
    )


async def membership_rows(
    conn: AsyncConnection, *, user_id: str | None = None, org_id: str | None = None
) -> list[RowMapping]:
    """Memberships (with the user's email and name and the org's name), the oldest first."""
    stmt = _memberships()
    if user_id is not None:
        stmt = stmt.where(memberships.c.user_id == user_id)
    if org_id is not None:
        stmt = stmt.where(memberships.c.org_id == org_id)
    return list((await conn.execute(stmt)).mappings().all())


async def org_roles(conn: AsyncConnection, user_id: str) -> dict[str, str]:
    """org id -> the user's role there, in the order the user joined them."""
    stmt = (
        select(memberships.c.org_id, memberships.c.role)
        .where(memberships.c.user_id == user_id)
        .order_by(memberships.c.created_at, memberships.c.org_id)
    )
    return {row.org_id: row.role for row in await conn.execute(stmt)}


async def admin_count(conn: AsyncConnection, org_id: str) -> int:
    stmt = select(func.count()).where(
        (memberships.c.org_id == org_id) & (memberships.c.role == "admin")
    )
    return int(await conn.scalar(stmt) or 0)


async def tier_of(conn: AsyncConnection, org_id: str | None, now: datetime) -> str | None:
    """The plan of the org's contract in force at ``now``, else the org's own plan."""
    if org_id is None:
        return None
    in_force = (
        select(contracts.c.plan)
        .where(contracts.c.org_id == org_id)
        .where(contracts.c.starts_at <= now)
        .where(or_(contracts.c.ends_at.is_(None), contracts.c.ends_at > now))
        .order_by(contracts.c.starts_at.desc())
        .limit(1)
    )
    plan = await conn.scalar(in_force)
    if plan is None:
        plan = await conn.scalar(select(orgs.c.plan).where(orgs.c.id == org_id))
    return None if plan is None else str(plan)


async def revoke_sessions(
    conn: AsyncConnection, user_id: str, now: datetime, *, keep: str | None = None
) -> int:
    """End every live session of the user (but ``keep``); how many were ended."""
    stmt = (
        update(sessions)
        .where(sessions.c.user_id == user_id)
        .where(sessions.c.revoked_at.is_(None))
        .where(sessions.c.expires_at > now)
        .values(revoked_at=now)
    )
    if keep is not None:
        stmt = stmt.where(sessions.c.id != keep)
    return (await conn.execute(stmt)).rowcount

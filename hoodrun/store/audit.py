"""The audit log: who changed what, written in the same transaction as the change.

Details never carry secrets: no API key and no key hash, ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.store.tables import audit_log

__all__ = ["AuditEntry", "read_audit", "write_audit"]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    details: Mapping[str, Any]


async def write_audit(
    conn: AsyncConnection,
    *,
    at: datetime,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    await conn.execute(
        insert(audit_log).values(
            at=at,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=dict(details or {}),
        )
    )


async def read_audit(
    conn: AsyncConnection, *, limit: int = 100, target_id: str | None = None
) -> list[AuditEntry]:
    """The newest ``limit`` entries first, optionally only those about ``target_id``."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if target_id is not None:
        stmt = stmt.where(audit_log.c.target_id == target_id)
    rows = (await conn.execute(stmt)).mappings()
    return [AuditEntry(**row) for row in rows]

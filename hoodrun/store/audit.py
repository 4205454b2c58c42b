"""The audit log: who changed what, when, from where, with the object before and after;
written in the same transaction as the change.

The client's address comes from the request being served (:data:`audit_origin`, opened by the
admin API for each request), so services need not pass it along. Details never carry secrets:
no API key, no key hash, no password or token, ever.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.store.tables import audit_log

__all__ = ["AuditEntry", "AuditOrigin", "audit_origin", "read_audit", "write_audit"]


@dataclass(slots=True)
class AuditOrigin:
    """The request a change comes from: the caller (once known) and the client's address;
    ``written`` counts the rows written for it."""

    ip: str | None = None
    actor: str | None = None
    written: int = 0


audit_origin: ContextVar[AuditOrigin | None] = ContextVar("audit_origin", default=None)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    details: Mapping[str, Any]
    ip: str | None = None
    before: Any = None
    after: Any = None


async def write_audit(
    conn: AsyncConnection,
    *,
    at: datetime,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    details: Mapping[str, Any] | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> None:
    """One row; ``before`` and ``after`` are the object's JSON-able fields around the change
    (``None``: it did not exist before, or no longer does after)."""
    origin = audit_origin.get()
    await conn.execute(
        insert(audit_log).values(
            at=at,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=dict(details or {}),
            ip=origin.ip if origin is not None else None,
            before=_jsonable(before),
            after=_jsonable(after),
        )
    )
    if origin is not None:
        origin.written += 1


def _jsonable(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, (tuple, frozenset, set)):
            value = list(value)
        elif not isinstance(value, (str, int, float, bool, list, dict, type(None))):
            value = str(value)
        out[name] = value
    return out


async def read_audit(
    conn: AsyncConnection, *, limit: int = 100, target_id: str | None = None
) -> list[AuditEntry]:
    """The newest ``limit`` entries first, optionally only those about ``target_id``."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if target_id is not None:
        stmt = stmt.where(audit_log.c.target_id == target_id)
    rows = (await conn.execute(stmt)).mappings()
    return [AuditEntry(**row) for row in rows]

"""Key queries, built once. The gateway's lookup is one indexed query joining org and project."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import RowMapping, Select, bindparam, select

from hoodrun.keys.record import KeyRecord
from hoodrun.store.tables import api_keys, orgs, projects

__all__ = ["LOOKUP", "select_keys", "to_record"]


def select_keys() -> Select[Any]:
    """Every key column plus its org's name and plan and its project's name and payload
    capture setting."""
    return (
        select(
            api_keys,
            orgs.c.name.label("org_name"),
            orgs.c.plan.label("org_plan"),
            projects.c.name.label("project_name"),
            projects.c.capture_payloads,
            projects.c.capture_bytes,
        )
        .join_from(api_keys, orgs, api_keys.c.org_id == orgs.c.id)
        .join(projects, api_keys.c.project_id == projects.c.id)
    )


LOOKUP = select_keys().where(api_keys.c.hash == bindparam("key_hash"))


def _set(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def to_record(row: RowMapping, default_plan: str) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        hash=row["hash"],
        start=row["start"],
        org_id=row["org_id"],
        org=row["org_name"],
        project_id=row["project_id"],
        project=row["project_name"],
        name=row["name"],
        plan=row["plan"] or row["org_plan"] or default_plan,
        chains=_set(row["chains"]),
        origins=_set(row["origins"]),
        methods_allow=_set(row["methods_allow"]),
        methods_deny=frozenset(row["methods_deny"]),
        rps=row["rps"],
        burst=row["burst"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        disabled=row["disabled"],
        revoked_at=row["revoked_at"],
        capture_bytes=row["capture_bytes"] if row["capture_payloads"] else None,
    )

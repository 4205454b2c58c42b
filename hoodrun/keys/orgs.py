"""Orgs and their projects, for the admin API and the portal.

Keys make their org and project on first use (``KeyService.create``); this is the direct way,
and the way to read them. Every change is audited in its own transaction.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from hoodrun.keys.errors import KeysError, UnknownOrg
from hoodrun.keys.options import check_label
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import api_keys, orgs, projects

__all__ = ["Org", "OrgBook", "OrgExists", "Project"]


class OrgExists(KeysError):
    """An org (or a project of the org) already has this name."""

    code = "name_taken"
    status = 409


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    plan: str | None
    created_at: datetime
    keys: int = 0


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    org_id: str
    name: str
    created_at: datetime


class OrgBook:
    def __init__(self, store: Store, *, now: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._now = now or (lambda: datetime.now(UTC))

    async def list(self, *, ids: frozenset[str] | None = None) -> list[Org]:
        """Every org (or those of ``ids``), by name, with their live key counts."""
        live = (
            select(api_keys.c.org_id, func.count().label("n"))
            .where(api_keys.c.revoked_at.is_(None))
            .group_by(api_keys.c.org_id)
            .subquery()
        )
        stmt = (
            select(orgs, func.coalesce(live.c.n, 0).label("keys"))
            .outerjoin(live, live.c.org_id == orgs.c.id)
            .order_by(orgs.c.name)
        )
        if ids is not None:
            stmt = stmt.where(orgs.c.id.in_(sorted(ids)))
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Org(**row) for row in rows]

    async def get(self, org_id: str) -> Org:
        found = await self.list(ids=frozenset({org_id}))
        if not found:
            raise UnknownOrg(f"no org has the id {org_id!r}")
        return found[0]

    async def create(self, name: str, *, plan: str | None = None, actor: str) -> Org:
        name = check_label("name", name)
        org = Org(new_id("org"), name, plan, self._now())
        try:
            async with self._store.transaction() as conn:
                await conn.execute(
                    orgs.insert().values(id=org.id, name=name, plan=plan, created_at=org.created_at)
                )
                await write_audit(
                    conn,
                    at=org.created_at,
                    actor=actor,
                    action="org.create",
                    target_type="org",
                    target_id=org.id,
                    details={"name": name},
                    after={"name": name, "plan": plan},
                )
        except IntegrityError:
            raise OrgExists(f"an org is already named {name!r}") from None
        return org

    async def projects(self, org_id: str) -> builtins.list[Project]:
        await self.get(org_id)
        stmt = select(projects).where(projects.c.org_id == org_id).order_by(projects.c.name)
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Project(**row) for row in rows]

    async def create_project(self, org_id: str, name: str, *, actor: str) -> Project:
        await self.get(org_id)
        name = check_label("project", name)
        project = Project(new_id("prj"), org_id, name, self._now())
        try:
            async with self._store.transaction() as conn:
                await conn.execute(
                    projects.insert().values(
                        id=project.id, org_id=org_id, name=name, created_at=project.created_at
                    )
                )
                await write_audit(
                    conn,
                    at=project.created_at,
                    actor=actor,
                    action="project.create",
                    target_type="project",
                    target_id=project.id,
                    details={"org_id": org_id, "name": name},
                    after={"org_id": org_id, "name": name},
                )
        except IntegrityError:
            raise OrgExists(f"org {org_id} already has a project named {name!r}") from None
        return project

"""Orgs and their projects, for the admin API and the portal.

Keys make their org and project on first use (``KeyService.create``); this is the direct way,
and the way to read them. Every change is audited in its own transaction.

A project's settings are its payload capture: whether the gateway keeps an excerpt of each
call's params and answer for the request explorer (``hoodrun.gateway.payloads``), and how many
bytes of each. Gateways learn it with the key (``KeyRecord.capture_bytes``).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from hoodrun.keys.errors import KeysError, UnknownOrg
from hoodrun.keys.options import check_label, check_org_name
from hoodrun.store import Store, new_id, write_audit
from hoodrun.store.tables import api_keys, orgs, projects

__all__ = [
    "CAPTURE_BYTES",
    "MAX_CAPTURE_BYTES",
    "MIN_CAPTURE_BYTES",
    "InvalidProjectSettings",
    "Org",
    "OrgBook",
    "OrgExists",
    "Project",
    "UnknownProject",
]

CAPTURE_BYTES = 2048  # a new project's, and the migration's for existing ones
MIN_CAPTURE_BYTES = 64
MAX_CAPTURE_BYTES = 16384


class OrgExists(KeysError):
    """An org (or a project of the org) already has this name."""

    code = "name_taken"
    status = 409


class UnknownProject(KeysError, LookupError):
    """The org has no project with this id."""

    code = "project_not_found"
    status = 404


class InvalidProjectSettings(KeysError):
    """A project setting is out of range."""

    code = "invalid_option"


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
    capture_payloads: bool = False
    capture_bytes: int = CAPTURE_BYTES


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
        name = check_org_name("name", name)
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

    async def update_project(
        self,
        org_id: str,
        project_id: str,
        *,
        capture_payloads: bool | None = None,
        capture_bytes: int | None = None,
        actor: str,
    ) -> Project:
        """Change a project's payload capture (``None``: leave as it is); audited with the
        values before and after when anything changed.

        The project's keys are touched (``updated_at``), so gateways polling for changed keys
        read them again with the new setting; ``KeyService.announce_project`` tells the ones
        on the key events bus at once.
        """
        if capture_bytes is not None and not (
            MIN_CAPTURE_BYTES <= capture_bytes <= MAX_CAPTURE_BYTES
        ):
            raise InvalidProjectSettings(
                f"capture_bytes must be between {MIN_CAPTURE_BYTES} and {MAX_CAPTURE_BYTES}, "
                f"not {capture_bytes}"
            )
        wanted = {
            name: value
            for name, value in (
                ("capture_payloads", capture_payloads),
                ("capture_bytes", capture_bytes),
            )
            if value is not None
        }
        async with self._store.transaction() as conn:
            stmt = select(projects).where(projects.c.id == project_id, projects.c.org_id == org_id)
            row = (await conn.execute(stmt.with_for_update())).mappings().first()
            if row is None:
                raise UnknownProject(f"org {org_id!r} has no project {project_id!r}")
            project = Project(**row)
            changed = {name: value for name, value in wanted.items() if row[name] != value}
            if not changed:  # already so: nothing to write or audit
                return project
            now = self._now()
            await conn.execute(
                update(projects).where(projects.c.id == project_id).values(**changed)
            )
            # The keys' records carry the setting: touching them makes pollers read them again.
            await conn.execute(
                update(api_keys).where(api_keys.c.project_id == project_id).values(updated_at=now)
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="project.update",
                target_type="project",
                target_id=project_id,
                details={"org_id": org_id, **changed},
                before={name: row[name] for name in changed},
                after=changed,
            )
        return Project(**{**row, **changed})

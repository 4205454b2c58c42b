"""Orgs, projects, members, users, plans and key policies (``/admin/v1``).

An org's own people see and change their org as their role allows (``org:``, ``members:``,
``keys:``); the list of every org and of every user, creating orgs and making operators are the
platform's. Plans are the config's: anyone signed in may read them.

Errors follow the admin API: 400 invalid input, 401, 403, 404 no such org/user/member/key,
409 a name taken, an existing member or the last admin, 422 a malformed body.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from hoodrun.api.errors import ApiError
from hoodrun.api.models import ErrorOut, KeyOut
from hoodrun.api.rbac import Auth, Principal, actor, org_in_path, within_plan
from hoodrun.keys.orgs import MAX_CAPTURE_BYTES, MIN_CAPTURE_BYTES, Org, OrgBook, Project
from hoodrun.keys.service import KeyService

if TYPE_CHECKING:
    from hoodrun.identity import IdentityService
    from hoodrun.identity.records import Membership, User

__all__ = ["orgs_router"]

OrgId = Annotated[str, Path(description="The org id (org_...).")]
UserId = Annotated[str, Path(description="The user id (usr_...).")]
ProjectId = Annotated[str, Path(description="The project id (prj_...).")]
RoleName = Literal["viewer", "ops", "billing", "admin"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgIn(_Body):
    name: str = Field(min_length=1, max_length=64)
    plan: str | None = Field(default=None, description="Default: the config's default plan.")


class OrgPlanIn(_Body):
    plan: str | None = Field(description="The org's plan for keys naming none; null: default.")


class OrgOut(BaseModel):
    id: str
    name: str
    plan: str | None
    created_at: datetime
    keys: int = Field(description="Keys not revoked.")


class OrgsOut(BaseModel):
    orgs: list[OrgOut]


class ProjectIn(_Body):
    name: str = Field(min_length=1, max_length=64)


class ProjectSettingsIn(_Body):
    """What to change of a project's settings; a field left out stays."""

    capture_payloads: bool | None = Field(
        default=None,
        description="Keep an excerpt of each call's params and answer for the request explorer "
        "(secrets redacted); off by default.",
    )
    capture_bytes: int | None = Field(
        default=None,
        ge=MIN_CAPTURE_BYTES,
        le=MAX_CAPTURE_BYTES,
        description="Bytes kept of each params and each answer; longer ones are cut (and say so).",
    )


class ProjectOut(BaseModel):
    id: str
    org_id: str
    name: str
    created_at: datetime
    capture_payloads: bool = Field(description="Params and answers are kept (excerpts).")
    capture_bytes: int = Field(description="Bytes kept of each params and each answer.")


class ProjectsOut(BaseModel):
    projects: list[ProjectOut]


class MemberIn(_Body):
    email: str = Field(min_length=3, max_length=320)
    role: RoleName


class RoleIn(_Body):
    role: RoleName


class PlatformRoleIn(_Body):
    role: RoleName | None = Field(description="null: no longer an operator.")


class MemberOut(BaseModel):
    user_id: str
    email: str
    name: str
    org_id: str
    role: str
    created_at: datetime


class MembersOut(BaseModel):
    members: list[MemberOut]


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    email_verified: bool
    platform_role: str | None
    disabled: bool
    created_at: datetime


class UsersOut(BaseModel):
    users: list[UserOut]


class PlanOut(BaseModel):
    name: str
    description: str
    rps: float = Field(description="Steady requests per second per key.")
    burst: int | None
    quotas: dict[str, int]
    spending_cap: Decimal | None
    archive: bool
    trace: bool
    websocket: bool
    methods_allow: list[str] | None
    methods_deny: list[str]
    price: dict[str, Any] | None


class PlansOut(BaseModel):
    default: str
    plans: list[PlanOut]


class KeyPolicyIn(_Body):
    """What to change of a key's policy; a field left out stays, null clears it."""

    name: str | None = Field(default=None, max_length=128)
    chains: list[str] | None = Field(default=None, description="Allowed chains; null for all.")
    origins: list[str] | None = None
    methods_allow: list[str] | None = None
    methods_deny: list[str] | None = None
    rps: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)


def _org(org: Org) -> OrgOut:
    return OrgOut(id=org.id, name=org.name, plan=org.plan, created_at=org.created_at, keys=org.keys)


def _project(project: Project) -> ProjectOut:
    return ProjectOut.model_validate(project, from_attributes=True)


def _member(member: Membership) -> MemberOut:
    return MemberOut.model_validate(member, from_attributes=True)


def _user(user: User) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


def orgs_router(
    keys: KeyService, orgs: OrgBook, auth: Auth, identity: IdentityService | None
) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422)
    }
    router = APIRouter(
        prefix="/admin/v1", tags=["orgs"], dependencies=[auth.authenticated()], responses=errors
    )
    org = org_in_path()

    async def key_org(request: Request) -> str | None:
        return (await keys.get(request.path_params["key_id"])).org_id

    @router.get("/orgs")
    async def list_orgs(request: Request) -> OrgsOut:
        """Every org for operators; a member's own orgs for others."""
        principal: Principal = await auth.principal(request)
        if principal.allows("org:read"):
            found = await orgs.list()
        else:
            found = await orgs.list(ids=frozenset(principal.orgs))
        return OrgsOut(orgs=[_org(o) for o in found])

    @router.post(
        "/orgs", status_code=status.HTTP_201_CREATED, dependencies=[auth.require("org:write")]
    )
    async def create_org(body: OrgIn) -> OrgOut:
        """A new org (an operator's; people who sign up get theirs)."""
        if body.plan is not None and keys.config.plan(body.plan) is None:
            raise ApiError(400, "unknown_plan", f"unknown plan {body.plan!r}: GET /admin/v1/plans")
        return _org(await orgs.create(body.name, plan=body.plan, actor=actor()))

    @router.get("/orgs/{org}", dependencies=[auth.require("org:read", org)])
    async def get_org(org: OrgId) -> OrgOut:
        return _org(await orgs.get(org))

    @router.put("/orgs/{org}/plan", dependencies=[auth.require("billing:write")])
    async def set_org_plan(org: OrgId, body: OrgPlanIn) -> OrgOut:
        """The plan of the org's keys that name none, with no contract behind it: an operator's
        (a customer changes plan through its contract: ``POST .../contract/plan``)."""
        await keys.change_org_plan(org, body.plan, actor=actor())
        return _org(await orgs.get(org))

    @router.get("/orgs/{org}/projects", dependencies=[auth.require("org:read", org)])
    async def list_projects(org: OrgId) -> ProjectsOut:
        return ProjectsOut(projects=[_project(p) for p in await orgs.projects(org)])

    @router.post(
        "/orgs/{org}/projects",
        status_code=status.HTTP_201_CREATED,
        dependencies=[auth.require("org:write", org)],
    )
    async def create_project(org: OrgId, body: ProjectIn) -> ProjectOut:
        return _project(await orgs.create_project(org, body.name, actor=actor()))

    @router.patch(
        "/orgs/{org}/projects/{project_id}", dependencies=[auth.require("org:write", org)]
    )
    async def update_project(
        org: OrgId, project_id: ProjectId, body: ProjectSettingsIn
    ) -> ProjectOut:
        """Change a project's settings: its payload capture. The gateways apply it at the next
        request of each of its keys."""
        changes = body.model_dump(exclude_none=True)
        if not changes:
            raise ApiError(400, "nothing_to_change", "name at least one setting")
        project = await orgs.update_project(org, project_id, **changes, actor=actor())
        await keys.announce_project(project_id)
        return _project(project)

    @router.patch("/keys/{key_id}", dependencies=[auth.require("keys:write", key_org)])
    async def update_key_policy(request: Request, key_id: str, body: KeyPolicyIn) -> KeyOut:
        """Change a key's policy: its chains and methods (scopes), origins, rate and name. A
        member may narrow the rate within the key's plan; widening it is an operator's."""
        changes = body.model_dump(exclude_unset=True)
        if not changes:
            raise ApiError(400, "nothing_to_change", "name at least one policy field")
        current = await keys.get(key_id)
        within_plan(
            await auth.principal(request),
            keys.config.plan(current.plan),
            own_plan=None,
            rps=changes.get("rps"),
            burst=changes.get("burst"),
        )
        record = await keys.update_policy(key_id, changes, actor=actor())
        return KeyOut.of(record, keys.now())

    @router.get("/plans")
    async def list_plans() -> PlansOut:
        """The plans on sale (the config's), with their limits and prices."""
        config = keys.config
        plans = []
        for plan in config.plans:
            price = plan.price.model_dump(mode="json") if plan.price is not None else None
            plans.append(
                PlanOut(
                    name=plan.name,
                    description=plan.description,
                    rps=plan.rate.rps,
                    burst=plan.rate.burst,
                    quotas=dict(plan.quotas),
                    spending_cap=plan.spending_cap,
                    archive=plan.archive,
                    trace=plan.trace,
                    websocket=plan.websocket,
                    methods_allow=sorted(plan.methods.allow) if plan.methods.allow else None,
                    methods_deny=sorted(plan.methods.deny),
                    price=price,
                )
            )
        return PlansOut(default=config.default_plan, plans=plans)

    if identity is None:
        return router

    @router.get("/orgs/{org}/members", dependencies=[auth.require("members:read", org)])
    async def list_members(org: OrgId) -> MembersOut:
        return MembersOut(members=[_member(m) for m in await identity.members(org)])

    @router.post(
        "/orgs/{org}/members",
        status_code=status.HTTP_201_CREATED,
        dependencies=[auth.require("members:write", org)],
    )
    async def add_member(org: OrgId, body: MemberIn) -> MemberOut:
        """Give a person a role in the org; one without an account is invited by mail."""
        return _member(await identity.add_member(org, body.email, body.role, actor=actor()))

    @router.put("/orgs/{org}/members/{user_id}", dependencies=[auth.require("members:write", org)])
    async def set_member_role(org: OrgId, user_id: UserId, body: RoleIn) -> MemberOut:
        return _member(await identity.set_role(org, user_id, body.role, actor=actor()))

    @router.delete(
        "/orgs/{org}/members/{user_id}",
        status_code=status.HTTP_204_NO_CONTENT,
        dependencies=[auth.require("members:write", org)],
    )
    async def remove_member(org: OrgId, user_id: UserId) -> None:
        await identity.remove_member(org, user_id, actor=actor())

    @router.get("/users", dependencies=[auth.require("members:read")])
    async def list_users() -> UsersOut:
        """Every account (an operator's view)."""
        return UsersOut(users=[_user(u) for u in await identity.users()])

    @router.get("/users/{user_id}", dependencies=[auth.require("members:read")])
    async def get_user(user_id: UserId) -> UserOut:
        return _user(await identity.user(user_id))

    @router.put("/users/{user_id}/platform-role", dependencies=[auth.require("members:write")])
    async def set_platform_role(user_id: UserId, body: PlatformRoleIn) -> UserOut:
        """Make the user an operator with this role over every org, or (null) a customer."""
        return _user(await identity.set_platform_role(user_id, body.role, actor=actor()))

    return router

"""Who is calling the admin API and what they may do (least privilege).

A caller is one of:

- the **admin token** (``Authorization: Bearer <HOODRUN_ADMIN_TOKEN>``): the platform's admin,
  for automation and the first steps of an install;
- a **user**, by the access token (a JWT) the sessions API hands out, or by the portal's
  session cookie on reads (a cookie never authorizes a change: forms carry their own check).

Each route names the permission it needs (``keys:write``, ``billing:read``, ...) and, when it is
about one org, how to find that org (from the path, the query, or the object it names). A user's
role in that org grants what ``hoodrun.identity.roles`` says; an operator's platform role
grants the same over every org and over the platform's own routes (no org). Anything else is
403 naming the permission that is missing; no or a bad credential is 401.

Every request through a permission check records its actor and the client's address for the
audit log (``hoodrun.store.audit``), and :class:`AuditTrail` writes one row for a successful
change that no service recorded itself, so every change is in the log.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import Depends, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hoodrun.api.errors import ApiError
from hoodrun.identity.roles import PERMISSIONS, permissions_of
from hoodrun.store.audit import AuditOrigin, audit_origin, write_audit

if TYPE_CHECKING:
    from hoodrun.config import PlanConfig
    from hoodrun.identity import IdentityService
    from hoodrun.store import Store

__all__ = [
    "AuditTrail",
    "Auth",
    "OrgOf",
    "Principal",
    "actor",
    "org_in_path",
    "org_in_query",
    "within_plan",
]

SESSION_COOKIE = "hoodrun_session"
ADMIN_ACTOR = "admin-token"

OrgOf = Callable[[Request], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: its name in the audit log, its platform role, its role per org."""

    actor: str
    user_id: str | None = None
    platform_role: str | None = None
    orgs: Mapping[str, str] = field(default_factory=dict)

    def allows(self, permission: str, org_id: str | None = None) -> bool:
        if self.platform_role is not None and permission in permissions_of([self.platform_role]):
            return True
        role = self.orgs.get(org_id) if org_id is not None else None
        return role is not None and permission in permissions_of([role])


def within_plan(
    principal: Principal,
    plan: PlanConfig | None,
    *,
    own_plan: str | None,
    rps: float | None,
    burst: int | None,
) -> None:
    """A member (not an operator) may narrow a key's rate within its plan, never widen it, and
    may not give a key a plan of its own: those are the operator's (they change what is billed
    and what the gateway allows). 403 saying so."""
    if principal.platform_role is not None:
        return
    if own_plan is not None:
        raise ApiError(
            403,
            "forbidden",
            "a key's own plan is set by an operator; change your org's plan instead",
        )
    if plan is None:
        return
    if rps is not None and rps > plan.rate.rps:
        raise ApiError(403, "forbidden", f"rps: at most the plan's {plan.rate.rps:g} ({plan.name})")
    if burst is not None and burst > plan.rate.capacity:
        raise ApiError(
            403, "forbidden", f"burst: at most the plan's {plan.rate.capacity} ({plan.name})"
        )


def actor() -> str:
    """The audit log's name for the caller of this request (``admin-api`` outside one)."""
    origin = audit_origin.get()
    return origin.actor if origin is not None and origin.actor else "admin-api"


def org_in_path(name: str = "org") -> OrgOf:
    async def find(request: Request) -> str | None:
        return request.path_params.get(name)

    return find


def org_in_query(name: str = "org") -> OrgOf:
    async def find(request: Request) -> str | None:
        return request.query_params.get(name) or None

    return find


class Auth:
    """Resolves callers and builds the routes' permission checks."""

    def __init__(self, token: str | None, identity: IdentityService | None = None) -> None:
        self._token = token.encode() if token else None
        self.identity = identity

    async def principal(self, request: Request) -> Principal:
        """The caller of ``request`` (401 when there is none or its credential is bad)."""
        found = getattr(request.state, "principal", None)
        if found is not None:
            return found  # type: ignore[no-any-return]
        principal = await self._resolve(request)
        request.state.principal = principal
        origin = audit_origin.get()
        if origin is not None:
            origin.actor = principal.actor
        return principal

    async def _resolve(self, request: Request) -> Principal:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() == "bearer" and given:
            if self._token is not None and hmac.compare_digest(given.encode(), self._token):
                return Principal(ADMIN_ACTOR, platform_role="admin")
            if self.identity is not None and given.count(".") == 2:
                return await _user(self.identity, given)
            if self._token is None and self.identity is None:
                raise ApiError(
                    401,
                    "admin_disabled",
                    "the admin API has no token: set HOODRUN_ADMIN_TOKEN (or admin_token_file)",
                )
            message = (
                "the admin token is not valid"
                if self.identity is None
                else "the token is neither the admin token nor a valid access token"
            )
            raise ApiError(401, "unauthorized", message)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and self.identity is not None and request.method in ("GET", "HEAD"):
            return await _user(self.identity, cookie)
        if self._token is None and self.identity is None:
            raise ApiError(
                401,
                "admin_disabled",
                "the admin API has no token: set HOODRUN_ADMIN_TOKEN (or admin_token_file)",
            )
        raise ApiError(
            401, "unauthorized", "send Authorization: Bearer <admin token or access token>"
        )

    def authenticated(self) -> Any:
        """A dependency: any valid caller."""

        async def check(request: Request) -> Principal:
            return await self.principal(request)

        return Depends(check)

    def require(self, permission: str, org: OrgOf | None = None) -> Any:
        """A dependency: the caller holds ``permission`` for the org ``org`` finds (an org's
        role counts only there), or over the platform (``org`` None, or it finds none)."""
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")

        async def check(request: Request) -> Principal:
            principal = await self.principal(request)
            org_id = await org(request) if org is not None else None
            if principal.allows(permission, org_id):
                return principal
            if org_id is None and principal.orgs:
                message = f"{permission} over every org is an operator's; name your org"
            elif org_id is None:
                message = f"this needs {permission}, which you do not hold"
            elif org_id not in principal.orgs:
                message = f"you are not a member of {org_id}"
            else:
                message = (
                    f"your role in {org_id} ({principal.orgs[org_id]}) does not grant {permission}"
                )
            raise ApiError(403, "forbidden", message)

        check.permission = permission  # type: ignore[attr-defined]  # read by the role-matrix test
        return Depends(check)


async def _user(identity: IdentityService, token: str) -> Principal:
    from hoodrun.identity import IdentityError

    try:  # the session must still be open and the account enabled: logouts count at once
        claims = await identity.authenticate(token)
    except IdentityError as exc:
        raise ApiError(401, "unauthorized", exc.message) from None
    return Principal(
        f"user:{claims.user_id}",
        user_id=claims.user_id,
        platform_role=claims.platform_role,
        orgs=dict(claims.orgs),
    )


_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class AuditTrail:
    """ASGI middleware: opens each request's audit origin (the client's address; the actor once
    a permission check knows it) and, after a successful change by a known caller that no
    service recorded, writes one audit row naming the route, so no change goes unlogged."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        origin = AuditOrigin(ip=client[0] if client else None)
        token = audit_origin.set(origin)
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            audit_origin.reset(token)
        if (
            scope["method"] in _CHANGES
            and 200 <= status < 300
            and origin.actor is not None
            and origin.written == 0
        ):
            await self._record(scope, origin, status)

    async def _record(self, scope: Scope, origin: AuditOrigin, status: int) -> None:
        route = scope.get("route")
        template = str(getattr(route, "path", None) or scope["path"])
        params: dict[str, str] = scope.get("path_params") or {}
        parts = [p for p in template.split("/") if p and not p.startswith("{")]
        target_type = parts[2] if len(parts) > 2 else (parts[-1] if parts else "api")
        target_id = next(reversed(params.values()), "-") if params else "-"
        token = audit_origin.set(origin)
        try:
            async with self.store.engine.begin() as conn:
                await write_audit(
                    conn,
                    at=_now(),
                    actor=origin.actor or "admin-api",
                    action=f"{scope['method']} {template}",
                    target_type=target_type[:32],
                    target_id=str(target_id)[:64],
                    details={"status": status},
                )
        finally:
            audit_origin.reset(token)


def _now() -> datetime:
    return datetime.now(UTC)

"""Entitlements (``/api/v1/entitlements``): may an org use a feature, and how much of its
monthly quota is left ("check access" for other services), behind the admin token.

Errors follow the admin API: 400 a name that is neither a feature nor a meter (the message lists
them), 401 no or wrong token, 404 no org with this id, 503 the database or the analytics store
is unavailable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from hoodrun.api.app import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth, org_in_path
from hoodrun.metering.entitlements import FEATURES, METERS, Entitlement, OrgEntitlements
from hoodrun.telemetry.store import StoreError

__all__ = ["CheckRequest", "EntitlementOut", "EntitlementsOut", "entitlements_router"]

_NAMES = ", ".join((*FEATURES, *METERS))


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(description="The org id (org_...).")
    feature: str = Field(description=f"A feature or a meter: {_NAMES}.")


class EntitlementOut(BaseModel):
    name: str
    allowed: bool
    limit: int | None = Field(description="The monthly quota; null: none.")
    used: int | None = Field(description="Billable use this month (meters only).")
    remaining: int | None
    resets_at: datetime | None = Field(description="When the quota starts again (UTC).")


class EntitlementsOut(BaseModel):
    subject: str
    plan: str
    entitlements: list[EntitlementOut]


def _out(entitlement: Entitlement) -> EntitlementOut:
    return EntitlementOut.model_validate(entitlement, from_attributes=True)


def entitlements_router(entitlements: OrgEntitlements, auth: Auth) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 404, 503)
    }
    router = APIRouter(
        prefix="/api/v1/entitlements",
        tags=["entitlements"],
        dependencies=[auth.authenticated()],
        responses=errors,
    )

    async def guarded(call: Any) -> Any:
        try:
            return await call
        except LookupError as exc:
            if isinstance(exc, KeyError):
                raise ApiError(
                    400, "unknown_feature", f"unknown feature {exc.args[0]!r}: use one of {_NAMES}"
                ) from None
            raise ApiError(404, "org_not_found", str(exc)) from None
        except StoreError as exc:
            raise ApiError(503, "analytics_unavailable", f"usage cannot be read: {exc}") from None

    async def subject(request: Request) -> str | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        found = body.get("subject") if isinstance(body, dict) else None
        return found if isinstance(found, str) else None

    @router.get("/{org}", dependencies=[auth.require("usage:read", org_in_path())])
    async def org_entitlements(
        org: Annotated[str, Path(description="The org id (org_...).")],
    ) -> EntitlementsOut:
        """Every feature and meter of the org's plan, with its quota and use this month."""
        plan, found = await guarded(entitlements.all(org))
        return EntitlementsOut(subject=org, plan=plan.name, entitlements=[_out(e) for e in found])

    @router.post("/check", dependencies=[auth.require("usage:read", subject)])
    async def check(body: CheckRequest) -> EntitlementOut:
        """May the org use this feature (or has it quota left on this meter)?"""
        return _out(await guarded(entitlements.check(body.subject, body.feature)))

    return router

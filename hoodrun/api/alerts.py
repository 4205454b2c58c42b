"""Alerts (``/api/v1/alerts``): Alertmanager's webhook in, the control center's list out.

Alertmanager authenticates with the admin token (``http_config.authorization`` in its receiver;
deploy/alertmanager/alertmanager.yml). Errors follow the admin API: 401 no or wrong token, 422 a
body that is not Alertmanager's webhook (the message names the field), 503 database unavailable.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth
from hoodrun.ops.alerts import AlertBook, IncomingAlert

__all__ = ["AlertOut", "AlertmanagerWebhook", "AlertsOut", "alerts_router"]


class _WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    # Alertmanager's times carry their offset; one without is not its webhook.
    starts_at: AwareDatetime = Field(alias="startsAt")
    ends_at: AwareDatetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = Field(min_length=1, max_length=64)


class AlertmanagerWebhook(BaseModel):
    """Alertmanager's webhook body (``version`` "4"); fields not used here are accepted."""

    model_config = ConfigDict(extra="ignore")

    version: str = "4"
    status: Literal["firing", "resolved"]
    receiver: str = ""
    alerts: list[_WebhookAlert]


class ReceivedOut(BaseModel):
    received: int = Field(description="Alerts in the notification.")
    changed: int = Field(description="Alerts whose stored state changed (later news only).")


class AlertOut(BaseModel):
    fingerprint: str
    name: str
    status: str = Field(description="firing or resolved")
    severity: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    updated_at: datetime


class AlertsOut(BaseModel):
    alerts: list[AlertOut]


def alerts_router(book: AlertBook, auth: Auth) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (401, 422, 503)
    }
    router = APIRouter(
        prefix="/api/v1/alerts",
        tags=["alerts"],
        dependencies=[auth.authenticated()],
        responses=errors,
    )

    @router.post("/alertmanager", dependencies=[auth.require("alerts:write")])
    async def alertmanager(body: AlertmanagerWebhook) -> ReceivedOut:
        """Alertmanager's webhook receiver: stores each alert's latest state."""
        incoming = [
            IncomingAlert(
                fingerprint=a.fingerprint,
                status=a.status,
                labels=a.labels,
                annotations=a.annotations,
                starts_at=a.starts_at,
                ends_at=a.ends_at,
                generator_url=a.generator_url,
            )
            for a in body.alerts
        ]
        changed = await book.receive(incoming)
        return ReceivedOut(received=len(incoming), changed=changed)

    @router.get("", dependencies=[auth.require("alerts:read")])
    async def list_alerts(
        state: Annotated[
            Literal["firing", "all"],
            Query(description="firing: what fires now (most severe first); all: the latest."),
        ] = "firing",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AlertsOut:
        """Alerts as Alertmanager last reported them."""
        found = await book.active() if state == "firing" else await book.recent(limit)
        return AlertsOut(alerts=[AlertOut.model_validate(a, from_attributes=True) for a in found])

    return router

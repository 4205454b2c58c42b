"""Webhooks in the admin API, behind the admin token: an org's endpoints
(``/admin/v1/orgs/{org}/webhooks``: create one, list them, disable one), an endpoint's delivery
log (``GET /admin/v1/webhooks/{id}/deliveries``) and the replay of a failed delivery
(``POST /admin/v1/webhook-deliveries/{id}/replay``). An endpoint's signing secret is in the answer
to its creation only.

A caller without a platform role (an org's member) may only register a URL whose host is a
public address (``hoodrun.webhooks.check_public_url``): the worker POSTs from inside the
platform's network. Operators (a platform role, the admin token) may register any.

Errors follow the admin API: 401 no or wrong token, 404 no such org, endpoint or delivery
(``org_not_found``, ``webhook_not_found``, ``delivery_not_found``), 400 a URL or event list
refused (``invalid_webhook``; for a member, also a host that is not public or does not
resolve), 409 a delivery that is not failed, or whose endpoint is disabled (``not_replayable``),
422 a malformed body.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, Field

from hoodrun.api.app import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth, actor, org_in_path
from hoodrun.webhooks import (
    EVENTS,
    Delivery,
    DeliveryNotFound,
    Endpoint,
    EndpointNotFound,
    InvalidEndpoint,
    NotReplayable,
    OrgNotFound,
    WebhookBook,
    check_public_url,
)

__all__ = ["webhooks_router"]

ACTOR = "admin-api"
Org = Annotated[str, Path(description="The org id (org_...).")]
EndpointId = Annotated[str, Path(description="The endpoint id (whe_...).")]
DeliveryId = Annotated[str, Path(description="The delivery id (whd_...).")]
T = TypeVar("T")


class EndpointRequest(BaseModel):
    url: str = Field(
        description="Where to POST the events (http or https); for an org's member, a public "
        "address (not loopback, private, link-local, ...)."
    )
    events: list[str] = Field(description=f"Events to send: any of {', '.join(EVENTS)}.")


class EndpointOut(BaseModel):
    id: str
    org_id: str
    url: str
    events: list[str]
    enabled: bool
    created_at: datetime
    disabled_at: datetime | None

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointOut:
        return cls(
            id=endpoint.id,
            org_id=endpoint.org_id,
            url=endpoint.url,
            events=list(endpoint.events),
            enabled=endpoint.enabled,
            created_at=endpoint.created_at,
            disabled_at=endpoint.disabled_at,
        )


class CreatedEndpointOut(EndpointOut):
    secret: str = Field(description="Signs the deliveries (HMAC-SHA256); shown this once.")


class EndpointsOut(BaseModel):
    webhooks: list[EndpointOut]


class DeliveryOut(BaseModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryOut:
        return cls.model_validate(delivery, from_attributes=True)


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut]


async def _guarded(call: Awaitable[T]) -> T:
    try:
        return await call
    except OrgNotFound as exc:
        raise ApiError(404, "org_not_found", str(exc)) from None
    except EndpointNotFound as exc:
        raise ApiError(404, "webhook_not_found", str(exc)) from None
    except DeliveryNotFound as exc:
        raise ApiError(404, "delivery_not_found", str(exc)) from None
    except InvalidEndpoint as exc:
        raise ApiError(400, "invalid_webhook", str(exc)) from None
    except NotReplayable as exc:
        raise ApiError(409, "not_replayable", str(exc)) from None


def webhooks_router(book: WebhookBook, auth: Auth) -> APIRouter:
    """The webhook routes, each behind its permission (``webhooks:read`` or ``:write``)."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 404, 409, 422)
    }
    router = APIRouter(
        prefix="/admin/v1",
        tags=["webhooks"],
        dependencies=[auth.authenticated()],
        responses=errors,
    )

    async def endpoint_org(request: Request) -> str | None:
        return (await _guarded(book.endpoint(request.path_params["endpoint_id"]))).org_id

    async def delivery_org(request: Request) -> str | None:
        _, endpoint = await _guarded(book.target(request.path_params["delivery_id"]))
        return endpoint.org_id

    org = org_in_path()

    @router.post(
        "/orgs/{org}/webhooks",
        status_code=status.HTTP_201_CREATED,
        dependencies=[auth.require("webhooks:write", org)],
    )
    async def create_webhook(
        org: Org, body: EndpointRequest, request: Request
    ) -> CreatedEndpointOut:
        """A new endpoint for the org; the answer holds its signing secret, once. An org's
        member may name public addresses only (400 `invalid_webhook` otherwise)."""
        if (await auth.principal(request)).platform_role is None:
            await _guarded(check_public_url(body.url))
        made = await _guarded(book.create_endpoint(org, body.url, body.events, actor=actor()))
        return CreatedEndpointOut(**EndpointOut.of(made).model_dump(), secret=made.secret)

    @router.get("/orgs/{org}/webhooks", dependencies=[auth.require("webhooks:read", org)])
    async def list_webhooks(org: Org) -> EndpointsOut:
        """The org's endpoints (enabled and disabled), oldest first."""
        return EndpointsOut(webhooks=[EndpointOut.of(e) for e in await book.endpoints(org)])

    @router.delete(
        "/orgs/{org}/webhooks/{endpoint_id}", dependencies=[auth.require("webhooks:write", org)]
    )
    async def disable_webhook(org: Org, endpoint_id: EndpointId) -> EndpointOut:
        """Disable the endpoint: nothing more is sent to it."""
        endpoint = await _guarded(book.endpoint(endpoint_id))
        if endpoint.org_id != org:
            raise ApiError(404, "webhook_not_found", f"org {org} has no webhook {endpoint_id!r}")
        return EndpointOut.of(await _guarded(book.disable(endpoint_id, actor=actor())))

    @router.get(
        "/webhooks/{endpoint_id}/deliveries",
        dependencies=[auth.require("webhooks:read", endpoint_org)],
    )
    async def list_deliveries(
        endpoint_id: EndpointId,
        status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> DeliveriesOut:
        """The endpoint's deliveries, newest first."""
        found = await _guarded(book.deliveries(endpoint_id, status=status, limit=limit))
        return DeliveriesOut(deliveries=[DeliveryOut.of(d) for d in found])

    @router.post(
        "/webhook-deliveries/{delivery_id}/replay",
        status_code=202,
        dependencies=[auth.require("webhooks:write", delivery_org)],
    )
    async def replay_delivery(delivery_id: DeliveryId) -> DeliveryOut:
        """Send a failed delivery again (the worker runs it)."""
        return DeliveryOut.of(await _guarded(book.replay(delivery_id, actor=actor())))

    return router

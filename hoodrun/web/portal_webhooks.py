"""The portal's webhooks (endpoints, their delivery log, replaying a failed delivery) and each
member's notification preferences (email per org and event).

An endpoint made here is a customer's: its URL must name a public address
(``hoodrun.webhooks.check_public_url``), since the worker POSTs from inside the platform's network.

Preferences are rows of ``notification_prefs``; an event without a row is mailed (the default is
on). Saving them writes one audit row, ``notifications.update``, in the same transaction.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from hoodrun.store import write_audit
from hoodrun.store.tables import notification_prefs
from hoodrun.web.context import WebContext
from hoodrun.web.forms import checked, field
from hoodrun.web.render import render
from hoodrun.web.session import PageNotFound, PortalAuth, Unavailable, Viewer, is_htmx
from hoodrun.webhooks import (
    EVENTS,
    DeliveryNotFound,
    Endpoint,
    EndpointNotFound,
    WebhookBook,
    WebhookError,
    check_public_url,
)

__all__ = ["NOTIFICATION_EVENTS", "email_wanted", "webhook_routes"]

NOTIFICATION_EVENTS: Final = {
    "usage.threshold": "Usage reached 80% or 100% of a quota or spending cap",
    "quota.exhausted": "A quota is used up: calls are refused until it resets",
    "error_rate.spike": "A key's error rate jumped",
    "invoice.created": "A new invoice",
    "invoice.paid": "An invoice is paid",
    "credits.low": "The credit balance is running low",
}
DEFAULT_EMAIL: Final = True


async def email_wanted(ctx: WebContext, user_id: str, org_id: str) -> dict[str, bool]:
    """The member's choice per event (``DEFAULT_EMAIL`` where they made none)."""
    stmt = select(notification_prefs.c.event, notification_prefs.c.email).where(
        (notification_prefs.c.user_id == user_id) & (notification_prefs.c.org_id == org_id)
    )
    async with ctx.store.connect() as conn:
        chosen = {row.event: bool(row.email) for row in await conn.execute(stmt)}
    return {event: chosen.get(event, DEFAULT_EMAIL) for event in NOTIFICATION_EVENTS}


def webhook_routes(router: APIRouter, ctx: WebContext, auth: PortalAuth) -> None:
    read = Depends(auth.require("webhooks:read", "see webhooks"))
    write = Depends(auth.require("webhooks:write", "change webhooks"))

    def book() -> WebhookBook:
        if ctx.webhooks is None:
            raise Unavailable("Webhooks are not available on this deployment.")
        return ctx.webhooks

    async def owned(viewer: Viewer, endpoint_id: str) -> Endpoint:
        try:
            endpoint = await book().endpoint(endpoint_id)
        except EndpointNotFound:
            raise PageNotFound("No such webhook endpoint.") from None
        if endpoint.org_id != viewer.org_id:
            raise PageNotFound("No such webhook endpoint.")
        return endpoint

    async def page(
        request: Request,
        viewer: Viewer,
        *,
        created: Endpoint | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        endpoints = await book().endpoints(viewer.org_id)
        return render(
            request,
            "portal/webhooks.html",
            status=status,
            endpoints=endpoints,
            events=EVENTS,
            created=created,
            error=error,
        )

    @router.get("/webhooks")
    async def webhooks(request: Request, viewer: Viewer = read) -> Response:
        return await page(request, viewer)

    @router.post("/webhooks")
    async def create_webhook(request: Request, viewer: Viewer = write) -> Response:
        form = await request.form()
        url = field(form, "url")
        try:
            await check_public_url(url)
            created = await book().create_endpoint(
                viewer.org_id, url, checked(form, "events"), actor=viewer.actor
            )
        except WebhookError as exc:
            return await page(request, viewer, error=str(exc), status=400)
        return await page(request, viewer, created=created, status=201)

    @router.post("/webhooks/{endpoint_id}/disable")
    async def disable_webhook(
        request: Request, endpoint_id: str, viewer: Viewer = write
    ) -> Response:
        await owned(viewer, endpoint_id)
        await book().disable(endpoint_id, actor=viewer.actor, reason="disabled in the portal")
        return RedirectResponse("/portal/webhooks", status_code=303)

    @router.get("/webhooks/{endpoint_id}")
    async def deliveries(request: Request, endpoint_id: str, viewer: Viewer = read) -> Response:
        endpoint = await owned(viewer, endpoint_id)
        listed = await book().deliveries(endpoint_id, limit=200)
        return render(request, "portal/webhook.html", endpoint=endpoint, deliveries=listed)

    @router.post("/webhooks/deliveries/{delivery_id}/replay")
    async def replay(request: Request, delivery_id: str, viewer: Viewer = write) -> Response:
        try:
            delivery, endpoint = await book().target(delivery_id)
        except (DeliveryNotFound, EndpointNotFound):
            raise PageNotFound("No such delivery.") from None
        if endpoint.org_id != viewer.org_id:
            raise PageNotFound("No such delivery.")
        error = None
        try:
            delivery = await book().replay(delivery_id, actor=viewer.actor)
        except WebhookError as exc:
            error = str(exc)
        if is_htmx(request):
            return render(
                request,
                "portal/_delivery_row.html",
                status=409 if error else 200,
                delivery=delivery,
                row_error=error,
            )
        return RedirectResponse(f"/portal/webhooks/{endpoint.id}", status_code=303)

    # --- notification preferences ----------------------------------------------------------------

    member = Depends(auth.require("org:read", "set notifications"))

    @router.get("/notifications")
    async def notifications(request: Request, viewer: Viewer = member) -> Response:
        wanted = await email_wanted(ctx, viewer.user_id, viewer.org_id)
        return render(
            request,
            "portal/notifications.html",
            events=NOTIFICATION_EVENTS,
            wanted=wanted,
            saved=request.query_params.get("saved") == "1",
        )

    @router.post("/notifications")
    async def save_notifications(request: Request, viewer: Viewer = member) -> Response:
        chosen = set(checked(await request.form(), "email"))
        before = await email_wanted(ctx, viewer.user_id, viewer.org_id)
        after = {event: event in chosen for event in NOTIFICATION_EVENTS}
        now = ctx.keys.now()
        async with ctx.store.transaction() as conn:
            for event, email in after.items():
                values: dict[str, Any] = {
                    "user_id": viewer.user_id,
                    "org_id": viewer.org_id,
                    "event": event,
                    "email": email,
                    "updated_at": now,
                }
                stmt = ctx.store.insert(notification_prefs).values(values)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["user_id", "org_id", "event"],
                        set_={"email": email, "updated_at": now},
                    )
                )
            await write_audit(
                conn,
                at=now,
                actor=viewer.actor,
                action="notifications.update",
                target_type="user",
                target_id=viewer.user_id,
                details={"org": viewer.org_id, "before": before, "after": after},
                before={"org": viewer.org_id, "email": before},
                after={"org": viewer.org_id, "email": after},
            )
        return RedirectResponse("/portal/notifications?saved=1", status_code=303)

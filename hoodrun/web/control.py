"""The operators' control center (``/control``): server-rendered pages, htmx for the panels that
refresh themselves and for the cordon and retry buttons.

Pages: the overview (service catalog: roles running, versions, uptime; health of each
component), service levels per chain against the seeds' targets, upstream nodes (with cordon /
uncordon), active alerts, billing reconciliation, and the job queue (with retry of dead jobs).

Who may look
    The portal's session cookie (``hoodrun_session``, the identity service's access token; the
    portal at ``/portal/login`` sets it). The token must be valid, its session open and its user
    an operator (``platform_role``) whose role grants the page's permission (``platform:read``,
    ``upstreams:read``, ``alerts:read``, ``billing:read``, ``jobs:read``; the buttons need the
    ``:write`` ones). Not logged in: a redirect to ``/portal/login?next=<this page>`` (htmx:
    ``HX-Redirect``); a customer, or a role without the permission: a 403 page that says which.

CSRF (double submit)
    ``hoodrun_csrf`` (path ``/control``) holds a random token; every form carries it in the
    field ``csrf`` and htmx sends it as ``X-CSRF-Token`` (``base.html``); a POST whose token
    does not equal the cookie's is refused (403) before its handler runs.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from hoodrun.identity.errors import IdentityError, InvalidToken
from hoodrun.identity.roles import permissions_of
from hoodrun.jobs import JobNotFound, JobQueue, JobStateError
from hoodrun.ops.alerts import AlertBook
from hoodrun.ops.cordons import CordonBook, CordonError
from hoodrun.ops.fleet import chain_views, fleet
from hoodrun.ops.slo import OBJECTIVES, WINDOW_PATTERN, measure, parse_window
from hoodrun.telemetry.store import StoreError
from hoodrun.web.control_data import (
    MATCH_TARGET,
    catalog,
    health,
    job_summary,
    reconciliation,
)
from hoodrun.web.render import render
from hoodrun.web.session import CSRF_COOKIE, PortalError, csrf_given, is_htmx

if TYPE_CHECKING:
    from hoodrun.identity import Claims
    from hoodrun.web.context import WebContext

__all__ = ["CSRF_COOKIE", "PREFIX", "Operator", "control_router"]

PREFIX: Final = "/control"
LOGIN: Final = "/portal/login"
SESSION_COOKIE: Final = "hoodrun_session"
REFRESH_SECONDS: Final = 5
WINDOWS: Final = ("15m", "1h", "6h", "24h", "7d", "30d")
# (path, label, permission) of the navigation, in order.
PAGES: Final = (
    ("", "Overview", "platform:read"),
    ("/slo", "SLOs", "platform:read"),
    ("/upstreams", "Upstreams", "upstreams:read"),
    ("/alerts", "Alerts", "alerts:read"),
    ("/billing", "Billing", "billing:read"),
    ("/jobs", "Jobs", "jobs:read"),
)


# --- errors --------------------------------------------------------------------------------------


class ControlError(PortalError):
    """Something went wrong (a page of its own, as the portal's errors are)."""


class LoginNeeded(ControlError):
    """Log in as an operator to continue."""

    status, title = 401, "Log in"


class NotAllowed(ControlError):
    """The control center is for operators."""

    status, title = 403, "Not allowed"


class BadRequest(ControlError):
    """The request is not valid."""

    status, title = 400, "Bad request"


class NotFound(ControlError):
    """There is nothing here."""

    status, title = 404, "Not found"


# --- who is asking -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operator:
    """A user with a platform role, and what the role grants."""

    claims: Claims
    permissions: frozenset[str]

    @property
    def actor(self) -> str:
        return f"user:{self.claims.user_id}"

    @property
    def role(self) -> str:
        return self.claims.platform_role or "none"

    def can(self, permission: str) -> bool:
        return permission in self.permissions


class ControlAuth:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    async def operator(self, request: Request) -> Operator:
        found: Operator | None = getattr(request.state, "operator", None)
        if found is not None:
            return found
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            raise LoginNeeded()
        try:
            # The session must still be open (a logout ends access here at once).
            claims = await self.ctx.identity.authenticate(token)
        except InvalidToken:
            raise LoginNeeded("Your session has ended: log in again.") from None
        except IdentityError as exc:
            raise NotAllowed(exc.message) from None
        if not claims.platform_role:
            raise NotAllowed(
                "The control center is for the platform's operators, and your account has no "
                "platform role. Your org's pages are in the portal."
            )
        operator = Operator(claims, permissions_of([claims.platform_role]))
        request.state.operator = operator
        return operator

    def require(self, permission: str) -> Callable[[Request], Coroutine[Any, Any, Operator]]:
        async def check(request: Request) -> Operator:
            operator = await self.operator(request)
            if not operator.can(permission):
                raise NotAllowed(
                    f"Your platform role ({operator.role}) does not grant {permission}, which "
                    "this page needs. Ask an admin of the platform."
                )
            return operator

        return check


# --- route class: CSRF, cookie, errors as pages ---------------------------------------------------


def _route_class(*, secure_cookies: bool) -> type[APIRoute]:
    class ControlRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                cookie = request.cookies.get(CSRF_COOKIE)
                fresh = None if cookie else secrets.token_urlsafe(32)
                request.state.csrf = cookie or fresh
                try:
                    if request.method == "POST":
                        given = await csrf_given(request)
                        if not cookie or not hmac.compare_digest(given.encode(), cookie.encode()):
                            raise NotAllowed(
                                "This form expired or came from another site (its security "
                                "token does not match). Reload the page and try again."
                            )
                    response = await handler(request)
                except ControlError as exc:
                    response = _error_page(request, exc)
                except RequestValidationError as exc:
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}"
                        for err in exc.errors()
                    )
                    response = _error_page(request, BadRequest(problems or None))
                if fresh is not None:
                    response.set_cookie(
                        CSRF_COOKIE,
                        fresh,
                        path=PREFIX,
                        secure=secure_cookies,
                        httponly=True,
                        samesite="strict",
                    )
                return response

            return run

    return ControlRoute


def _error_page(request: Request, exc: ControlError) -> Response:
    if isinstance(exc, LoginNeeded):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET" or not target.startswith(PREFIX):
            target = PREFIX
        login = f"{LOGIN}?next={quote(target, safe='/')}"
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": login})
        return RedirectResponse(login, status_code=303)
    operator = getattr(request.state, "operator", None)
    if is_htmx(request):
        return render(request, "control/_error.html", status=exc.status, error=exc)
    return render(
        request, "control/error.html", status=exc.status, error=exc, **_chrome(operator, "")
    )


# --- helpers for the templates -------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    """``3d 4h``, ``5h 12m``, ``7m 3s``, ``42s``."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _indicator(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value * 100:.3f}%"


def _target(op: str, target: float, unit: str) -> str:
    shown = f"{target:g} ms" if unit == "ms" else f"{target * 100:g}%"
    return f"{op} {shown}"


def _chrome(operator: Operator | None, page: str) -> dict[str, Any]:
    """What the layout needs: the navigation the operator may see, and who they are."""
    nav = [
        (PREFIX + path, label)
        for path, label, permission in PAGES
        if operator is not None and operator.can(permission)
    ]
    return {
        "operator": operator,
        "nav": nav,
        "page": PREFIX + page,
        "assets": "/portal/assets",
        "duration": _duration,
        "indicator": _indicator,
        "target": _target,
        "refresh": REFRESH_SECONDS,
    }


def _now() -> datetime:
    return datetime.now(UTC)


Panel = Annotated[bool, Query(description="Only the panel (htmx refresh).")]


# --- the router ----------------------------------------------------------------------------------


def control_router(ctx: WebContext) -> APIRouter:
    """The control center's pages; include it in the api role's app (``create_api_app``)."""
    router = APIRouter(
        prefix=PREFIX,
        include_in_schema=False,
        route_class=_route_class(secure_cookies=ctx.config.web.secure_cookies),
    )
    auth = ControlAuth(ctx)
    store = ctx.store
    cordons = CordonBook(store, lambda: ctx.keys.config)
    alerts = ctx.alerts or AlertBook(store)
    queue = ctx.jobs or JobQueue(store)

    # The permission checks, as FastAPI dependencies (the default of each route's operator).
    platform_read = Depends(auth.require("platform:read"))
    upstreams_read = Depends(auth.require("upstreams:read"))
    upstreams_write = Depends(auth.require("upstreams:write"))
    alerts_read = Depends(auth.require("alerts:read"))
    billing_read = Depends(auth.require("billing:read"))
    jobs_read = Depends(auth.require("jobs:read"))
    jobs_write = Depends(auth.require("jobs:write"))

    def page(
        request: Request,
        operator: Operator,
        name: str,
        path: str,
        panel: bool,
        status: int = 200,
        **values: Any,
    ) -> Response:
        template = f"control/_{name}.html" if panel else f"control/{name}.html"
        return render(request, template, status=status, **_chrome(operator, path), **values)

    # --- overview: catalog and health ----------------------------------------------------------

    @router.get("")
    async def overview(
        request: Request, operator: Operator = platform_read, panel: Panel = False
    ) -> Response:
        now = _now()
        instances = await fleet(store, now)
        checks = await health(store, ctx.reports(), instances)
        return page(
            request,
            operator,
            "overview",
            "",
            panel,
            roles=catalog(instances),
            checks=checks,
            instances=instances,
            now=now,
        )

    # --- service levels ------------------------------------------------------------------------

    @router.get("/slo")
    async def slo(
        request: Request,
        operator: Operator = platform_read,
        window: Annotated[str, Query(pattern=WINDOW_PATTERN)] = "1h",
        panel: Panel = False,
    ) -> Response:
        try:
            span = parse_window(window)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        reports = ctx.reports()
        report, problem = None, None
        if reports is None:
            problem = "The analytics store is not available: no service levels to show."
        else:
            try:
                chains = [chain.name for chain in ctx.keys.config.chains]
                report = await measure(reports, chains, span)
            except (ValueError, StoreError) as exc:
                problem = f"The service levels could not be read: {exc}"
        return page(
            request,
            operator,
            "slo",
            "/slo",
            panel,
            report=report,
            problem=problem,
            window=window,
            windows=WINDOWS,
            objectives=OBJECTIVES,
        )

    # --- upstreams and cordons -----------------------------------------------------------------

    async def upstreams_page(
        request: Request,
        operator: Operator,
        panel: bool,
        *,
        status: int = 200,
        notice: str | None = None,
        error: str | None = None,
    ) -> Response:
        views = chain_views(ctx.keys.config, await fleet(store, _now()), await cordons.list())
        return page(
            request,
            operator,
            "upstreams",
            "/upstreams",
            panel,
            status=status,
            chains=views,
            notice=notice,
            error=error,
        )

    @router.get("/upstreams")
    async def upstreams(
        request: Request, operator: Operator = upstreams_read, panel: Panel = False
    ) -> Response:
        return await upstreams_page(request, operator, panel)

    async def change_cordon(
        request: Request, operator: Operator, chain: str, upstream: str, cordon: bool
    ) -> Response:
        form = await request.form()
        reason = form.get("reason")
        try:
            if cordon:
                await cordons.cordon(
                    chain, upstream, reason if isinstance(reason, str) else "", operator.actor
                )
                notice = (
                    f"{chain} / {upstream} is cordoned: the gateways stop sending it traffic "
                    "within seconds."
                )
            else:
                await cordons.uncordon(chain, upstream, operator.actor)
                notice = f"{chain} / {upstream} is back in rotation."
        except CordonError as exc:
            if not is_htmx(request):
                raise BadRequest(exc.message) from None
            return await upstreams_page(
                request, operator, True, status=exc.status, error=exc.message
            )
        if not is_htmx(request):
            return RedirectResponse(f"{PREFIX}/upstreams", status_code=303)
        return await upstreams_page(request, operator, True, notice=notice)

    @router.post("/upstreams/{chain}/{upstream}/cordon")
    async def cordon(
        request: Request, chain: str, upstream: str, operator: Operator = upstreams_write
    ) -> Response:
        return await change_cordon(request, operator, chain, upstream, True)

    @router.post("/upstreams/{chain}/{upstream}/uncordon")
    async def uncordon(
        request: Request, chain: str, upstream: str, operator: Operator = upstreams_write
    ) -> Response:
        return await change_cordon(request, operator, chain, upstream, False)

    # --- alerts ------------------------------------------------------------------------------

    @router.get("/alerts")
    async def active_alerts(
        request: Request, operator: Operator = alerts_read, panel: Panel = False
    ) -> Response:
        return page(request, operator, "alerts", "/alerts", panel, alerts=await alerts.active())

    # --- billing reconciliation ----------------------------------------------------------------

    @router.get("/billing")
    async def billing(
        request: Request, operator: Operator = billing_read, panel: Panel = False
    ) -> Response:
        return page(
            request,
            operator,
            "billing",
            "/billing",
            panel,
            rec=await reconciliation(store),
            match_target=MATCH_TARGET,
        )

    # --- jobs --------------------------------------------------------------------------------

    async def jobs_page(
        request: Request,
        operator: Operator,
        panel: bool,
        *,
        status: int = 200,
        notice: str | None = None,
        error: str | None = None,
    ) -> Response:
        return page(
            request,
            operator,
            "jobs",
            "/jobs",
            panel,
            status=status,
            summary=await job_summary(queue),
            notice=notice,
            error=error,
        )

    @router.get("/jobs")
    async def jobs(
        request: Request, operator: Operator = jobs_read, panel: Panel = False
    ) -> Response:
        return await jobs_page(request, operator, panel)

    @router.post("/jobs/{job_id}/retry")
    async def retry_job(request: Request, job_id: str, operator: Operator = jobs_write) -> Response:
        try:
            job = await queue.retry(job_id, actor=operator.actor)
        except JobNotFound:
            raise NotFound(f"There is no job {job_id}.") from None
        except JobStateError as exc:
            if not is_htmx(request):
                raise BadRequest(str(exc)) from None
            return await jobs_page(request, operator, True, status=409, error=str(exc))
        if not is_htmx(request):
            return RedirectResponse(f"{PREFIX}/jobs", status_code=303)
        return await jobs_page(
            request, operator, True, notice=f"Job {job.id} ({job.kind}) is queued again."
        )

    return router

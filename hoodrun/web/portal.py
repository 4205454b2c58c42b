"""The customer portal (``/portal``): server-rendered pages with htmx for the parts that change.

This module assembles the router and holds the account pages (sign up, verify, log in and out,
forgotten and reset password, switching org); the rest is by subject: ``portal_keys`` (keys,
projects, endpoints), ``portal_usage`` (charts), ``portal_billing`` (plan, credits, invoices),
``portal_webhooks`` (webhooks, notification preferences). ``hoodrun.web.session`` says how
sessions, CSRF and roles work; every change goes through the services of ``WebContext``, which
write the audit log with the actor ``user:<id>``.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from hoodrun.identity.errors import IdentityError
from hoodrun.web.assets import assets_router
from hoodrun.web.context import WebContext
from hoodrun.web.forms import field as _field
from hoodrun.web.portal_billing import billing_routes
from hoodrun.web.portal_keys import key_routes
from hoodrun.web.portal_logs import logs_routes
from hoodrun.web.portal_usage import usage_routes
from hoodrun.web.portal_webhooks import webhook_routes
from hoodrun.web.render import render
from hoodrun.web.session import (
    REFRESH_COOKIE,
    LoginRequired,
    PortalAuth,
    clear_session,
    client_ip,
    new_csrf,
    portal_route_class,
    safe_next,
    set_session,
)

__all__ = ["portal_router"]

PREFIX: Final = "/portal"
NOTICES: Final = {
    "logged_out": "You are logged out.",
    "password_reset": "Your password is changed and every session of yours ended: log in.",
    "verified": "Your address is verified: log in.",
}


def _password(form: FormData, name: str = "password") -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""  # never stripped: spaces count


def portal_router(ctx: WebContext) -> APIRouter:
    """The portal's pages; include it in the api role's app (``create_api_app``)."""
    router = APIRouter(
        prefix=PREFIX,
        include_in_schema=False,
        route_class=portal_route_class(secure_cookies=ctx.config.web.secure_cookies),
    )
    auth = PortalAuth(ctx)
    identity = ctx.identity
    oidc = ctx.config.auth.oidc
    sso = oidc.button_label if oidc.enabled else None  # the login page's button (api/sso.py)

    @router.get("")
    async def home() -> Response:
        return RedirectResponse(f"{PREFIX}/keys", status_code=303)

    # --- sign up and verify ----------------------------------------------------------------------

    @router.get("/signup")
    async def signup_form(request: Request) -> Response:
        return render(request, "portal/signup.html", error=None, form={})

    @router.post("/signup")
    async def signup(request: Request) -> Response:
        form = await request.form()
        values = {name: _field(form, name) for name in ("email", "name", "org_name")}
        try:
            user = await identity.sign_up(
                values["email"],
                _password(form),
                name=values["name"],
                org_name=values["org_name"] or None,
                ip=client_ip(request),
            )
        except IdentityError as exc:
            return render(
                request, "portal/signup.html", status=exc.status, error=exc.message, form=values
            )
        return render(
            request,
            "portal/signup_done.html",
            email=user.email,
            mail=ctx.config.smtp.host is not None,
        )

    @router.get("/verify")
    async def verify_form(request: Request, token: Annotated[str, Query()] = "") -> Response:
        return render(request, "portal/verify.html", token=token, error=None)

    @router.post("/verify")
    async def verify(request: Request) -> Response:
        token = _field(await request.form(), "token")
        try:
            await identity.verify_email(token)
        except IdentityError as exc:
            return render(
                request, "portal/verify.html", status=exc.status, token="", error=exc.message
            )
        return RedirectResponse(f"{PREFIX}/login?notice=verified", status_code=303)

    # --- log in and out --------------------------------------------------------------------------

    @router.get("/login")
    async def login_form(
        request: Request,
        next: Annotated[str | None, Query()] = None,
        notice: Annotated[str | None, Query()] = None,
    ) -> Response:
        return render(
            request,
            "portal/login.html",
            next=safe_next(next),
            notice=NOTICES.get(notice or ""),
            error=None,
            email="",
            sso=sso,
        )

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        email, target = _field(form, "email"), safe_next(_field(form, "next"))
        try:
            session = await identity.login(email, _password(form), ip=client_ip(request))
        except IdentityError as exc:
            page = render(
                request,
                "portal/login.html",
                status=exc.status,
                next=target,
                notice=None,
                error=exc.message,
                email=email,
                sso=sso,
            )
            if exc.retry_after:
                page.headers["Retry-After"] = str(exc.retry_after)
            return page
        previous = request.cookies.get(REFRESH_COOKIE)
        if previous:  # the browser's earlier session ends: one session per browser
            try:
                await identity.logout(previous)
            except IdentityError:
                pass
        set_session(request, session, refresh_ttl=ctx.config.auth.refresh_ttl)
        new_csrf(request)  # a new session, a new token
        return RedirectResponse(target, status_code=303)

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        refresh = request.cookies.get(REFRESH_COOKIE)
        if refresh:
            try:
                await identity.logout(refresh)
            except IdentityError:
                pass  # already ended: the cookies go all the same
        clear_session(request)
        new_csrf(request)
        return RedirectResponse(f"{PREFIX}/login?notice=logged_out", status_code=303)

    @router.post("/org")
    async def switch_org(request: Request) -> Response:
        """A session in another of the user's orgs (the refresh names it)."""
        await auth.viewer(request)  # logged in, or off to the login page
        org_id = _field(await request.form(), "org_id")
        refresh = request.cookies.get(REFRESH_COOKIE)
        if not refresh:
            raise LoginRequired()
        session = await identity.refresh(refresh, org_id=org_id, ip=client_ip(request))
        set_session(request, session, refresh_ttl=ctx.config.auth.refresh_ttl)
        return RedirectResponse(f"{PREFIX}/keys", status_code=303)

    # --- forgotten password ----------------------------------------------------------------------

    @router.get("/forgot")
    async def forgot_form(request: Request) -> Response:
        return render(request, "portal/forgot.html", sent=False, error=None)

    @router.post("/forgot")
    async def forgot(request: Request) -> Response:
        email = _field(await request.form(), "email")
        try:
            await identity.request_password_reset(email, ip=client_ip(request))
        except IdentityError as exc:
            return render(
                request, "portal/forgot.html", status=exc.status, sent=False, error=exc.message
            )
        # The same answer whether or not the address has an account.
        return render(request, "portal/forgot.html", sent=True, error=None)

    @router.get("/reset")
    async def reset_form(request: Request, token: Annotated[str, Query()] = "") -> Response:
        return render(request, "portal/reset.html", token=token, error=None)

    @router.post("/reset")
    async def reset(request: Request) -> Response:
        form = await request.form()
        token = _field(form, "token")
        password = _password(form)
        if password != _password(form, "password_again"):
            return render(
                request,
                "portal/reset.html",
                status=400,
                token=token,
                error="The two passwords differ.",
            )
        try:
            await identity.reset_password(token, password)
        except IdentityError as exc:
            return render(
                request, "portal/reset.html", status=exc.status, token=token, error=exc.message
            )
        clear_session(request)
        return RedirectResponse(f"{PREFIX}/login?notice=password_reset", status_code=303)

    key_routes(router, ctx, auth)
    usage_routes(router, ctx, auth)
    logs_routes(router, ctx, auth)
    billing_routes(router, ctx, auth)
    webhook_routes(router, ctx, auth)
    router.include_router(assets_router(ctx.config.web.assets_dir, ""))
    return router

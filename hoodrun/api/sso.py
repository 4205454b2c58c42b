"""Operators' single sign-on pages (``/portal/sso``), when ``auth.oidc`` is enabled.

::

    GET /portal/sso/login?next=/control/...   303 to the provider (the flow in a signed cookie)
    GET /portal/sso/callback?code=&state=     303 to next (default /control), logged in

The callback checks the flow (``hoodrun.identity.oidc``), maps the provider's groups to a
platform role, and opens a session as a password login does (``IdentityService.login_sso``:
the account is made at the first sign-on, its platform role follows the provider's); the
portal's own helpers set the session cookies (``hoodrun_session``, ``hoodrun_refresh``) and a
new CSRF token. Whatever goes wrong (a forged or stale flow, a refused or unreachable provider,
an ID token that fails a check, a person who is no operator) is a page saying so, never a 500;
the flow cookie is spent either way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from hoodrun.identity.errors import IdentityError
from hoodrun.identity.oidc import FLOW_TTL, NoOperatorRole, OidcClient, OidcError
from hoodrun.web.render import render
from hoodrun.web.session import (
    REFRESH_COOKIE,
    PortalError,
    client_ip,
    new_csrf,
    portal_route_class,
    safe_next,
    set_session,
)

if TYPE_CHECKING:
    from hoodrun.identity import IdentityService

__all__ = ["FLOW_COOKIE", "PREFIX", "sso_router"]

PREFIX: Final = "/portal/sso"
FLOW_COOKIE: Final = "hoodrun_sso"
CONTROL: Final = "/control"

logger = logging.getLogger(__name__)


def sso_router(identity: IdentityService, oidc: OidcClient) -> APIRouter:
    """The sign-on pages over ``oidc`` (opened by the caller); include it in the api role's app
    beside the portal."""
    config = identity.config
    secure = config.web.secure_cookies
    router = APIRouter(
        prefix=PREFIX,
        include_in_schema=False,
        route_class=portal_route_class(secure_cookies=secure),
    )

    def callback_url(request: Request) -> str:
        # The provider must know this address (its registered redirect URIs).
        base = config.web.public_url or str(request.base_url)
        return base.rstrip("/") + PREFIX + "/callback"

    def refused(request: Request, exc: IdentityError) -> Response:
        error = PortalError(exc.message)
        error.status = exc.status
        error.title = getattr(exc, "title", "Single sign-on refused")
        return render(request, "error.html", status=exc.status, error=error)

    @router.get("/login")
    async def login(request: Request, next: Annotated[str | None, Query()] = None) -> Response:
        wanted = safe_next(next)
        target = wanted if wanted.startswith(CONTROL) else CONTROL
        try:
            url, flow = await oidc.begin(callback_url(request), target=target)
        except OidcError as exc:
            logger.warning("sso: cannot start: %s", exc.code)
            return refused(request, exc)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(
            FLOW_COOKIE,
            oidc.seal(flow),
            max_age=FLOW_TTL,
            path=PREFIX,
            secure=secure,
            httponly=True,
            samesite="lax",  # sent on the provider's redirect back: a top-level GET
        )
        return response

    @router.get("/callback")
    async def callback(request: Request) -> Response:
        response: Response
        try:
            flow = oidc.unseal(request.cookies.get(FLOW_COOKIE))
            person = await oidc.finish(flow, request.query_params, callback_url(request))
            role = oidc.role_of(person)
            if role is None:
                logger.warning(
                    "sso: %s holds no group of auth.oidc.role_map (%s)",
                    person.email,
                    ", ".join(person.groups[:20]) or "none",
                )
                raise NoOperatorRole()
            session = await identity.login_sso(
                person.email, person.name, role, ip=client_ip(request), issuer=oidc.issuer
            )
        except IdentityError as exc:
            if not isinstance(exc, NoOperatorRole):
                logger.warning("sso: refused: %s: %s", exc.code, exc.message)
            response = refused(request, exc)
        except Exception as exc:  # noqa: BLE001 - a provider's oddity is a page, never a 500
            # The type only: a message might quote what the provider sent, tokens included.
            logger.error("sso: the callback failed: %s", type(exc).__name__)
            response = refused(request, OidcError())
        else:
            previous = request.cookies.get(REFRESH_COOKIE)
            if previous:  # the browser's earlier session ends: one session per browser
                try:
                    await identity.logout(previous)
                except IdentityError:
                    pass
            set_session(request, session, refresh_ttl=config.auth.refresh_ttl)
            new_csrf(request)
            response = RedirectResponse(flow.target, status_code=303)
        response.delete_cookie(FLOW_COOKIE, path=PREFIX, secure=secure, httponly=True)
        return response

    return router

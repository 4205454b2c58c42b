"""Who is asking, in the portal: the session cookies, transparent refresh, CSRF and roles.

Cookies
    ``hoodrun_session`` holds the identity service's access token (HttpOnly, SameSite=Lax,
    ``Secure`` with ``web.secure_cookies``; it lives as long as the token). ``hoodrun_refresh``
    holds the refresh token, sent only to ``/portal``. A request whose access token is missing
    or expired is refreshed with the refresh token on the way (the refresh rotates both), so a
    session lasts as long as its refresh token; logging out revokes it.

CSRF (double submit)
    ``hoodrun_csrf`` holds a random token, new for every session (made on the first page, made
    again at login and logout). Every form carries it in the field ``csrf`` and htmx sends it as
    ``X-CSRF-Token``; a POST whose token does not equal the cookie's is refused (403) before
    its handler runs. Another site can make a browser send the cookie, never read it.

Errors
    ``PortalError`` and its subclasses become pages: a login that is needed redirects to the
    login page (htmx: ``HX-Redirect``), the rest render ``error.html`` with their status.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy import select

from hoodrun.identity.errors import IdentityError
from hoodrun.identity.roles import permissions_of
from hoodrun.store.audit import AuditOrigin, audit_origin
from hoodrun.store.tables import orgs
from hoodrun.web.render import render

if TYPE_CHECKING:
    from hoodrun.identity import Claims, Session
    from hoodrun.web.context import WebContext

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "REFRESH_COOKIE",
    "SESSION_COOKIE",
    "BadRequest",
    "Forbidden",
    "LoginRequired",
    "PageNotFound",
    "PortalAuth",
    "PortalError",
    "Unavailable",
    "Viewer",
    "client_ip",
    "csrf_given",
    "is_htmx",
    "portal_route_class",
    "safe_next",
]

PORTAL = "/portal"
SESSION_COOKIE = "hoodrun_session"
REFRESH_COOKIE = "hoodrun_refresh"
CSRF_COOKIE = "hoodrun_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
_CSRF_MAX_AGE = 30 * 86400
_REFRESH_REUSE = 30.0  # seconds a refresh's result serves concurrent requests with the old token


# --- errors --------------------------------------------------------------------------------------


class PortalError(Exception):
    """Something went wrong."""

    status = 500
    title = "Something went wrong"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)

    @property
    def message(self) -> str:
        return str(self)


class LoginRequired(PortalError):
    """Log in to continue."""

    status = 401
    title = "Log in"


class BadRequest(PortalError):
    """The request is not valid."""

    status = 400
    title = "Bad request"


class Forbidden(PortalError):
    """Your role does not allow this."""

    status = 403
    title = "Not allowed"


class PageNotFound(PortalError):
    """There is nothing here."""

    status = 404
    title = "Not found"


class Unavailable(PortalError):
    """This part of the portal is not available right now; try again shortly."""

    status = 503
    title = "Unavailable"


# --- who is asking -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrgChoice:
    id: str
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Viewer:
    """The person behind a request: their claims, what they may do, and their orgs."""

    claims: Claims
    permissions: frozenset[str]
    org_name: str | None
    orgs: tuple[OrgChoice, ...] = field(default=())

    @property
    def user_id(self) -> str:
        return self.claims.user_id

    @property
    def actor(self) -> str:
        """What the audit log records as the one who made a change."""
        return f"user:{self.claims.user_id}"

    @property
    def role(self) -> str:
        return ", ".join(self.claims.roles) or (self.claims.platform_role or "none")

    @property
    def org_id(self) -> str:
        """The session's org; ``Forbidden`` when the user belongs to none."""
        if self.claims.org_id is None:
            raise Forbidden("You belong to no org yet: ask an admin of one to invite you.")
        return self.claims.org_id

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def permissions(claims: Claims) -> frozenset[str]:
    """The role(s) in the session's org, plus an operator's platform role."""
    roles = list(claims.roles)
    if claims.platform_role:
        roles.append(claims.platform_role)
    return permissions_of(roles)


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a portal or control-center path only (never another
    site)."""
    if (
        value
        and value.startswith((PORTAL + "/", "/control"))
        and not value.startswith("//")
        and "\\" not in value
        and all(ch.isprintable() for ch in value)
    ):
        return value
    return PORTAL + "/keys"


class _Refresher:
    """One refresh per refresh token at a time in this process: requests that arrive together
    with the same expired session (two tabs, a page and its htmx call) share the result instead
    of presenting the old token twice, which the identity service takes as theft and answers
    by ending the session."""

    def __init__(self, refresh: Callable[..., Awaitable[Session]]) -> None:
        self._refresh = refresh
        self._locks: dict[str, asyncio.Lock] = {}
        self._recent: dict[str, tuple[float, Session]] = {}

    async def __call__(self, token: str, *, ip: str | None) -> Session:
        key = hashlib.sha256(token.encode()).hexdigest()
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                now = time.monotonic()
                recent = self._recent.get(key)
                if recent is not None and recent[0] > now:
                    return recent[1]
                session = await self._refresh(token, ip=ip)
                self._recent[key] = (now + _REFRESH_REUSE, session)
                return session
        finally:
            if not lock.locked():
                self._locks.pop(key, None)
            now = time.monotonic()
            for stale in [k for k, (until, _) in self._recent.items() if until <= now]:
                del self._recent[stale]


class PortalAuth:
    """Resolves the viewer of a request (a FastAPI dependency) and sets or clears the session
    cookies; ``require(permission)`` is a dependency that also checks a permission."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self._refresh = _Refresher(ctx.identity.refresh)

    async def viewer(self, request: Request) -> Viewer:
        found: Viewer | None = getattr(request.state, "viewer", None)
        if found is not None:
            return found
        claims = await self._claims(request)
        viewer = await self._viewer(claims)
        request.state.viewer = viewer
        return viewer

    def require(
        self, permission: str, doing: str
    ) -> Callable[[Request], Coroutine[Any, Any, Viewer]]:
        """A dependency: the viewer, who must hold ``permission`` (``doing`` says what for)."""

        async def check(request: Request) -> Viewer:
            viewer = await self.viewer(request)
            viewer.org_id  # noqa: B018 - raises Forbidden without an org
            if not viewer.can(permission):
                raise Forbidden(
                    f"Your role in {viewer.org_name or 'this org'} ({viewer.role}) cannot "
                    f"{doing}: it needs the permission {permission}. Ask an admin of the org."
                )
            return viewer

        return check

    async def _claims(self, request: Request) -> Claims:
        access = request.cookies.get(SESSION_COOKIE)
        if access:
            try:
                # Not only the signature and expiry: the session must still be open, so a
                # logout (or a reset password) ends the pages at once.
                return await self.ctx.identity.authenticate(access)
            except IdentityError:
                pass  # expired, or its session ended: the refresh below decides
        refresh = request.cookies.get(REFRESH_COOKIE)
        if not refresh:
            raise LoginRequired()
        try:
            session = await self._refresh(refresh, ip=client_ip(request))
        except IdentityError as exc:
            clear_session(request)
            raise LoginRequired(exc.message) from None
        set_session(request, session, refresh_ttl=self.ctx.config.auth.refresh_ttl)
        return session.claims

    async def _viewer(self, claims: Claims) -> Viewer:
        ids = set(claims.orgs) | ({claims.org_id} if claims.org_id else set())
        names: dict[str, str] = {}
        if ids:
            async with self.ctx.store.connect() as conn:
                rows = await conn.execute(select(orgs.c.id, orgs.c.name).where(orgs.c.id.in_(ids)))
                names = {row.id: row.name for row in rows}
        choices = tuple(
            sorted(
                (OrgChoice(org, names.get(org, org), role) for org, role in claims.orgs.items()),
                key=lambda choice: choice.name.lower(),
            )
        )
        org_name = names.get(claims.org_id) if claims.org_id else None
        return Viewer(claims, permissions(claims), org_name, choices)


# --- cookies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cookie:
    name: str
    value: str | None  # None: delete
    path: str
    max_age: int | None = None


def _pending(request: Request) -> list[_Cookie]:
    cookies: list[_Cookie] | None = getattr(request.state, "portal_cookies", None)
    if cookies is None:
        cookies = request.state.portal_cookies = []
    return cookies


def set_session(request: Request, session: Session, *, refresh_ttl: int) -> None:
    """Hand the browser a new session (after login, refresh or an org switch)."""
    cookies = _pending(request)
    cookies.append(_Cookie(SESSION_COOKIE, session.access_token, "/", session.expires_in))
    cookies.append(_Cookie(REFRESH_COOKIE, session.refresh_token, PORTAL, refresh_ttl))


def clear_session(request: Request) -> None:
    cookies = _pending(request)
    cookies.append(_Cookie(SESSION_COOKIE, None, "/"))
    cookies.append(_Cookie(REFRESH_COOKIE, None, PORTAL))


def new_csrf(request: Request) -> str:
    """A new CSRF token for the session starting (login) or ending (logout)."""
    token = secrets.token_urlsafe(32)
    request.state.csrf = token
    _pending(request).append(_Cookie(CSRF_COOKIE, token, PORTAL, _CSRF_MAX_AGE))
    return token


async def csrf_given(request: Request) -> str:
    """The form token a POST carries: the ``X-CSRF-Token`` header, else the form's field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def portal_route_class(*, secure_cookies: bool) -> type[APIRoute]:
    """The portal's routes: CSRF checked on POST, cookies applied, errors rendered as pages."""

    class PortalRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def run(request: Request) -> Response:
                # Audit rows written while serving carry the client's address (unless the app
                # already opened the request's origin).
                origin = None
                if audit_origin.get() is None:
                    origin = audit_origin.set(AuditOrigin(ip=client_ip(request)))
                try:
                    return await serve(request)
                finally:
                    if origin is not None:
                        audit_origin.reset(origin)

            async def serve(request: Request) -> Response:
                cookie = request.cookies.get(CSRF_COOKIE)
                if cookie:
                    request.state.csrf = cookie
                else:
                    new_csrf(request)
                try:
                    if request.method == "POST":
                        given = await csrf_given(request)
                        if not cookie or not hmac.compare_digest(given.encode(), cookie.encode()):
                            raise Forbidden(
                                "This form expired or came from another site (its security "
                                "token does not match). Reload the page and try again."
                            )
                    response = await handler(request)
                except PortalError as exc:
                    response = _error_page(request, exc)
                except IdentityError as exc:
                    error = PortalError(exc.message)
                    error.status, error.title = exc.status, "Not possible"
                    response = _error_page(request, error)
                except RequestValidationError as exc:
                    problems = "; ".join(
                        f"{'.'.join(str(p) for p in err['loc'][1:])}: {err['msg']}"
                        for err in exc.errors()
                    )
                    response = _error_page(request, BadRequest(problems or None))
                for item in _pending(request):
                    if item.value is None:
                        response.delete_cookie(
                            item.name, path=item.path, secure=secure_cookies, httponly=True
                        )
                    else:
                        response.set_cookie(
                            item.name,
                            item.value,
                            max_age=item.max_age,
                            path=item.path,
                            secure=secure_cookies,
                            httponly=True,
                            samesite="lax",
                        )
                return response

            return run

    return PortalRoute


def _error_page(request: Request, exc: PortalError) -> Response:
    if isinstance(exc, LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        login = f"{PORTAL}/login"
        if request.method == "GET" and target.startswith(PORTAL + "/"):
            login += f"?next={quote(target, safe='/')}"
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": login})
        return RedirectResponse(login, status_code=303)
    if is_htmx(request):  # shown in place of the part that was to change
        return render(request, "portal/_error.html", status=exc.status, error=exc)
    return render(request, "error.html", status=exc.status, error=exc)

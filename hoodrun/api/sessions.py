"""The sessions API (``/auth/v1``): sign up, verify the address, log in, refresh, log out,
reset a forgotten password, and who am I. JSON in and out.

::

    POST /auth/v1/signup            {email, password, name?, org_name?}     201 {user, session}
    POST /auth/v1/verify            {token}                                 200 the user
    POST /auth/v1/verify/resend     {email}                                 202
    POST /auth/v1/login             {email, password, org_id?}              200 tokens
    POST /auth/v1/refresh           {refresh_token, org_id?}                200 tokens (rotated)
    POST /auth/v1/logout            {refresh_token}                         204
    POST /auth/v1/password/forgot   {email}                                 202 (always)
    POST /auth/v1/password/reset    {token, password}                       204
    POST /auth/v1/password/change   {current_password, password}  Bearer    204
    GET  /auth/v1/me                                               Bearer    200 claims + orgs

``session`` in the sign-up answer is ``null`` while ``auth.require_verified_email`` holds: no
token before the address is verified. Errors are ``{"error": {"code", "message"}}`` rendered by
:func:`identity_error_handler` (which the app registers for ``IdentityError``): 400 weak password
or bad input, 401 wrong credentials or token, 403 unverified or disabled, 409 email taken, 429
too many failed logins (with ``Retry-After``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from hoodrun.api.models import ErrorOut
from hoodrun.identity import Claims, IdentityError, IdentityService, InvalidToken, Session, User

__all__ = ["identity_error_handler", "sessions_router"]

_EMAIL = Field(max_length=320, description="The account's email address.")
_PASSWORD = Field(min_length=1, max_length=1024, repr=False)
_TOKEN = Field(min_length=1, max_length=512, repr=False)
_ORG = Field(default=None, max_length=32, description="The org the session acts in (org_...).")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignupRequest(_Request):
    email: str = _EMAIL
    password: str = _PASSWORD
    name: str = Field(default="", max_length=128)
    org_name: str | None = Field(
        default=None, max_length=64, description="The new org's name (default: from the email)."
    )


class TokenRequest(_Request):
    token: str = Field(min_length=1, max_length=512, repr=False, description="From the mail.")


class EmailRequest(_Request):
    email: str = _EMAIL


class LoginRequest(_Request):
    email: str = _EMAIL
    password: str = _PASSWORD
    org_id: str | None = _ORG


class RefreshRequest(_Request):
    refresh_token: str = _TOKEN
    org_id: str | None = _ORG


class LogoutRequest(_Request):
    refresh_token: str = _TOKEN


class ResetRequest(_Request):
    token: str = _TOKEN
    password: str = _PASSWORD


class ChangePasswordRequest(_Request):
    current_password: str = _PASSWORD
    password: str = _PASSWORD


class UserOut(BaseModel):
    id: str
    email: str
    name: str
    email_verified: bool
    platform_role: str | None
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            email_verified=user.email_verified,
            platform_role=user.platform_role,
            disabled=user.disabled,
            created_at=user.created_at,
        )


class TokenOut(BaseModel):
    access_token: str = Field(
        repr=False, description="A JWT (HS256); send it as Authorization: Bearer."
    )
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the scheme's name)
    expires_in: int = Field(description="Seconds the access token lives.")
    refresh_token: str = Field(
        repr=False, description="Spent by its use: keep the new one each time."
    )

    @classmethod
    def of(cls, session: Session) -> TokenOut:
        return cls(
            access_token=session.access_token,
            expires_in=session.expires_in,
            refresh_token=session.refresh_token,
        )


class SignupOut(BaseModel):
    user: UserOut
    session: TokenOut | None = Field(
        description="Tokens right away only when verified addresses are not required."
    )


class MembershipOut(BaseModel):
    org_id: str
    org_name: str
    role: str
    created_at: datetime


class MeOut(BaseModel):
    """The access token's claims, and the user's memberships."""

    user_id: str
    email: str
    name: str
    org_id: str | None
    roles: list[str]
    orgs: dict[str, str]
    platform_role: str | None
    scopes: list[str]
    tier: str | None
    session_id: str
    expires_at: datetime
    memberships: list[MembershipOut]


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


_bearer = HTTPBearer(auto_error=False, description="An access token from /auth/v1/login.")


async def identity_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """``IdentityError`` as the admin API's errors: ``{"error": {"code", "message"}}``."""
    if not isinstance(exc, IdentityError):  # registered for IdentityError only
        raise exc
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    body = {"error": {"code": exc.code, "message": exc.message}}
    return JSONResponse(body, status_code=exc.status, headers=headers or None)


def sessions_router(identity: IdentityService) -> APIRouter:
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 429)
    }
    router = APIRouter(prefix="/auth/v1", tags=["sessions"], responses=errors)

    async def claims_of(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Claims:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise InvalidToken("send Authorization: Bearer <access token>")
        return await identity.authenticate(credentials.credentials)

    # A default, not an Annotated alias: the alias would be local, and the annotations (strings
    # here) are resolved in the module's namespace.
    caller_of = Depends(claims_of)

    @router.post("/signup", status_code=status.HTTP_201_CREATED)
    async def signup(body: SignupRequest, request: Request) -> SignupOut:
        ip = _client(request)
        user = await identity.sign_up(
            body.email, body.password, name=body.name, org_name=body.org_name, ip=ip
        )
        session = None
        if not identity.config.auth.require_verified_email:
            session = TokenOut.of(await identity.login(user.email, body.password, ip=ip))
        return SignupOut(user=UserOut.of(user), session=session)

    @router.post("/verify")
    async def verify(body: TokenRequest) -> UserOut:
        return UserOut.of(await identity.verify_email(body.token))

    @router.post("/verify/resend", status_code=status.HTTP_202_ACCEPTED, response_class=Response)
    async def resend(body: EmailRequest) -> Response:
        await identity.resend_verification(body.email)
        return Response(status_code=status.HTTP_202_ACCEPTED)

    @router.post("/login")
    async def login(body: LoginRequest, request: Request) -> TokenOut:
        session = await identity.login(
            body.email, body.password, ip=_client(request), org_id=body.org_id
        )
        return TokenOut.of(session)

    @router.post("/refresh")
    async def refresh(body: RefreshRequest, request: Request) -> TokenOut:
        session = await identity.refresh(
            body.refresh_token, org_id=body.org_id, ip=_client(request)
        )
        return TokenOut.of(session)

    @router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
    async def logout(body: LogoutRequest) -> Response:
        await identity.logout(body.refresh_token)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post("/password/forgot", status_code=status.HTTP_202_ACCEPTED, response_class=Response)
    async def forgot(body: EmailRequest, request: Request) -> Response:
        await identity.request_password_reset(body.email, ip=_client(request))
        return Response(status_code=status.HTTP_202_ACCEPTED)

    @router.post("/password/reset", status_code=status.HTTP_204_NO_CONTENT)
    async def reset(body: ResetRequest) -> Response:
        await identity.reset_password(body.token, body.password)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.post("/password/change", status_code=status.HTTP_204_NO_CONTENT)
    async def change(
        body: ChangePasswordRequest, request: Request, caller: Claims = caller_of
    ) -> Response:
        await identity.change_password(
            caller.user_id,
            body.current_password,
            body.password,
            keep_session=caller.session_id,
            ip=_client(request),
        )
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/me")
    async def me(caller: Claims = caller_of) -> MeOut:
        memberships = await identity.memberships(caller.user_id)
        return MeOut(
            user_id=caller.user_id,
            email=caller.email,
            name=caller.name,
            org_id=caller.org_id,
            roles=list(caller.roles),
            orgs=dict(caller.orgs),
            platform_role=caller.platform_role,
            scopes=list(caller.scopes),
            tier=caller.tier,
            session_id=caller.session_id,
            expires_at=caller.expires_at,
            memberships=[
                MembershipOut(
                    org_id=m.org_id, org_name=m.org_name, role=m.role, created_at=m.created_at
                )
                for m in memberships
            ],
        )

    return router

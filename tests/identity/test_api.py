"""The sessions API (``/auth/v1``) in process over the real store (SQLite and PostgreSQL) and a
real SMTP server; ``IdentityError`` mapped as the admin API maps it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from hoodrun.api.sessions import identity_error_handler, sessions_router
from hoodrun.config import Config
from hoodrun.identity import IdentityError, IdentityService
from hoodrun.store import Store, read_audit
from tests._smtp import SmtpSink
from tests._stores import FakeClock
from tests.identity.support import PASSWORD, SECRET, link_token, make_identity

ADA = "ada@example.com"


def build_app(identity: IdentityService) -> FastAPI:
    app = FastAPI()
    app.add_exception_handler(IdentityError, identity_error_handler)
    app.include_router(sessions_router(identity))
    return app


@pytest.fixture
async def client(identity: IdentityService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(identity), client=("198.51.100.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


async def test_the_whole_session_over_http(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, store: Store
) -> None:
    answer = await client.post(
        "/auth/v1/signup", json={"email": ADA, "password": PASSWORD, "name": "Ada"}
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["session"] is None  # no token before the address is verified
    assert body["user"]["email"] == ADA and body["user"]["email_verified"] is False
    user_id = body["user"]["id"]
    token = link_token(await smtp_sink.wait_for(ADA), "verify")

    login = {"email": ADA, "password": PASSWORD}
    error(await client.post("/auth/v1/login", json=login), 403, "email_not_verified")
    verified = await client.post("/auth/v1/verify", json={"token": token})
    assert verified.status_code == 200 and verified.json()["email_verified"] is True
    error(await client.post("/auth/v1/verify", json={"token": token}), 400, "invalid_link")

    answer = await client.post("/auth/v1/login", json=login)
    assert answer.status_code == 200, answer.text
    tokens = answer.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == 3600
    claims = jwt.decode(
        tokens["access_token"],
        SECRET,
        algorithms=["HS256"],
        options={"verify_iat": False, "verify_exp": False},
    )
    assert claims["sub"] == user_id and claims["roles"] == ["admin"] and claims["iss"] == "hoodrun"

    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    me = await client.get("/auth/v1/me", headers=bearer)
    assert me.status_code == 200, me.text
    mine = me.json()
    assert mine["user_id"] == user_id and mine["org_id"] == claims["org"]
    assert mine["roles"] == ["admin"] and mine["scopes"] == claims["scopes"]
    assert [m["org_id"] for m in mine["memberships"]] == [claims["org"]]
    assert mine["memberships"][0]["org_name"] == "ada"
    error(await client.get("/auth/v1/me"), 401, "invalid_token")
    bad = await client.get("/auth/v1/me", headers={"Authorization": "Bearer nope"})
    error(bad, 401, "invalid_token")
    assert bad.headers["www-authenticate"] == "Bearer"

    renewed = await client.post("/auth/v1/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert renewed.status_code == 200 and renewed.json()["refresh_token"] != tokens["refresh_token"]
    reused = await client.post("/auth/v1/refresh", json={"refresh_token": tokens["refresh_token"]})
    error(reused, 401, "invalid_token")
    new_refresh = renewed.json()["refresh_token"]
    error(
        await client.post("/auth/v1/refresh", json={"refresh_token": new_refresh}),
        401,
        "invalid_token",
    )
    error(await client.get("/auth/v1/me", headers=bearer), 401, "invalid_token")  # session ended

    again = (await client.post("/auth/v1/login", json=login)).json()
    out = await client.post("/auth/v1/logout", json={"refresh_token": again["refresh_token"]})
    assert out.status_code == 204 and out.content == b""
    error(
        await client.post("/auth/v1/refresh", json={"refresh_token": again["refresh_token"]}),
        401,
        "invalid_token",
    )

    async with store.connect() as conn:
        signup = [e for e in await read_audit(conn, target_id=user_id) if e.action == "user.signup"]
    assert signup[0].ip == "198.51.100.9" and signup[0].actor == f"user:{user_id}"


async def test_password_reset_and_change_over_http(
    client: httpx.AsyncClient, identity: IdentityService, smtp_sink: SmtpSink
) -> None:
    await client.post("/auth/v1/signup", json={"email": ADA, "password": PASSWORD})
    await client.post(
        "/auth/v1/verify", json={"token": link_token(await smtp_sink.wait_for(ADA), "verify")}
    )
    before = (await client.post("/auth/v1/login", json={"email": ADA, "password": PASSWORD})).json()
    for email in [ADA, "nobody@example.com", "not an address"]:
        answer = await client.post("/auth/v1/password/forgot", json={"email": email})
        assert answer.status_code == 202 and answer.content == b""
    token = link_token(await smtp_sink.wait_for(ADA, count=2), "reset")
    weak = await client.post("/auth/v1/password/reset", json={"token": token, "password": "short"})
    assert "at least 10 characters" in error(weak, 400, "weak_password")
    reset = {"token": token, "password": "the new passphrase"}
    assert (await client.post("/auth/v1/password/reset", json=reset)).status_code == 204
    error(await client.post("/auth/v1/password/reset", json=reset), 400, "invalid_link")
    stale = await client.post("/auth/v1/refresh", json={"refresh_token": before["refresh_token"]})
    error(stale, 401, "invalid_token")

    tokens = (
        await client.post("/auth/v1/login", json={"email": ADA, "password": "the new passphrase"})
    ).json()
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    change = {"current_password": "wrong one!", "password": "a third passphrase"}
    error(
        await client.post("/auth/v1/password/change", json=change, headers=bearer),
        401,
        "bad_credentials",
    )
    change["current_password"] = "the new passphrase"
    assert (
        await client.post("/auth/v1/password/change", json=change, headers=bearer)
    ).status_code == 204
    assert (
        await client.get("/auth/v1/me", headers=bearer)
    ).status_code == 200  # this session stays


async def test_errors_over_http(
    client: httpx.AsyncClient, smtp_sink: SmtpSink, store: Store, config: Config, clock: FakeClock
) -> None:
    weak = await client.post("/auth/v1/signup", json={"email": ADA, "password": ADA})
    assert error(weak, 400, "weak_password") == "password: must not be your email address"
    assert (
        await client.post("/auth/v1/signup", json={"email": ADA, "password": PASSWORD})
    ).status_code == 201
    taken = await client.post("/auth/v1/signup", json={"email": ADA, "password": PASSWORD})
    error(taken, 409, "email_taken")
    extra = await client.post("/auth/v1/login", json={"email": ADA, "password": "x", "admin": True})
    assert extra.status_code == 422

    # Unknown email and wrong password answer alike; then the throttle, with Retry-After.
    unknown = await client.post(
        "/auth/v1/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    wrong = await client.post("/auth/v1/login", json={"email": ADA, "password": "wrong password"})
    assert unknown.json() == wrong.json() and unknown.status_code == wrong.status_code == 401
    for _ in range(4):
        await client.post("/auth/v1/login", json={"email": ADA, "password": "wrong password"})
    throttled = await client.post("/auth/v1/login", json={"email": ADA, "password": PASSWORD})
    error(throttled, 429, "too_many_attempts")
    assert 0 < int(throttled.headers["retry-after"]) <= 900

    # Without required verification, sign-up answers with tokens at once.
    relaxed = make_identity(store, config, clock, require_verified_email=False)
    transport = httpx.ASGITransport(app=build_app(relaxed))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        answer = await http.post(
            "/auth/v1/signup", json={"email": "bob@example.com", "password": PASSWORD}
        )
    assert answer.status_code == 201 and answer.json()["session"]["token_type"] == "bearer"


def test_the_openapi_schema_is_exact(identity: IdentityService) -> None:
    schema: dict[str, Any] = build_app(identity).openapi()
    paths = schema["paths"]
    assert sorted(paths) == [
        "/auth/v1/login",
        "/auth/v1/logout",
        "/auth/v1/me",
        "/auth/v1/password/change",
        "/auth/v1/password/forgot",
        "/auth/v1/password/reset",
        "/auth/v1/refresh",
        "/auth/v1/signup",
        "/auth/v1/verify",
        "/auth/v1/verify/resend",
    ]
    components = schema["components"]["schemas"]
    assert components["LoginRequest"]["additionalProperties"] is False
    assert set(components["TokenOut"]["required"]) == {
        "access_token",
        "expires_in",
        "refresh_token",
    }
    login = paths["/auth/v1/login"]["post"]["responses"]
    assert login["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/TokenOut")
    assert login["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    # Empty answers are declared without a body.
    for path, code in [("/auth/v1/password/forgot", "202"), ("/auth/v1/logout", "204")]:
        assert "content" not in paths[path]["post"]["responses"][code]

"""Operators' single sign-on against a real OpenID Connect provider run here: a small Starlette
app on 127.0.0.1 (uvicorn in a thread) with discovery, /authorize (approving its one test user at
once), /token (checking the code, the PKCE verifier and the client's secret; an RS256 ID token
signed with a key made here) and /jwks. The portal is driven with httpx, each redirect followed
by hand: the browser's cookies stay with the portal's client, the provider is called over the
network. Each test runs on SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from hoodrun.api.sso import FLOW_COOKIE, sso_router
from hoodrun.config import Config
from hoodrun.devnet import free_port
from hoodrun.identity import BadCredentials, IdentityService
from hoodrun.identity.config import OidcConfig
from hoodrun.identity.oidc import OidcClient
from hoodrun.keys.service import KeyService
from hoodrun.store import Store
from hoodrun.store.tables import audit_log, users
from hoodrun.web.context import WebContext
from hoodrun.web.control import control_router
from hoodrun.web.portal import portal_router
from tests._stores import FakeClock
from tests.identity.support import FAST_AUTH, PASSWORD, make_identity

ORIGIN = "http://portal.test"
CALLBACK = f"{ORIGIN}/portal/sso/callback"
CLIENT_ID = "hoodrun-portal"
CLIENT_SECRET = "provider-client-secret-" + "s" * 24
BROWSER_IP = "203.0.113.9"
ROLE_MAP = {
    "hoodrun-admins": "admin",
    "hoodrun-ops": "ops",
    "hoodrun-billing": "billing",
    "hoodrun-viewers": "viewer",
}


# --- the provider --------------------------------------------------------------------------------


@dataclass
class Provider:
    """A minimal OpenID Connect provider; ``tamper`` makes its next ID tokens wrong on purpose."""

    key: RSAKey
    other_key: RSAKey
    issuer: str = ""
    email: str = "grace@ops.example"
    groups: list[str] = field(default_factory=lambda: ["hoodrun-ops"])
    email_verified: Any = True
    deny: bool = False
    token_down: bool = False
    tamper: set[str] = field(default_factory=set)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    authorize_queries: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.email, self.groups, self.email_verified = "grace@ops.example", ["hoodrun-ops"], True
        self.deny = self.token_down = False
        self.tamper.clear()
        self.codes.clear()
        self.authorize_queries.clear()
        self.token_requests.clear()
        self.issued.clear()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
                Route("/jwks", self.jwks),
            ]
        )

    async def discovery(self, _: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "scopes_supported": ["openid", "email", "profile", "groups"],
            }
        )

    async def jwks(self, _: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: Request) -> Response:
        query = dict(request.query_params)
        self.authorize_queries.append(query)
        problems = [
            query.get("client_id") != CLIENT_ID,
            query.get("response_type") != "code",
            query.get("redirect_uri") != CALLBACK,
            "openid" not in query.get("scope", "").split(),
            query.get("code_challenge_method") != "S256",
            not query.get("code_challenge"),
            not query.get("state"),
            not query.get("nonce"),
        ]
        if any(problems):
            return JSONResponse({"error": "invalid_request", "problems": problems}, 400)
        back = {"state": query["state"]}
        if self.deny:
            back["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = query  # the test user approves at once
            back["code"] = code
        return RedirectResponse(f"{query['redirect_uri']}?{urlencode(back)}", status_code=302)

    async def token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append(form)
        if self.token_down:
            return Response("upstream connect error", 503, media_type="text/plain")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        client = base64.b64decode(credentials).decode() if scheme == "Basic" else ""
        if client != f"{CLIENT_ID}:{CLIENT_SECRET}":
            return JSONResponse({"error": "invalid_client"}, 401)
        asked = self.codes.pop(form.get("code", ""), None)  # a code works once
        if (
            asked is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != asked["redirect_uri"]
        ):
            return JSONResponse({"error": "invalid_grant"}, 400)
        digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != asked["code_challenge"]:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "user-" + self.email.split("@")[0],
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "nonce": asked["nonce"],
            "email": self.email,
            "email_verified": self.email_verified,
            "name": "Grace Hopper",
            "groups": list(self.groups),
        }
        key, kid = self.key, self.key.kid
        if "nonce" in self.tamper:
            claims["nonce"] = "another-" + asked["nonce"]
        if "expired" in self.tamper:
            claims["exp"], claims["iat"] = now - 600, now - 900
        if "audience" in self.tamper:
            claims["aud"] = "another-client"
        if "issuer" in self.tamper:
            claims["iss"] = "https://idp.attacker.example"
        if "other_key" in self.tamper:  # another key, claiming to be the provider's
            key = self.other_key
        if "other_kid" in self.tamper:  # another key, under a key id of its own
            key, kid = self.other_key, "attacker-key"
        id_token = jwt.encode({"alg": "RS256", "kid": kid}, claims, key)
        self.issued.append(id_token)
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )


class ServerThread:
    """An ASGI app served by uvicorn on a free port of 127.0.0.1, in a thread of its own."""

    def __init__(self, app: Starlette) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "provider did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def running_provider() -> Iterator[Provider]:
    key = RSAKey.generate_key(2048, parameters={"kid": "provider-1", "use": "sig", "alg": "RS256"})
    other = RSAKey.generate_key(2048, parameters={"kid": "provider-1", "use": "sig"})
    provider = Provider(key=key, other_key=other)
    with ServerThread(provider.app()) as url:
        provider.issuer = url
        yield provider


@pytest.fixture
def provider(running_provider: Provider) -> Provider:
    running_provider.reset()
    return running_provider


# --- the portal ----------------------------------------------------------------------------------


def oidc_config(issuer: str, **extra: Any) -> OidcConfig:
    return OidcConfig(
        enabled=True,
        issuer=issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        scopes=("openid", "email", "profile", "groups"),
        role_map=ROLE_MAP,
        **extra,
    )


@dataclass
class Site:
    app: FastAPI
    identity: IdentityService
    store: Store
    browser: httpx.AsyncClient
    """The operator's browser: the portal's cookies."""
    network: httpx.AsyncClient
    """The same browser's calls to the provider."""

    async def sign_on(self, next: str | None = None) -> httpx.Response:
        """The login button, the provider's approval, and the callback's answer."""
        start = await self.browser.get("/portal/sso/login", params={"next": next} if next else None)
        assert start.status_code == 303, start.text
        approved = await self.network.get(start.headers["location"])
        assert approved.status_code == 302, approved.text
        return await self.browser.get(approved.headers["location"])

    async def user_row(self, email: str) -> Any:
        async with self.store.connect() as conn:
            return (await conn.execute(select(users).where(users.c.email == email))).first()

    async def audit(self, *actions: str) -> list[Any]:
        async with self.store.connect() as conn:
            stmt = select(audit_log).where(audit_log.c.action.in_(actions))
            return list((await conn.execute(stmt.order_by(audit_log.c.id))).mappings())


async def open_site(
    store: Store, config: Config, clock: FakeClock, oidc: OidcClient
) -> tuple[Site, list[httpx.AsyncClient]]:
    auth = FAST_AUTH.model_copy(update={"oidc": oidc_config(oidc.issuer)})
    config = config.model_copy(update={"auth": auth})
    identity = make_identity(store, config, clock)
    ctx = WebContext(
        config=config,
        store=store,
        identity=identity,
        keys=KeyService(store, config),
        reports=lambda: None,
    )
    app = FastAPI()
    app.include_router(sso_router(identity, oidc))
    app.include_router(portal_router(ctx))
    app.include_router(control_router(ctx))
    browser = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(BROWSER_IP, 4000)), base_url=ORIGIN
    )
    network = httpx.AsyncClient(timeout=10)
    return Site(app, identity, store, browser, network), [browser, network]


@pytest.fixture
async def site(
    store: Store, config: Config, clock: FakeClock, provider: Provider
) -> AsyncIterator[Site]:
    async with OidcClient(oidc_config(provider.issuer)) as oidc:
        found, clients = await open_site(store, config, clock, oidc)
        try:
            yield found
        finally:
            for client in clients:
                await client.aclose()


def refused(page: httpx.Response, status: int, *words: str) -> None:
    """A page (never a 500) that says why, and no session handed out."""
    assert page.status_code == status, page.text
    assert page.headers["content-type"].startswith("text/html")
    for word in words:
        assert word in page.text, page.text
    assert "hoodrun_session" not in page.headers.get("set-cookie", "")


# --- tests ---------------------------------------------------------------------------------------


async def test_the_login_page_offers_single_sign_on(site: Site) -> None:
    page = await site.browser.get("/portal/login", params={"next": "/control/jobs"})
    assert page.status_code == 200
    assert 'id="sso-login"' in page.text and "Log in with single sign-on" in page.text
    assert "/portal/sso/login?next=/control/jobs" in page.text


async def test_first_sign_on_makes_an_operator_with_the_mapped_role(
    site: Site, provider: Provider
) -> None:
    start = await site.browser.get("/portal/sso/login")
    assert start.status_code == 303
    authorize = urlsplit(start.headers["location"])
    assert f"{authorize.scheme}://{authorize.netloc}" == provider.issuer
    query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    assert query["code_challenge_method"] == "S256" and query["nonce"] and query["state"]

    approved = await site.network.get(start.headers["location"])
    done = await site.browser.get(approved.headers["location"])
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/control"
    assert "hoodrun_session" in site.browser.cookies and "hoodrun_refresh" in site.browser.cookies
    assert FLOW_COOKIE not in site.browser.cookies  # spent
    # The provider saw the PKCE verifier and the client's secret (it refuses otherwise).
    assert provider.token_requests[0]["code_verifier"]

    control = await site.browser.get("/control")
    assert control.status_code == 200, control.text
    claims = site.identity.decode(site.browser.cookies["hoodrun_session"])
    assert claims.platform_role == "ops" and claims.email == "grace@ops.example"

    row = await site.user_row("grace@ops.example")
    assert row.platform_role == "ops" and row.password_hash is None
    assert row.email_verified_at is not None and row.name == "Grace Hopper"
    with pytest.raises(BadCredentials):  # no password: single sign-on only
        await site.identity.login("grace@ops.example", PASSWORD)
    [created] = await site.audit("user.create", "user.platform_role", "user.verify")
    assert created["action"] == "user.create" and created["actor"] == "sso"
    assert created["target_id"] == row.id and created["ip"] == BROWSER_IP
    assert created["details"]["issuer"] == provider.issuer
    assert created["after"]["platform_role"] == "ops"


async def test_sign_on_returns_to_the_control_page_asked_for(site: Site) -> None:
    done = await site.sign_on(next="/control/jobs")
    assert done.status_code == 303 and done.headers["location"] == "/control/jobs"
    elsewhere = await site.sign_on(next="https://evil.example/control")
    assert elsewhere.headers["location"] == "/control"


async def test_the_role_follows_the_groups(site: Site, provider: Provider) -> None:
    assert (await site.sign_on()).status_code == 303
    provider.groups = ["staff", "hoodrun-admins", "hoodrun-ops"]  # the first of role_map wins
    assert (await site.sign_on()).status_code == 303
    assert (await site.user_row("grace@ops.example")).platform_role == "admin"
    assert site.identity.decode(site.browser.cookies["hoodrun_session"]).platform_role == "admin"
    assert (await site.sign_on()).status_code == 303  # unchanged: no audit row
    provider.groups = ["hoodrun-viewers"]
    assert (await site.sign_on()).status_code == 303
    assert (await site.user_row("grace@ops.example")).platform_role == "viewer"
    rows = await site.audit("user.create", "user.platform_role")
    assert [r["action"] for r in rows] == [
        "user.create",
        "user.platform_role",
        "user.platform_role",
    ]
    assert [(r["before"], r["after"]) for r in rows[1:]] == [
        ({"platform_role": "ops"}, {"platform_role": "admin"}),
        ({"platform_role": "admin"}, {"platform_role": "viewer"}),
    ]
    assert all(r["actor"] == "sso" and r["ip"] == BROWSER_IP for r in rows)


async def test_groups_that_map_to_no_role_are_refused(site: Site, provider: Provider) -> None:
    provider.groups = ["staff", "customers"]
    page = await site.sign_on()
    refused(page, 403, "Single sign-on is for operators", "Customers log in")
    assert await site.user_row("grace@ops.example") is None
    assert await site.audit("user.create") == []


async def test_a_tampered_state_is_refused(site: Site, provider: Provider) -> None:
    start = await site.browser.get("/portal/sso/login")
    approved = await site.network.get(start.headers["location"])
    callback = urlsplit(approved.headers["location"])
    query = {k: v[0] for k, v in parse_qs(callback.query).items()}
    forged = {**query, "state": "forged-" + query["state"]}
    page = await site.browser.get(f"{callback.path}?{urlencode(forged)}")
    refused(page, 400, "state differs")
    # The flow cookie is spent: the genuine answer after it is refused too.
    again = await site.browser.get(f"{callback.path}?{callback.query}")
    refused(again, 400, "start again")
    assert provider.token_requests == []  # no code was ever exchanged
    assert await site.user_row("grace@ops.example") is None


async def test_a_forged_flow_cookie_is_refused(site: Site) -> None:
    start = await site.browser.get("/portal/sso/login")
    approved = await site.network.get(start.headers["location"])
    body, _, signature = start.cookies[FLOW_COOKIE].partition(".")
    site.browser.cookies.set(FLOW_COOKIE, f"{body}.{signature[::-1]}", path="/portal/sso")
    refused(await site.browser.get(approved.headers["location"]), 400, "start again")


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("nonce", "nonce"),
        ("other_key", "signature"),
        ("other_kid", "attacker-key"),
        ("expired", "exp"),
        ("audience", "aud"),
        ("issuer", "iss"),
    ],
)
async def test_an_id_token_that_fails_a_check_is_refused(
    site: Site, provider: Provider, tamper: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    provider.tamper = {tamper}
    with caplog.at_level(logging.DEBUG):
        page = await site.sign_on()
    refused(page, 401, "failed a check", reason)
    assert await site.user_row("grace@ops.example") is None
    # Neither the token nor the code reaches the log (httpx logs the test browser's URLs,
    # the callback's code among them: what the platform logs is the rest).
    platform = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    )
    assert "ID token refused" in platform
    assert provider.issued and provider.issued[0] not in caplog.text
    assert provider.token_requests[0]["code"] not in platform
    assert provider.issued[0].split(".")[2] not in page.text


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"email_verified": False}, 403, ("does not vouch",)),
        ({"email_verified": None}, 403, ("does not vouch",)),
        ({"email": "grace@elsewhere.example"}, 403, ("elsewhere.example may not",)),
        ({"deny": True}, 401, ("refused: access_denied",)),
        ({"token_down": True}, 502, ("cannot be reached",)),
    ],
)
async def test_the_provider_must_vouch_for_an_allowed_address_and_answer(
    store: Store,
    config: Config,
    clock: FakeClock,
    provider: Provider,
    change: dict[str, Any],
    status: int,
    words: tuple[str, ...],
) -> None:
    for name, value in change.items():
        setattr(provider, name, value)
    oidc_cfg = oidc_config(provider.issuer, allowed_domains=["OPS.example"])
    async with OidcClient(oidc_cfg) as oidc:
        site, clients = await open_site(store, config, clock, oidc)
        try:
            refused(await site.sign_on(), status, *words)
            assert await site.audit("user.create") == []
        finally:
            for client in clients:
                await client.aclose()


async def test_an_unreachable_provider_is_a_page(
    store: Store, config: Config, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with OidcClient(oidc_config(f"http://127.0.0.1:{free_port()}"), timeout=2) as oidc:
        site, clients = await open_site(store, config, clock, oidc)
        try:
            page = await site.browser.get("/portal/sso/login")
            refused(page, 502, "cannot be reached")
            assert "discovery document" in caplog.text
        finally:
            for client in clients:
                await client.aclose()


async def test_an_unverified_account_of_the_same_address_loses_its_password(
    site: Site,
) -> None:
    """Someone signed up first with the operator's address, without ever proving it theirs: the
    provider's word wins, and their password no longer opens the account."""
    await site.identity.sign_up("grace@ops.example", PASSWORD)
    assert (await site.sign_on()).status_code == 303
    row = await site.user_row("grace@ops.example")
    assert row.password_hash is None and row.email_verified_at is not None
    assert row.platform_role == "ops"
    with pytest.raises(BadCredentials):
        await site.identity.login("grace@ops.example", PASSWORD)
    actions = [r["action"] for r in await site.audit("user.verify", "user.platform_role")]
    assert actions == ["user.verify", "user.platform_role"]


async def test_a_disabled_account_is_refused(site: Site) -> None:
    assert (await site.sign_on()).status_code == 303
    row = await site.user_row("grace@ops.example")
    await site.identity.set_disabled(row.id, True, actor="test")
    site.browser.cookies.clear()
    refused(await site.sign_on(), 403, "disabled")


async def test_the_client_refuses_use_outside_its_context(provider: Provider) -> None:
    oidc = OidcClient(oidc_config(provider.issuer))
    with pytest.raises(RuntimeError, match="not open"):
        await oidc.begin(CALLBACK, target="/control")
    async with oidc:
        url, flow = await oidc.begin(CALLBACK, target="/control")
        assert url.startswith(f"{provider.issuer}/authorize?")
        assert oidc.unseal(oidc.seal(flow)) == flow
    with pytest.raises(RuntimeError, match="closed"):
        oidc.seal(flow)

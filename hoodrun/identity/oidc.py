"""Operators' single sign-on through an OpenID Connect provider (``auth.oidc``): the
authorization code flow with PKCE, its ID token checked here (docs/identity.md).

::

    async with OidcClient(config.auth.oidc) as oidc:
        url, flow = await oidc.begin(redirect_uri, target="/control")   # send the browser to url
        cookie = oidc.seal(flow)                     # state, nonce and PKCE verifier, signed
        ...                                          # the provider sends the browser back
        person = await oidc.finish(oidc.unseal(cookie), callback_params, redirect_uri)
        role = oidc.role_of(person)                  # None: not one of the platform's operators

``finish`` checks the callback's ``state`` against the flow's, swaps the code (with the PKCE
verifier and the client's secret) for tokens, and checks the ID token: its signature by a key
of the provider's JWKS (from its discovery document; fetched again once when a token names a
key it does not hold), ``iss``, ``aud`` (and ``azp``), ``exp``, ``iat`` and ``nonce``; then that
the provider vouches for the address (``email_verified``) and its domain is allowed. Nothing of
a token is ever logged or put into an error's message.

Errors (each an ``IdentityError``, so with a ``code`` and an HTTP ``status``)::

    OidcError                   single sign-on cannot finish (400)
    ├── FlowInvalid             no flow cookie, a forged or expired one, or another state (400)
    ├── ProviderRefused         the provider answered the login or the code with an error (401)
    ├── ProviderUnavailable     the provider cannot be reached or answers nonsense (502)
    ├── TokenRejected           the ID token fails a check: signature, iss, aud, exp, nonce (401)
    └── NotAllowed              the person may not sign on here (403)
        ├── EmailUnverified     no address, or one the provider does not vouch for
        ├── DomainNotAllowed    the address is outside ``allowed_domains``
        └── NoOperatorRole      the roles claim maps to no platform role
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Self

import httpx
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.deprecate import AuthlibDeprecationWarning  # type: ignore[import-untyped]
from authlib.integrations.base_client import OAuthError  # type: ignore[import-untyped]
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from hoodrun.identity.config import OidcConfig
from hoodrun.identity.errors import IdentityError

with warnings.catch_warnings():
    # Newer authlib says, once per process, that it runs on httpx rather than its fork httpx2:
    # httpx is this project's client everywhere, and what is used here works on both.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import (  # type: ignore[import-untyped]
        AsyncOAuth2Client,
    )

__all__ = [
    "FLOW_TTL",
    "DomainNotAllowed",
    "EmailUnverified",
    "Flow",
    "FlowInvalid",
    "NoOperatorRole",
    "NotAllowed",
    "OidcClient",
    "OidcError",
    "Person",
    "ProviderRefused",
    "ProviderUnavailable",
    "TokenRejected",
]

logger = logging.getLogger(__name__)

FLOW_TTL = 600  # seconds from the login button to the provider's answer
METADATA_TTL = 3600.0  # seconds the discovery document and the JWKS are kept
JWKS_REFETCH = 60.0  # at most one fetch a minute for a key id the JWKS lacks
LEEWAY = 60  # seconds of clock skew allowed on exp, iat and nbf
# Signatures by the provider's public keys only: never "none", never a shared secret.
ASYMMETRIC = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip


# --- errors --------------------------------------------------------------------------------------


class OidcError(IdentityError):
    """Single sign-on could not finish; start again from the login page."""

    code = "sso_failed"
    title = "Single sign-on failed"


class FlowInvalid(OidcError):
    """This sign-on expired or was started in another browser; start again from the login page."""

    code = "sso_flow_invalid"


class ProviderRefused(OidcError):
    """The identity provider refused the sign-on."""

    code = "sso_refused"
    status = 401


class ProviderUnavailable(OidcError):
    """The identity provider cannot be reached right now; try again shortly."""

    code = "sso_provider_unavailable"
    status = 502


class TokenRejected(OidcError):
    """The identity provider's answer failed its checks; nobody was logged in."""

    code = "sso_token_rejected"
    status = 401


class NotAllowed(OidcError):
    """Single sign-on is for the platform's operators."""

    code = "sso_not_allowed"
    status = 403
    title = "Single sign-on is for operators"


class EmailUnverified(NotAllowed):
    """The identity provider does not vouch for your email address (email_verified)."""

    code = "sso_email_unverified"


class DomainNotAllowed(NotAllowed):
    """Your email address's domain may not sign on here."""

    code = "sso_domain_not_allowed"


class NoOperatorRole(NotAllowed):
    """Single sign-on is for the platform's operators, and none of your groups at the identity
    provider grants a platform role. Customers log in with their email address and password."""

    code = "sso_no_operator_role"


# --- what travels ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """One sign-on between the login button and the provider's answer (kept in the browser's
    signed cookie, never on the server)."""

    state: str
    nonce: str
    verifier: str
    """The PKCE code verifier (its S256 challenge went to the provider)."""
    target: str
    """Where the browser goes once logged in."""
    expires: int
    """Unix seconds."""


@dataclass(frozen=True, slots=True)
class Person:
    """Whom the provider vouched for."""

    subject: str
    email: str
    name: str
    groups: tuple[str, ...]
    """The values of ``roles_claim``."""


@dataclass(frozen=True, slots=True)
class _Provider:
    authorize_url: str
    token_url: str
    jwks_url: str
    auth_method: str
    algorithms: tuple[str, ...]
    fetched: float  # monotonic


# --- the client ----------------------------------------------------------------------------------


class OidcClient:
    """The provider of ``config``: its metadata and keys (cached), and the code flow.

    An async context manager (it holds an HTTP client): ``begin`` and ``finish`` refuse to run
    before it is opened or after it is closed. ``now`` is the wall clock in Unix seconds (tests
    inject one); ``transport`` replaces the network (tests)."""

    def __init__(
        self,
        config: OidcConfig,
        *,
        now: Callable[[], float] = time.time,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not config.enabled or config.issuer is None:
            raise ValueError("auth.oidc is not enabled")
        self._config = config
        self.issuer = config.issuer
        self._now = now
        self._timeout = timeout
        self._transport = transport
        self._client: Any = None  # AsyncOAuth2Client while open
        self._closed = False
        self._key = b""
        self._provider: _Provider | None = None
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        if self._client is not None or self._closed:
            raise RuntimeError("an OidcClient opens once")
        secret = self._config.client_secret
        if secret is None and self._config.client_secret_file is not None:
            secret = self._config.client_secret_file.read_text().strip()
        if not secret:
            raise ValueError("auth.oidc: the client secret is empty")
        # The flow cookie's key: every api replica has the client secret, so a browser sent
        # out by one may come back to another.
        self._key = hmac.new(secret.encode(), b"hoodrun oidc flow cookie", "sha256").digest()
        self._client = AsyncOAuth2Client(
            client_id=self._config.client_id,
            client_secret=secret,
            scope=" ".join(self._config.scopes),
            code_challenge_method="S256",
            timeout=self._timeout,
            follow_redirects=False,
            transport=self._transport,
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        client, self._client, self._closed = self._client, None, True
        if client is not None:
            await client.aclose()

    def _open(self) -> Any:
        if self._client is None:
            raise RuntimeError("the OidcClient is " + ("closed" if self._closed else "not open"))
        return self._client

    # --- the flow --------------------------------------------------------------------------------

    async def begin(self, redirect_uri: str, *, target: str) -> tuple[str, Flow]:
        """The provider's authorization URL to send the browser to, and the flow to keep (in
        ``seal``'s cookie) until it comes back. ``ProviderUnavailable``."""
        client = self._open()
        provider = await self._discover()
        flow = Flow(
            state=generate_token(32),
            nonce=generate_token(32),
            verifier=generate_token(64),  # RFC 7636: 43 to 128 characters
            target=target,
            expires=int(self._now()) + FLOW_TTL,
        )
        url, _ = client.create_authorization_url(
            provider.authorize_url,
            state=flow.state,
            code_verifier=flow.verifier,
            redirect_uri=redirect_uri,
            nonce=flow.nonce,
        )
        return str(url), flow

    async def finish(self, flow: Flow, params: Mapping[str, str], redirect_uri: str) -> Person:
        """Whom the provider vouched for, from the callback's query ``params`` (``state`` and
        ``code``, or ``error``). ``FlowInvalid``, ``ProviderRefused``, ``ProviderUnavailable``,
        ``TokenRejected``, ``EmailUnverified``, ``DomainNotAllowed``."""
        client = self._open()
        if not hmac.compare_digest(params.get("state", "").encode(), flow.state.encode()):
            raise FlowInvalid(
                "This sign-on does not match the one your browser started (its state differs); "
                "start again from the login page."
            )
        if "error" in params:
            raise ProviderRefused(f"The identity provider refused: {_clean(params['error'])}.")
        code = params.get("code", "")
        if not code:
            raise FlowInvalid("The identity provider sent no code back; start again.")
        provider = await self._discover()
        try:
            tokens = await client.fetch_token(
                provider.token_url,
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=flow.verifier,
                auth=client.client_auth(provider.auth_method),
            )
        except OAuthError as exc:
            logger.warning("oidc: the token endpoint refused the code: %s", _clean(exc.error))
            raise ProviderRefused(
                f"The identity provider refused the login's code: {_clean(exc.error)}."
            ) from None
        except httpx.HTTPError as exc:  # its message names the URL and status, no secret
            logger.warning("oidc: the token endpoint failed: %s", _clean(exc, 200))
            raise ProviderUnavailable() from None
        except ValueError:  # an answer that is no JSON object
            logger.warning("oidc: the token endpoint answered no JSON object")
            raise ProviderUnavailable() from None
        finally:
            client.token = None  # nothing of this login stays in the shared client
        id_token = tokens.get("id_token") if isinstance(tokens, Mapping) else None
        if not isinstance(id_token, str) or not id_token:
            raise TokenRejected("The identity provider sent no ID token (is openid a scope?).")
        claims = await self._verify(id_token, provider, flow.nonce)
        return self._person(claims)

    def role_of(self, person: Person) -> str | None:
        """The platform role of the first ``role_map`` entry the person holds, in the order
        written; ``None`` for none."""
        held = set(person.groups)
        return next((role for value, role in self._config.role_map.items() if value in held), None)

    # --- the flow cookie ------------------------------------------------------------------------

    def seal(self, flow: Flow) -> str:
        """The flow as a cookie value: JSON, base64url, and its HMAC-SHA256."""
        self._open()
        body = _b64(json.dumps(asdict(flow), separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def unseal(self, value: str | None) -> Flow:
        """The flow of a cookie ``seal`` made, unexpired. ``FlowInvalid``."""
        self._open()
        body, _, signature = (value or "").partition(".")
        if not body or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise FlowInvalid()
        try:
            flow = Flow(**json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))
        except (ValueError, TypeError):
            raise FlowInvalid() from None
        if flow.expires <= self._now():
            raise FlowInvalid()
        return flow

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    # --- the provider ---------------------------------------------------------------------------

    async def _discover(self) -> _Provider:
        found = self._provider
        if found is not None and time.monotonic() - found.fetched < METADATA_TTL:
            return found
        async with self._lock:
            found = self._provider
            if found is not None and time.monotonic() - found.fetched < METADATA_TTL:
                return found
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(url, "discovery document")
            try:
                found = self._provider_of(document)
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("oidc: the discovery document at %s is unusable: %s", url, exc)
                raise ProviderUnavailable(
                    "The identity provider's configuration is unusable; tell the platform's "
                    "admins (the log says why)."
                ) from None
            self._provider = found
            self._keys = None  # read anew from this document's jwks_uri
            return found

    def _provider_of(self, document: Any) -> _Provider:
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        # OpenID Connect Discovery 1.0, section 4.3: the issuer must be the one configured.
        if document.get("issuer") != self.issuer:
            raise ValueError(
                f"issuer {_clean(str(document.get('issuer')))!r} is not {self.issuer!r}"
            )
        methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            method = "client_secret_basic"
        elif "client_secret_post" in methods:
            method = "client_secret_post"
        else:
            raise ValueError(f"no client_secret_basic or client_secret_post among {methods}")
        offered = document.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = tuple(alg for alg in ASYMMETRIC if alg in offered)
        if not algorithms:
            raise ValueError(f"no public-key signature among {offered}")
        urls = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = document[name]
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ValueError(f"{name} is not a URL")
            urls[name] = value
        return _Provider(
            authorize_url=urls["authorization_endpoint"],
            token_url=urls["token_endpoint"],
            jwks_url=urls["jwks_uri"],
            auth_method=method,
            algorithms=algorithms,
            fetched=time.monotonic(),
        )

    async def _key_set(self, provider: _Provider, *, refresh: bool = False) -> KeySet:
        keys = self._keys
        if keys is not None and not refresh:
            return keys
        async with self._lock:
            if self._keys is not None and (
                not refresh or time.monotonic() - self._keys_fetched < JWKS_REFETCH
            ):
                return self._keys
            document = await self._get_json(provider.jwks_url, "JWKS")
            try:
                listed = [key for key in document["keys"] if key.get("kty") != "oct"]
                keys = KeySet.import_key_set({"keys": listed})
            except (JoseError, KeyError, TypeError, ValueError, AttributeError) as exc:
                logger.warning("oidc: the JWKS at %s is unusable: %s", provider.jwks_url, exc)
                raise ProviderUnavailable() from None
            self._keys, self._keys_fetched = keys, time.monotonic()
            return keys

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            answer = await self._open().request("GET", url, withhold_token=True)
            answer.raise_for_status()
            return answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("oidc: cannot read the provider's %s at %s: %s", what, url, exc)
            raise ProviderUnavailable() from None

    # --- the ID token ---------------------------------------------------------------------------

    async def _verify(self, id_token: str, provider: _Provider, nonce: str) -> dict[str, Any]:
        client_id = self._config.client_id
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._now()),
            leeway=LEEWAY,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": client_id or ""},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            keys = await self._key_set(provider)
            try:
                token = jwt.decode(id_token, keys, algorithms=provider.algorithms)
            except InvalidKeyIdError:  # the provider may have rotated its keys since
                keys = await self._key_set(provider, refresh=True)
                token = jwt.decode(id_token, keys, algorithms=provider.algorithms)
            registry.validate(token.claims)
        except (JoseError, ValueError) as exc:
            reason = exc.description or exc.error if isinstance(exc, JoseError) else "malformed"
            logger.warning("oidc: ID token refused: %s", _clean(reason))
            raise TokenRejected(
                f"The identity provider's ID token failed a check ({_clean(reason)}); nobody "
                "was logged in."
            ) from None
        claims = token.claims
        audience = claims["aud"]
        # OpenID Connect Core 1.0, 3.1.3.7: with several audiences, azp names this client.
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
            raise TokenRejected("The ID token was issued to another client (azp).")
        return claims

    def _person(self, claims: Mapping[str, Any]) -> Person:
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise EmailUnverified(
                "The identity provider sent no email address (is email among auth.oidc.scopes?)."
            )
        if claims.get("email_verified") not in (True, "true"):
            raise EmailUnverified()
        domains = self._config.allowed_domains
        if domains and email.rsplit("@", 1)[1].lower() not in domains:
            raise DomainNotAllowed(
                f"Addresses at {_clean(email.rsplit('@', 1)[1])} may not sign on here."
            )
        name = claims.get("name") or claims.get("preferred_username") or ""
        return Person(
            subject=str(claims["sub"]),
            email=email,
            name=name if isinstance(name, str) else "",
            groups=_values(claims, self._config.roles_claim),
        )


def _values(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """The strings at a dotted claim path: a list of them, or one (space-separated)."""
    found: Any = claims
    for part in path.split("."):
        found = found.get(part) if isinstance(found, Mapping) else None
    if isinstance(found, str):
        return tuple(found.split())
    if isinstance(found, list):
        return tuple(item for item in found if isinstance(item, str))
    return ()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _clean(text: object, limit: int = 80) -> str:
    """A provider's word, fit for a page and a log line."""
    return "".join(ch for ch in str(text) if ch.isprintable())[:limit]

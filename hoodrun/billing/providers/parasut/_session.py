"""Paraşüt's API over HTTP: OAuth2 tokens, the client-side rate limit, retries, and answers
mapped to the provider's two errors (``ParasutRejected`` for a 4xx, ``ProviderUnavailable`` for
the rest); with the JSON and JSON:API helpers the provider reads Paraşüt's documents with.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from hoodrun.billing.config import ParasutConfig
from hoodrun.billing.providers import ProviderRejected, ProviderUnavailable

# The package's logger, as before the module became a package.
log = logging.getLogger(__package__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Doc = dict[str, Any]

_JSONAPI = "application/vnd.api+json"
_OOB = "urn:ietf:wg:oauth:2.0:oob"
_MAX_RETRY_AFTER = 60.0  # Longer waits are left to the job queue's backoff.
_THROTTLE_RETRIES = 3


class ParasutRejected(ProviderRejected):
    """Paraşüt refused a request (4xx): ``status``, and ``errors`` (titles and details) say why."""

    def __init__(self, status: int, errors: Sequence[str], what: str) -> None:
        self.status = status
        self.errors = tuple(errors)
        super().__init__(f"Paraşüt refused {what} ({status}): {'; '.join(errors) or 'no detail'}")


# --- JSON and JSON:API documents --------------------------------------------------------------


def _dumps(value: object) -> str:
    """JSON with Decimals as exact numbers (``json`` only knows floats, which lose cents)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a finite amount: {value}")
        return format(value, "f")
    if isinstance(value, float):
        raise TypeError("amounts are Decimal, never float")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dumps(v) for v in value) + "]"
    return json.dumps(value)


def _data(doc: Doc | None) -> Doc:
    data = (doc or {}).get("data")
    if not isinstance(data, dict) or "id" not in data:
        raise ProviderUnavailable("Paraşüt's answer has no resource")
    return data


def _items(doc: Doc | None) -> list[Doc]:
    data = (doc or {}).get("data")
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _attrs(resource: Doc) -> Doc:
    attributes = resource.get("attributes")
    return attributes if isinstance(attributes, dict) else {}


def _related(resource: Doc, name: str) -> tuple[str, str] | None:
    """The (type, id) a to-one relationship points at, or None."""
    data = ((resource.get("relationships") or {}).get(name) or {}).get("data")
    if isinstance(data, dict) and data.get("id"):
        return str(data.get("type")), str(data["id"])
    return None


def _included(doc: Doc, kind: str) -> list[Doc]:
    return [i for i in doc.get("included") or [] if isinstance(i, dict) and i.get("type") == kind]


def _errors(response: httpx.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        return [response.text[:200]] if response.text else []
    found = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(found, list):
        # The OAuth endpoint answers {"error", "error_description"}.
        pair = (body.get("error"), body.get("error_description")) if isinstance(body, dict) else ()
        return [": ".join(str(p) for p in pair if p)] if any(pair) else []
    messages = []
    for error in found:
        if isinstance(error, dict):
            parts = [str(error[k]) for k in ("title", "detail") if error.get(k)]
            messages.append(": ".join(parts))
        else:
            messages.append(str(error))
    return [m for m in messages if m]


# --- the rate limit ---------------------------------------------------------------------------


class _RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds, counted from when each answer came
    back: a request's arrival at Paraşüt lies between its sending and its answer, so spacing
    sends ``window`` after earlier answers keeps Paraşüt's own count within the limit too."""

    def __init__(self, limit: int, window: float, clock: Clock, sleep: Sleep) -> None:
        self._limit, self._window = limit, window
        self._clock, self._sleep = clock, sleep
        self._done: deque[float] = deque()
        self._in_flight = 0
        self._released = asyncio.Event()

    async def __aenter__(self) -> None:
        # No await between the check and the booking: asyncio makes the pair atomic.
        while True:
            now = self._clock()
            while self._done and self._done[0] <= now - self._window:
                self._done.popleft()
            if len(self._done) + self._in_flight < self._limit:
                self._in_flight += 1
                return
            if self._done:
                await self._sleep(self._done[0] + self._window - now)
            else:
                self._released.clear()
                await self._released.wait()

    async def __aexit__(self, *exc: object) -> None:
        self._in_flight -= 1
        self._done.append(self._clock())
        self._released.set()


# --- the HTTP session -------------------------------------------------------------------------


class _Session:
    """Paraşüt's API over HTTP: tokens, the rate limit, retries, and errors mapped to the
    provider's two kinds."""

    def __init__(
        self, config: ParasutConfig, client: httpx.AsyncClient, clock: Clock, sleep: Sleep
    ) -> None:
        self._config, self._client = config, client
        self._clock, self._sleep = clock, sleep
        self._limiter = _RateLimiter(config.rate_limit, config.rate_window, clock, sleep)
        self._access: str | None = None
        self._refresh: str | None = None
        self._renew_at = 0.0
        self._auth_lock = asyncio.Lock()

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async with self._limiter:
            try:
                return await self._client.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                raise ProviderUnavailable(f"Paraşüt did not answer {method} {url} in time") from exc
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(f"Paraşüt unreachable ({type(exc).__name__})") from exc

    # OAuth2: the password grant once, then refresh tokens, each used once (they rotate).

    async def _token(self) -> str:
        if self._access is not None and self._clock() < self._renew_at:
            return self._access
        async with self._auth_lock:
            if self._access is None or self._clock() >= self._renew_at:
                await self._obtain()
            if self._access is None:
                raise ProviderUnavailable("Paraşüt gave no access token")
            return self._access

    async def _renew(self, refused: str) -> None:
        async with self._auth_lock:
            if self._access == refused:  # else another request already renewed it
                await self._obtain()

    async def _obtain(self) -> None:
        if self._refresh is not None:
            try:
                await self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh})
                return
            except ProviderRejected as exc:
                log.warning("Paraşüt refused the refresh token (%s); logging in again", exc)
                self._refresh = None
        await self._grant(
            {
                "grant_type": "password",
                "username": self._config.username,
                "password": self._config.user_password() or "",
                "redirect_uri": _OOB,
            }
        )

    async def _grant(self, form: dict[str, str]) -> None:
        form |= {"client_id": self._config.client_id, "client_secret": self._config.secret() or ""}
        response = await self._send("POST", "/oauth/token", data=form)
        grant = form["grant_type"]
        if response.status_code >= 500 or response.status_code == 429:
            raise ProviderUnavailable(f"Paraşüt's token endpoint answered {response.status_code}")
        if response.status_code != 200:
            raise ParasutRejected(response.status_code, _errors(response), f"the {grant} grant")
        try:
            body = response.json()
            access, expires_in = str(body["access_token"]), float(body.get("expires_in", 7200))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderUnavailable("Paraşüt's token endpoint sent no access token") from exc
        self._access = access
        self._refresh = str(body.get("refresh_token") or "") or self._refresh
        self._renew_at = self._clock() + expires_in - min(60.0, expires_in / 10)
        log.info("Paraşüt access token obtained (%s grant), valid %.0f s", grant, expires_in)

    # The API.

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Doc | None = None,
    ) -> Doc | None:
        """The JSON:API document Paraşüt answered, None for an empty answer (204)."""
        url = f"/v4/{self._config.company_id}/{path}"
        headers = {"Accept": _JSONAPI}
        content = None
        if body is not None:
            content, headers["Content-Type"] = _dumps(body).encode(), _JSONAPI
        renewed, throttled = False, 0
        while True:
            token = await self._token()
            response = await self._send(
                method,
                url,
                params=params,
                content=content,
                headers=headers | {"Authorization": f"Bearer {token}"},
            )
            status = response.status_code
            if status == 401 and not renewed:
                renewed = True
                await self._renew(token)
                continue
            if status == 429:
                throttled += 1
                delay = self._retry_after(response)
                if throttled > _THROTTLE_RETRIES or delay > _MAX_RETRY_AFTER:
                    raise ProviderUnavailable(f"Paraşüt kept rate-limiting {method} {path}")
                log.info("Paraşüt rate-limited %s %s; retrying in %.1f s", method, path, delay)
                await self._sleep(delay)
                continue
            return self._parse(response, f"{method} {path}")

    def _retry_after(self, response: httpx.Response) -> float:
        value = response.headers.get("Retry-After", "").strip()
        if not value:
            return self._config.rate_window
        try:
            return max(float(value), 0.0)
        except ValueError:
            pass
        try:
            return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
        except (TypeError, ValueError):
            return self._config.rate_window

    @staticmethod
    def _parse(response: httpx.Response, what: str) -> Doc | None:
        status = response.status_code
        if 400 <= status < 500:
            raise ParasutRejected(status, _errors(response), what)
        if not 200 <= status < 300:
            detail = "; ".join(_errors(response))
            raise ProviderUnavailable(f"Paraşüt answered {status} to {what}: {detail}".rstrip(": "))
        if status == 204 or not response.content:
            return None
        try:
            doc = json.loads(response.content, parse_float=Decimal)
        except ValueError as exc:
            raise ProviderUnavailable(f"Paraşüt's answer to {what} is not JSON") from exc
        if not isinstance(doc, dict):
            raise ProviderUnavailable(f"Paraşüt's answer to {what} is not a JSON:API document")
        return doc

    async def download(self, url: str) -> bytes:
        """A pre-signed file: fetched without the bearer token, which is for Paraşüt alone."""
        try:
            response = await self._client.get(url, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(f"download failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise ProviderUnavailable(f"download answered {response.status_code}")
        return response.content

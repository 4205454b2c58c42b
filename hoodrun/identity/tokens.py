"""Tokens: JWT access tokens (HS256, short-lived, self-contained) and the opaque ones.

An access token carries everything a permission check needs (``Claims``); it is checked by
signature and expiry alone, so it stays valid until it expires even after its session ends.
Refresh tokens and emailed tokens are random strings of which only the SHA-256 is stored.
A refresh token starts with its session's id (``ses_....<secret>``): presenting an old one of
a session is recognised as reuse, and ends that session.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jwt

from hoodrun.identity.errors import InvalidToken

if TYPE_CHECKING:
    from hoodrun.config import Config

__all__ = [
    "ISSUER",
    "JWT_SECRET_ENV",
    "Claims",
    "Session",
    "decode_access",
    "encode_access",
    "expiry",
    "hash_token",
    "new_refresh_token",
    "new_token",
    "resolve_jwt_secret",
    "session_of",
]

ISSUER: Final = "hoodrun"
JWT_SECRET_ENV: Final = "HOODRUN_JWT_SECRET"  # noqa: S105 (a variable's name)
_ALGORITHM: Final = "HS256"
_MIN_SECRET: Final = 32
# Not ``org``: PyJWT counts a null claim as missing, and an operator's session has no org.
_REQUIRED: Final = ("sub", "email", "roles", "orgs", "scopes", "sid", "iat", "exp", "typ")


@dataclass(frozen=True, slots=True)
class Claims:
    """Who holds an access token, and what they may do (decoded from a valid one)."""

    user_id: str
    email: str
    name: str
    org_id: str | None
    """The session's current org (``None``: the user belongs to no org)."""
    roles: tuple[str, ...]
    """The user's role in ``org_id`` (empty for an operator looking at an org not theirs)."""
    orgs: Mapping[str, str]
    """Every membership: org id -> role."""
    platform_role: str | None
    """An operator's role over every org and the platform; ``None`` for customers."""
    scopes: tuple[str, ...]
    """Permissions of ``roles`` and ``platform_role`` together, sorted."""
    tier: str | None
    """``org_id``'s plan: its contract's in force, else the org's own, else ``None``."""
    session_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    """What a login or a refresh hands out: the refresh token exists nowhere else."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: int
    claims: Claims


def encode_access(claims: Claims, *, issued_at: datetime, secret: str) -> str:
    payload: dict[str, Any] = {
        "sub": claims.user_id,
        "email": claims.email,
        "name": claims.name,
        "org": claims.org_id,
        "roles": list(claims.roles),
        "orgs": dict(claims.orgs),
        "prole": claims.platform_role,
        "scopes": list(claims.scopes),
        "tier": claims.tier,
        "sid": claims.session_id,
        "iat": int(issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
        "iss": ISSUER,
        "typ": "access",
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM)


def decode_access(token: str, *, secret: str, now: datetime) -> Claims:
    """The claims of a valid, unexpired access token; ``InvalidToken`` otherwise."""
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            issuer=ISSUER,
            # Expiry is judged against the service's clock (injected in tests), below.
            options={"require": [*_REQUIRED, "iss"], "verify_exp": False, "verify_iat": False},
        )
        if payload["typ"] != "access":
            raise InvalidToken("not an access token")
        expires_at = datetime.fromtimestamp(int(payload["exp"]), UTC)
        if expires_at <= now:
            raise InvalidToken("the access token has expired; refresh it or log in again")
        return Claims(
            user_id=str(payload["sub"]),
            email=str(payload["email"]),
            name=str(payload.get("name") or ""),
            org_id=payload.get("org"),
            roles=tuple(payload["roles"]),
            orgs={str(k): str(v) for k, v in dict(payload["orgs"]).items()},
            platform_role=payload.get("prole"),
            scopes=tuple(payload["scopes"]),
            tier=payload.get("tier"),
            session_id=str(payload["sid"]),
            expires_at=expires_at,
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken() from exc
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # well signed, badly shaped
        raise InvalidToken() from exc


def new_token() -> str:
    """A one-time token for a mailed link (256 random bits)."""
    return secrets.token_urlsafe(32)


def new_refresh_token(session_id: str) -> str:
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def session_of(refresh_token: str) -> str | None:
    """The session id a refresh token names (``None`` when it is not shaped like one)."""
    session_id, dot, rest = refresh_token.partition(".")
    if not dot or not rest or not session_id.startswith("ses_") or len(session_id) > 32:
        return None
    return session_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def resolve_jwt_secret(config: Config, env: Mapping[str, str] | None = None) -> str:
    """The HS256 key: ``auth.jwt_secret``, else ``HOODRUN_JWT_SECRET``, else the file
    ``auth.jwt_secret_file``, else ``{data_dir}/jwt.secret`` (made once, mode 0600).

    Every api replica must sign with the same key: set one of the first three beyond a single
    machine. Raises ``ValueError`` naming the source of a key shorter than 32 characters.
    """
    env = os.environ if env is None else env
    auth = config.auth
    if auth.jwt_secret:
        return auth.jwt_secret
    if env.get(JWT_SECRET_ENV):
        return _long_enough(env[JWT_SECRET_ENV].strip(), JWT_SECRET_ENV)
    if auth.jwt_secret_file is not None:
        text = auth.jwt_secret_file.read_text().strip()
        return _long_enough(text, f"auth.jwt_secret_file {auth.jwt_secret_file}")
    return _made_once(Path(config.data_dir) / "jwt.secret")


def _long_enough(secret: str, source: str) -> str:
    if len(secret) < _MIN_SECRET:
        raise ValueError(f"{source}: the JWT secret needs at least {_MIN_SECRET} characters")
    return secret


def _made_once(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole under a temporary name, then linked in: a replica starting at the same
        # moment either wins the link or reads the winner's complete file.
        secret = secrets.token_urlsafe(48)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return _long_enough(path.read_text().strip(), str(path))


def expiry(now: datetime, seconds: int) -> datetime:
    """``now`` plus ``seconds``, truncated to whole seconds (as a JWT's ``exp`` is)."""
    return now.replace(microsecond=0) + timedelta(seconds=seconds)

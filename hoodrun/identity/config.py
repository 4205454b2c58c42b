"""The ``auth:`` part of the config: people's accounts, sessions and the login throttle, and
operators' single sign-on (``auth.oidc``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hoodrun.identity.roles import Role

__all__ = ["AuthConfig", "OidcConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OidcConfig(_Model):
    """Operators log in through an OpenID Connect provider (docs/identity.md, "Single sign-on").

    Customers never do: only a person whose ``roles_claim`` maps to a platform role gets in.
    """

    enabled: bool = Field(default=False, description="Offer single sign-on on the login page.")
    issuer: str | None = Field(
        default=None,
        description="The provider's issuer URL (https; http only on a loopback address); its "
        "metadata is read from {issuer}/.well-known/openid-configuration.",
    )
    client_id: str | None = Field(default=None, description="This platform's client id there.")
    client_secret: str | None = Field(
        default=None,
        repr=False,
        description="The client's secret (or HOODRUN_AUTH__OIDC__CLIENT_SECRET).",
    )
    client_secret_file: Path | None = Field(
        default=None, description="A file holding it (read when client_secret is unset)."
    )
    scopes: tuple[str, ...] = Field(
        default=("openid", "email", "profile"),
        description="Scopes asked for; openid is required, and the roles claim may need one.",
    )
    roles_claim: str = Field(
        default="groups",
        min_length=1,
        description="The ID token claim listing the person's groups or roles (a dotted path "
        "reaches into objects: realm_access.roles).",
    )
    role_map: dict[str, Role] = Field(
        default_factory=dict,
        description="A value of the roles claim -> a platform role (viewer, ops, billing, "
        "admin). The first entry the person holds, in the order written, wins.",
    )
    allowed_domains: tuple[str, ...] = Field(
        default=(), description="Email domains let in (empty: any the provider vouches for)."
    )
    button_label: str = Field(
        default="Log in with single sign-on",
        min_length=1,
        max_length=64,
        description="The login page's button.",
    )

    @field_validator("allowed_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(domain.strip().lower().lstrip("@") for domain in value)

    @model_validator(mode="after")
    def _complete(self) -> OidcConfig:
        if not self.enabled:
            return self
        missing = [name for name in ("issuer", "client_id") if not getattr(self, name)]
        if self.client_secret is None and self.client_secret_file is None:
            missing.append("client_secret (or client_secret_file)")
        if missing:
            raise ValueError(f"enabled single sign-on needs {', '.join(missing)}")
        if not self.role_map:
            raise ValueError("role_map: map at least one value of the roles claim to a role")
        if "openid" not in self.scopes:
            raise ValueError("scopes must include openid")
        url = urlsplit(self.issuer or "")
        if url.scheme != "https" and not (url.scheme == "http" and _loopback(url.hostname)):
            raise ValueError("issuer must be an https URL (http only on a loopback address)")
        if url.query or url.fragment:
            raise ValueError("issuer must have no query or fragment")
        return self


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthConfig(_Model):
    """Users of the portal, the control center and the admin API (JWT sessions)."""

    signup: bool = Field(default=True, description="Anyone may sign up (else operators invite).")
    jwt_secret: str | None = Field(
        default=None,
        min_length=32,
        repr=False,
        description="HS256 key of access tokens (32+ characters); every api replica needs the "
        "same one. Unset: HOODRUN_JWT_SECRET, jwt_secret_file, else one made in data_dir.",
    )
    jwt_secret_file: Path | None = Field(
        default=None, description="A file holding the HS256 key (read when jwt_secret is unset)."
    )
    access_ttl: int = Field(default=3600, ge=60, description="Seconds an access token lives.")
    refresh_ttl: int = Field(
        default=30 * 86400, ge=3600, description="Seconds a refresh token (a session) lives."
    )
    verify_ttl: int = Field(default=2 * 86400, ge=600, description="Email verification link.")
    reset_ttl: int = Field(default=3600, ge=300, description="Password reset link.")
    require_verified_email: bool = Field(
        default=True, description="Logins wait until the address is verified."
    )
    max_failures: int = Field(
        default=5, ge=1, description="Failed logins per account (or per address x4) per window."
    )
    failure_window: int = Field(default=900, ge=10, description="Seconds the throttle counts.")
    password_min_length: int = Field(
        default=10, ge=8, le=128, description="Shortest password accepted."
    )
    # argon2id's cost. Raising any of them rehashes each password at its owner's next login.
    argon2_time_cost: int = Field(default=3, ge=1, le=20, description="argon2id iterations.")
    argon2_memory_kib: int = Field(
        default=65536, ge=64, le=4 * 1024 * 1024, description="argon2id memory per hash (KiB)."
    )
    argon2_parallelism: int = Field(default=4, ge=1, le=64, description="argon2id lanes.")
    oidc: OidcConfig = Field(
        default_factory=OidcConfig, description="Operators' single sign-on (OpenID Connect)."
    )

    @model_validator(mode="after")
    def _argon2_memory(self) -> AuthConfig:
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise ValueError("argon2_memory_kib must be at least 8 x argon2_parallelism")
        return self

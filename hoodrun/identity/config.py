"""The ``auth:`` part of the config: people's accounts, sessions and the login throttle."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AuthConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _argon2_memory(self) -> AuthConfig:
        if self.argon2_memory_kib < 8 * self.argon2_parallelism:
            raise ValueError("argon2_memory_kib must be at least 8 x argon2_parallelism")
        return self

"""The ``smtp:`` and ``notifications:`` parts of the config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["NotificationsConfig", "SmtpConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmtpConfig(_Model):
    """Where mail goes out (sign-up, password reset, notices). Unset host: mail is logged
    as not sent, and links in it are never shown."""

    host: str | None = None
    port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    starttls: bool = Field(default=True, description="STARTTLS when the server offers it.")
    tls: bool = Field(default=False, description="TLS from the start (port 465).")
    sender: str = "HoodRun <no-reply@localhost>"
    timeout: float = Field(default=10.0, gt=0)


class NotificationsConfig(_Model):
    """Notices to orgs: webhooks and email to members who want them (docs/notifications.md)."""

    enabled: bool = Field(
        default=True, description="The worker watches usage and error rates, and mails events."
    )
    usage_thresholds: tuple[int, ...] = Field(
        default=(80, 100), description="Percent of a quota or spending cap that is announced."
    )
    error_rate: float = Field(
        default=0.2, gt=0, le=1, description="A key's error share over the window that alerts."
    )
    error_min_requests: int = Field(default=100, ge=1)
    error_window: int = Field(default=300, ge=60, description="Seconds the error rate covers.")
    interval: int = Field(default=60, ge=5, description="Seconds between checks (worker).")

    @field_validator("usage_thresholds")
    @classmethod
    def _thresholds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(not 1 <= percent <= 1000 for percent in value):
            raise ValueError("each threshold is a percent from 1 to 1000")
        return tuple(sorted(set(value)))

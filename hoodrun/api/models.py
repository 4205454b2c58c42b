"""The admin API's request and response bodies (also the CLI's ``--json`` output)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from hoodrun.keys.record import KeyRecord

__all__ = [
    "AuditEntryOut",
    "AuditOut",
    "CreateKeyRequest",
    "CreatedKeyOut",
    "ErrorBody",
    "ErrorOut",
    "KeyListOut",
    "KeyOut",
    "RotateKeyRequest",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateKeyRequest(_Request):
    """Options of a new key; the org (and project) are created if new."""

    org: str = Field(min_length=1, max_length=64)
    project: str | None = Field(default=None, description="Defaults to 'default'.")
    plan: str | None = Field(default=None, description="Defaults to the org's, then the config's.")
    chains: list[str] | None = Field(default=None, description="Allowed chains; null for all.")
    origins: list[str] | None = Field(default=None, description="Allowed browser origins.")
    expires_in: float | str | None = Field(
        default=None, description="Seconds, or a duration such as '30d', '12h', '90m'."
    )
    name: str | None = None
    methods_allow: list[str] | None = Field(default=None, description="Allow-list of methods.")
    methods_deny: list[str] = Field(default_factory=list, description="Extra denied methods.")
    rps: float | None = Field(default=None, gt=0, description="Overrides the plan's rate.")
    burst: int | None = Field(default=None, ge=1, description="Overrides the plan's burst.")


class RotateKeyRequest(_Request):
    grace_seconds: float | None = Field(
        default=None, ge=0, description="How long the old key keeps working; 0 or null: not at all."
    )


def _sorted(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else sorted(values)


class KeyOut(BaseModel):
    """A key as shown to operators: never the key, never its hash."""

    id: str
    start: str
    org: str
    org_id: str
    project: str
    project_id: str
    name: str | None
    plan: str
    chains: list[str] | None
    origins: list[str] | None
    methods_allow: list[str] | None
    methods_deny: list[str]
    rps: float | None
    burst: int | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    disabled: bool
    status: str = Field(description="active, revoked, disabled or expired.")

    @classmethod
    def of(cls, record: KeyRecord, now: datetime, **extra: Any) -> Self:
        return cls(
            id=record.id,
            start=record.start,
            org=record.org,
            org_id=record.org_id,
            project=record.project,
            project_id=record.project_id,
            name=record.name,
            plan=record.plan,
            chains=_sorted(record.chains),
            origins=_sorted(record.origins),
            methods_allow=_sorted(record.methods_allow),
            methods_deny=sorted(record.methods_deny),
            rps=record.rps,
            burst=record.burst,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            disabled=record.disabled,
            status=record.status_at(now),
            **extra,
        )


class CreatedKeyOut(KeyOut):
    key: str = Field(description="The API key. Shown this once: only its hash is stored.")
    rotated_from: str | None = None


class KeyListOut(BaseModel):
    keys: list[KeyOut]


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]


class AuditOut(BaseModel):
    entries: list[AuditEntryOut]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody

"""What the identity service hands out about people: users and their memberships."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import RowMapping

__all__ = ["Membership", "User"]


@dataclass(frozen=True, slots=True)
class User:
    """An account (no password hash: it never leaves the service)."""

    id: str
    email: str
    name: str
    email_verified: bool
    platform_role: str | None
    """An operator's role over every org and the platform; ``None`` for customers."""
    disabled: bool
    created_at: datetime

    @classmethod
    def of(cls, row: RowMapping) -> User:
        return cls(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            email_verified=row["email_verified_at"] is not None,
            platform_role=row["platform_role"],
            disabled=bool(row["disabled"]),
            created_at=row["created_at"],
        )


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's role in an org."""

    user_id: str
    email: str
    name: str
    org_id: str
    org_name: str
    role: str
    created_at: datetime

    @classmethod
    def of(cls, row: RowMapping) -> Membership:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

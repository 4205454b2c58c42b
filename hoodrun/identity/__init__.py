"""People: accounts, org memberships and roles, sessions (JWT access + refresh tokens).

::

    identity = IdentityService(store, config, Mailer(config.smtp))
    user = await identity.sign_up("ada@example.com", "correct horse battery", name="Ada")
    await identity.verify_email(token_from_the_mail)
    session = await identity.login("ada@example.com", "correct horse battery", ip=client_ip)
    claims = identity.decode(session.access_token)        # user, org, roles, scopes, tier
    session = await identity.refresh(session.refresh_token)   # rotated; the old one is spent

See docs/identity.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hoodrun.identity.errors import (
    AccountDisabled,
    AlreadyMember,
    BadCredentials,
    EmailNotVerified,
    EmailTaken,
    IdentityError,
    InvalidInput,
    InvalidLink,
    InvalidRole,
    InvalidToken,
    LastAdmin,
    MemberNotFound,
    NotAMember,
    OrgNameTaken,
    OrgNotFound,
    SignupClosed,
    Throttled,
    UserNotFound,
    WeakPassword,
)
from hoodrun.identity.records import Membership, User
from hoodrun.identity.roles import PERMISSIONS, ROLE_PERMISSIONS, ROLES, Role, permissions_of
from hoodrun.identity.tokens import Claims, Session, resolve_jwt_secret

if TYPE_CHECKING:
    from hoodrun.identity.service import IdentityService

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "ROLE_PERMISSIONS",
    "AccountDisabled",
    "AlreadyMember",
    "BadCredentials",
    "Claims",
    "EmailNotVerified",
    "EmailTaken",
    "IdentityError",
    "IdentityService",
    "InvalidInput",
    "InvalidLink",
    "InvalidRole",
    "InvalidToken",
    "LastAdmin",
    "MemberNotFound",
    "Membership",
    "NotAMember",
    "OrgNameTaken",
    "OrgNotFound",
    "Role",
    "Session",
    "SignupClosed",
    "Throttled",
    "User",
    "UserNotFound",
    "WeakPassword",
    "permissions_of",
    "resolve_jwt_secret",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: ``hoodrun.config`` imports ``hoodrun.identity.config`` (so this
    # package) while the service's own imports (the store) need ``hoodrun.config`` complete.
    if name == "IdentityService":
        from hoodrun.identity.service import IdentityService

        return IdentityService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

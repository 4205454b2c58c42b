"""Errors of accounts, sessions and memberships; each carries a stable ``code`` and an HTTP
``status`` (the API renders them as ``{"error": {"code", "message"}}``).

::

    IdentityError              root: the request about people cannot be done as asked (400)
    ├── InvalidInput           a malformed email address, name or org name (400)
    ├── WeakPassword           too short, too long, or the email address itself (400)
    ├── InvalidRole            not one of viewer, ops, billing, admin (400)
    ├── InvalidLink            an emailed token that is unknown, used or expired (400)
    ├── BadCredentials         wrong email or password (never says which) (401)
    ├── InvalidToken           an access or refresh token that is not (or no longer) valid (401)
    ├── EmailNotVerified       the address is not verified yet (403)
    ├── AccountDisabled        an operator disabled the account (403)
    ├── SignupClosed           ``auth.signup`` is off (403)
    ├── NotAMember             the user holds no role in the org asked for (403)
    ├── UserNotFound           (404)
    ├── OrgNotFound            (404)
    ├── MemberNotFound         the user is not a member of that org (404)
    ├── EmailTaken             (409)
    ├── OrgNameTaken           (409)
    ├── AlreadyMember          (409)
    ├── LastAdmin              the org's last admin cannot leave or be demoted (409)
    └── Throttled              too many failed logins; ``retry_after`` seconds (429)
"""

from __future__ import annotations

__all__ = [
    "AccountDisabled",
    "AlreadyMember",
    "BadCredentials",
    "EmailNotVerified",
    "EmailTaken",
    "IdentityError",
    "InvalidInput",
    "InvalidLink",
    "InvalidRole",
    "InvalidToken",
    "LastAdmin",
    "MemberNotFound",
    "NotAMember",
    "OrgNameTaken",
    "OrgNotFound",
    "SignupClosed",
    "Throttled",
    "UserNotFound",
    "WeakPassword",
]


class IdentityError(Exception):
    """The request cannot be done."""

    code = "invalid_request"
    status = 400
    retry_after: int | None = None

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)

    @property
    def message(self) -> str:
        return str(self)


class InvalidInput(IdentityError):
    """A field of the request is invalid."""


class WeakPassword(IdentityError):
    """The password is too weak."""

    code = "weak_password"


class InvalidRole(IdentityError):
    """Use one of the roles viewer, ops, billing, admin."""

    code = "invalid_role"


class InvalidLink(IdentityError):
    """This link is invalid, was already used, or has expired; ask for a new one."""

    code = "invalid_link"


class BadCredentials(IdentityError):
    """Wrong email or password."""

    code = "bad_credentials"
    status = 401


class InvalidToken(IdentityError):
    """The token is invalid or expired; log in again."""

    code = "invalid_token"
    status = 401


class EmailNotVerified(IdentityError):
    """Verify your email address first: follow the link in the mail we sent."""

    code = "email_not_verified"
    status = 403


class AccountDisabled(IdentityError):
    """This account is disabled."""

    code = "account_disabled"
    status = 403


class SignupClosed(IdentityError):
    """Sign-up is closed; ask an operator for an invitation."""

    code = "signup_closed"
    status = 403


class NotAMember(IdentityError):
    """You hold no role in that org."""

    code = "not_a_member"
    status = 403


class UserNotFound(IdentityError):
    """No user has this id."""

    code = "user_not_found"
    status = 404


class OrgNotFound(IdentityError):
    """No org has this id."""

    code = "org_not_found"
    status = 404


class MemberNotFound(IdentityError):
    """The user is not a member of the org."""

    code = "member_not_found"
    status = 404


class EmailTaken(IdentityError):
    """An account with this email address exists; log in or reset its password."""

    code = "email_taken"
    status = 409


class OrgNameTaken(IdentityError):
    """An org with this name exists; choose another name."""

    code = "org_name_taken"
    status = 409


class AlreadyMember(IdentityError):
    """The user is already a member of the org; change their role instead."""

    code = "already_member"
    status = 409


class LastAdmin(IdentityError):
    """The org's last admin cannot be removed or demoted; make another member admin first."""

    code = "last_admin"
    status = 409


class Throttled(IdentityError):
    """Too many failed logins; try again later."""

    code = "too_many_attempts"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after} seconds")
        self.retry_after = retry_after

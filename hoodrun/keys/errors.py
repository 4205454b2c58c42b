"""Errors of key management; each carries a stable ``code`` and an HTTP ``status``.

::

    KeysError                  root: a request about keys cannot be done as asked
    ├── InvalidKeyOptions      an option is malformed (duration, origin, rate, name)
    ├── UnknownPlan            the plan is not declared in the config
    ├── UnknownChain           a chain is not declared in the config
    ├── KeyNotFound            no key has this id
    └── KeyRevoked             the key is revoked (or expired), so it cannot be rotated
"""

from __future__ import annotations

__all__ = [
    "InvalidKeyOptions",
    "KeyNotFound",
    "KeyRevoked",
    "KeysError",
    "UnknownChain",
    "UnknownOrg",
    "UnknownPlan",
]


class KeysError(Exception):
    """The key request cannot be done."""

    code = "invalid_request"
    status = 400

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)

    @property
    def message(self) -> str:
        return str(self)


class InvalidKeyOptions(KeysError):
    """An option of the key is invalid."""

    code = "invalid_option"


class UnknownPlan(KeysError):
    """The plan is not declared in the config."""

    code = "unknown_plan"


class UnknownChain(KeysError):
    """The chain is not declared in the config."""

    code = "unknown_chain"


class UnknownOrg(KeysError, LookupError):
    """No org has this id."""

    code = "org_not_found"
    status = 404


class KeyNotFound(KeysError):
    """No key has this id."""

    code = "key_not_found"
    status = 404


class KeyRevoked(KeysError):
    """The key is revoked."""

    code = "key_revoked"
    status = 409

"""Roles and what they may do: the one table behind every permission check.

A member of an org holds one role there; an operator holds one role over every org and over
the platform itself (chains, upstreams, the job queue, closing a period). Permissions are
``resource:read`` or ``resource:write``; a route names the one it needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

__all__ = ["PERMISSIONS", "ROLES", "ROLE_PERMISSIONS", "Role", "permissions_of"]

Role = Literal["viewer", "ops", "billing", "admin"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "ops", "billing", "admin")

# Org-level resources: what the portal and an org's people use.
_ORG = ("org", "keys", "usage", "logs", "webhooks", "members", "billing", "audit")
# Platform-level resources: only operators (a platform role) ever hold these.
_PLATFORM = ("platform", "upstreams", "jobs", "alerts")

PERMISSIONS: Final[frozenset[str]] = frozenset(
    f"{resource}:{action}" for resource in _ORG + _PLATFORM for action in ("read", "write")
)

_READ_ALL = {f"{r}:read" for r in _ORG + _PLATFORM} - {"audit:read", "billing:read"}

ROLE_PERMISSIONS: Final[dict[Role, frozenset[str]]] = {
    # Sees how things run; changes nothing, and sees no money and no audit trail.
    "viewer": frozenset(_READ_ALL),
    # Runs things: keys, webhooks, upstreams, jobs; no money.
    "ops": frozenset(
        _READ_ALL
        | {"keys:write", "webhooks:write", "upstreams:write", "jobs:write", "alerts:write"}
    ),
    # Money: contracts, credits, invoices, refunds, plan changes; reads the rest.
    "billing": frozenset(_READ_ALL | {"billing:read", "billing:write"}),
    "admin": PERMISSIONS,
}


def permissions_of(roles: Iterable[str]) -> frozenset[str]:
    """Everything the roles grant together (unknown names grant nothing)."""
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())  # type: ignore[call-overload]
    return frozenset(granted)

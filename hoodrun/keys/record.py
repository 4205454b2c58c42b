"""What the gateway knows about a verified key: never the key itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["KeyRecord"]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: its id, owner, plan and scopes, and its lifecycle state.

    ``chains``/``origins`` of ``None`` mean "any". ``methods_allow`` of ``None`` means the plan's
    rules alone apply; ``methods_deny`` adds to the plan's deny list. ``plan`` is the effective
    plan name (the key's own, else its org's, else the config's default plan).
    ``capture_bytes`` is its project's payload capture: ``None`` when off, else how many bytes
    of each call's params and answer the request explorer keeps.
    """

    id: str
    hash: str
    start: str
    org_id: str
    org: str
    project_id: str
    project: str
    name: str | None
    plan: str
    chains: frozenset[str] | None
    origins: frozenset[str] | None
    methods_allow: frozenset[str] | None
    methods_deny: frozenset[str]
    rps: float | None
    burst: int | None
    created_at: datetime
    expires_at: datetime | None
    disabled: bool
    revoked_at: datetime | None
    capture_bytes: int | None = None

    def usable_at(self, now: datetime) -> str | None:
        """``None`` if the key may be used at ``now``, else the reason it may not."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "key_revoked"
        if self.disabled:
            return "key_disabled"
        if self.expires_at is not None and self.expires_at <= now:
            return "key_expired"
        return None

    def status_at(self, now: datetime) -> str:
        """``active``, ``revoked``, ``disabled`` or ``expired``: ``usable_at`` in a word."""
        reason = self.usable_at(now)
        return "active" if reason is None else reason.removeprefix("key_")

"""Recurring jobs: a schedule names the latest slot due; the worker enqueues each slot once.

A slot is enqueued with the idempotency key ``schedule:<name>:<slot in ISO 8601>``, so any number
of workers polling the same schedule make one job of it. Only the latest slot is enqueued: after a
worker was down across several slots, one job runs for the newest, and its handler catches up on
what the missed ones would have done (a period close closes every period still open). All times
are UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = ["Due", "Schedule", "daily", "every", "monthly", "slot_key"]

Due = Callable[[datetime], datetime | None]
"""Given now, the latest slot at or before it (``None``: none yet)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _slot_payload(slot: datetime) -> dict[str, Any]:
    return {"slot": slot.isoformat()}


@dataclass(frozen=True)
class Schedule:
    """Enqueue a ``kind`` job for every slot ``due`` names, with ``payload(slot)``
    (default: ``{"slot": "<ISO 8601>"}``)."""

    name: str
    kind: str
    due: Due
    payload: Callable[[datetime], dict[str, Any]] = field(default=_slot_payload)

    def key(self, slot: datetime) -> str:
        return slot_key(self.name, slot)


def slot_key(name: str, slot: datetime) -> str:
    """The idempotency key of schedule ``name``'s job for ``slot``."""
    return f"schedule:{name}:{slot.astimezone(UTC).isoformat()}"


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: schedules work in aware UTC")
    return now.astimezone(UTC)


def monthly(day: int, hour: int = 0) -> Due:
    """Slots at ``hour``:00 on ``day`` of every month (``day`` 1-28, so every month has it)."""
    if not 1 <= day <= 28:
        raise ValueError(f"monthly day must be 1 to 28, not {day}")
    _check_hour(hour)

    def due(now: datetime) -> datetime:
        now = _utc(now)
        slot = datetime(now.year, now.month, day, hour, tzinfo=UTC)
        if slot <= now:
            return slot
        year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
        return datetime(year, month, day, hour, tzinfo=UTC)

    return due


def daily(hour: int, minute: int = 0) -> Due:
    """Slots at ``hour``:``minute`` every day."""
    _check_hour(hour)
    if not 0 <= minute <= 59:
        raise ValueError(f"minute must be 0 to 59, not {minute}")

    def due(now: datetime) -> datetime:
        now = _utc(now)
        slot = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return slot if slot <= now else slot - timedelta(days=1)

    return due


def every(seconds: float) -> Due:
    """Slots every ``seconds``, counted from the Unix epoch (so every worker agrees on them)."""
    if seconds < 1:
        raise ValueError(f"a schedule's period is at least 1 second, not {seconds}")
    period = timedelta(seconds=seconds)

    def due(now: datetime) -> datetime:
        elapsed = _utc(now) - _EPOCH
        return _EPOCH + (elapsed // period) * period

    return due


def _check_hour(hour: int) -> None:
    if not 0 <= hour <= 23:
        raise ValueError(f"hour must be 0 to 23, not {hour}")

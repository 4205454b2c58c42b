"""A job as stored in the ``jobs`` table, and the states it goes through.

::

    queued ──claim──▶ running ──complete──▶ done
      ▲                 │ │
      └──fail (retry)───┘ └──fail (last attempt, or permanent)──▶ dead
    dead / cancelled ──retry──▶ queued        queued / running / dead ──cancel──▶ cancelled

A running job whose lease expires (its worker died) is claimed again as if it had failed: the
next claim counts another attempt, and a job out of attempts goes dead instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import RowMapping

__all__ = ["CANCELLED", "DEAD", "DONE", "QUEUED", "RUNNING", "STATUSES", "Job"]

QUEUED: Final = "queued"
RUNNING: Final = "running"
DONE: Final = "done"
DEAD: Final = "dead"
CANCELLED: Final = "cancelled"
STATUSES = (QUEUED, RUNNING, DONE, DEAD, CANCELLED)


@dataclass(frozen=True, slots=True)
class Job:
    """One row of ``jobs``. ``attempts`` counts the attempts started, the running one included."""

    id: str
    kind: str
    payload: dict[str, Any]
    status: str
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: float
    run_at: datetime
    locked_by: str | None
    locked_until: datetime | None
    idempotency_key: str | None
    last_error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: RowMapping) -> Job:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        """The job as JSON-ready values (times in ISO 8601, UTC)."""
        out = asdict(self)
        for name, value in out.items():
            if isinstance(value, datetime):
                out[name] = value.isoformat()
        return out

"""The ``logs:`` part of the config: application-log ingestion and its limits per project."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LogPlanLimits", "LogsConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogPlanLimits(_Model):
    """What a plan changes of the defaults below (unset: the default)."""

    per_minute: int | None = Field(default=None, ge=1)
    per_hour: int | None = Field(default=None, ge=1)
    daily_lines: int | None = Field(default=None, ge=1)
    retention_days: int | None = Field(default=None, ge=1)


class LogsConfig(_Model):
    """Application logs sent by projects (``POST /logs/v1`` on the api listener)."""

    enabled: bool = True
    queue_depth: int = Field(
        default=100_000, ge=1, description="Lines a project may have waiting to be written."
    )
    max_batch: int = Field(default=1000, ge=1, description="Lines per request, at most.")
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_message_bytes: int = Field(
        default=32 * 1024, ge=256, description="Longer messages (and stacks) are cut there."
    )
    per_minute: int = Field(default=1000, ge=1, description="Requests per project per minute.")
    per_hour: int = Field(default=50_000, ge=1, description="Requests per project per hour.")
    daily_lines: int = Field(
        default=5_000_000, ge=1, description="Lines per project per UTC day (the quota)."
    )
    retention_days: int = Field(default=7, ge=1, description="Days a line is kept.")
    plans: dict[str, LogPlanLimits] = Field(
        default_factory=dict, description="Per plan name: limits and retention of its projects."
    )
    flush_interval: float = Field(
        default=0.25, gt=0, description="Seconds before the first retry of a failed write."
    )
    write_batch: int = Field(default=50_000, ge=1, description="Lines per write, at most.")

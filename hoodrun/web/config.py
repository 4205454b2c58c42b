"""The ``web:`` part of the config: the customer portal and the control center."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["WebConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebConfig(_Model):
    """Pages on the api listener: ``/portal`` for customers, ``/control`` for operators."""

    portal: bool = True
    control: bool = True
    public_url: str | None = Field(
        default=None,
        description="How people reach the api listener (links in mail); default: api_listen.",
    )
    gateway_url: str | None = Field(
        default=None, description="The endpoint customers call (snippets); default: listen."
    )
    assets_dir: Path = Field(
        default=Path("node_modules"),
        description="npm's install of htmx.org and chart.js (scripts/setup runs npm ci); "
        "relative: to the working directory, else to the checkout the package runs from.",
    )
    secure_cookies: bool = Field(default=False, description="Set behind HTTPS.")

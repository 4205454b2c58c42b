"""``hoodrun db ...``: the business database's schema."""

from __future__ import annotations

import asyncio

import typer

from hoodrun.cli import config_of, fail, stderr
from hoodrun.store import StoreError, safe_url, upgrade

__all__ = ["app"]

app: typer.Typer = typer.Typer(no_args_is_help=True, help="Manage the business database.")


@app.command("upgrade")
def upgrade_command(ctx: typer.Context) -> None:
    """Create or migrate the database schema to the latest version (safe to run again)."""
    url = config_of(ctx).database_url
    try:
        asyncio.run(upgrade(url))
    except StoreError as exc:
        fail(str(exc))
    stderr.print(f"Database {safe_url(url)} is up to date.")

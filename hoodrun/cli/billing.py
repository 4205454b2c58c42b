"""``hoodrun billing ...``: closing periods (and, later, invoices).

Commands open what they need through ``_stores``: the business database and the analytics
store. The embedded analytics store (chDB) admits one process per directory: while ``hoodrun up``
runs on the same ``data_dir`` it holds the store, and the work has to run inside the platform, as
a job on its queue (``period-close``), instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import DBAPIError

from hoodrun.cli import config_of, fail, stderr, stdout
from hoodrun.config import Config
from hoodrun.store import Store, StoreError

if TYPE_CHECKING:
    from hoodrun.billing.close import CloseResult
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["app"]

app: typer.Typer = typer.Typer(no_args_is_help=True, help="Close billing periods.")

_IN_USE = (
    "while `hoodrun up` runs on this data_dir it holds the embedded analytics store: run the "
    "close inside the platform instead, as a period-close job on its queue"
)


@asynccontextmanager
async def _stores(config: Config) -> AsyncIterator[tuple[Store, AnalyticsStore]]:
    """The business store and the analytics store (its tables made if missing), open."""
    # Loaded here: the analytics engine is large, and most commands never need it.
    from hoodrun.telemetry.store import open_analytics

    analytics = open_analytics(config)
    try:
        await analytics.setup(config.telemetry.retention)
        async with Store(config.database_url) as store:
            yield store, analytics
    finally:
        await analytics.aclose()


async def _close(
    config: Config, period: str, orgs: list[str] | None, progress: Progress
) -> CloseResult:
    from hoodrun.billing.close import PeriodCloser
    from hoodrun.telemetry.rollup import Rollups

    async with _stores(config) as (store, analytics):
        # Hours whose rollup fell behind the raw rows (a crash between a write and its rollup) are
        # rebuilt first, so they are billed in this period rather than as late usage in the next.
        retention = config.telemetry.retention
        await Rollups(analytics, retention.raw_days).catch_up(datetime.now(UTC))
        task = progress.add_task(f"closing {period}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return await PeriodCloser(store, analytics, config).close(
            period, orgs=orgs, progress=advance, actor="cli"
        )


def _render(result: CloseResult) -> None:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=result.period)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("closed", f"{len(result.closed):,}")
    table.add_row("already closed (skipped)", f"{len(result.skipped):,}")
    table.add_row("no contract", f"{len(result.no_contract):,}")
    table.add_row("errors", f"{len(result.errors):,}")
    for currency, amount in result.totals.items():
        table.add_row(f"total {currency} (before credits)", f"{amount.amount:,}")
    stdout.print(table)
    for item in result.unbilled:
        if item.priced:
            stderr.print(
                f"[yellow]not billed:[/yellow] org {escape(item.org_id)} in {item.period}: "
                f"{item.requests:,} requests, {item.compute_units:,} compute units "
                f"({escape(item.reason)})"
            )
    for message in result.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {escape(message)}")
    for org, message in result.errors.items():
        stderr.print(f"[red]error:[/red] org {escape(org)}: {escape(message)}")


@app.command("close")
def close_command(
    ctx: typer.Context,
    period: Annotated[str, typer.Option("--period", help="The month to close, YYYY-MM (UTC).")],
    org: Annotated[
        list[str] | None, typer.Option("--org", help="Only this org id (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Close a month: one frozen snapshot of usage and rated lines per org with a contract.

    Closing again is safe: orgs closed already are skipped. Exits 1 when an org could not be
    closed (each is named).
    """
    from hoodrun.billing.close import CloseError, closable
    from hoodrun.telemetry.store import StoreError as AnalyticsError

    config = config_of(ctx)
    try:  # before opening anything: the analytics engine takes seconds to load
        closable(period, datetime.now(UTC))
    except CloseError as exc:
        fail(str(exc))
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=stderr, transient=True) as progress:
            result = asyncio.run(_close(config, period, org, progress))
    except CloseError as exc:
        fail(str(exc))
    except AnalyticsError as exc:
        hint = "" if config.analytics_url else f"; {_IN_USE}"
        fail(f"analytics store: {exc}{hint}")
    except StoreError as exc:
        fail(f"database: {exc}")
    except DBAPIError as exc:  # e.g. no tables: `hoodrun db upgrade` never ran
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        fail(f"database: {reason} (has `hoodrun db upgrade` run?)")
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2))
    else:
        _render(result)
    if not result.ok:
        raise typer.Exit(1)

"""``hoodrun usage``: requests, compute units, errors and latency from the analytics store.

The embedded analytics store (chDB) admits one process per directory: while ``hoodrun up`` runs on
the same ``data_dir``, ask its API (``/api/v1/usage``) instead. ``--org`` and ``--project`` take
names as well as ids; names are looked up in the business database.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from hoodrun.cli import config_of, fail, stderr
from hoodrun.config import Config
from hoodrun.store import Store
from hoodrun.store import StoreError as BusinessStoreError
from hoodrun.store.tables import orgs, projects
from hoodrun.telemetry.reporting import GROUP_COLUMNS, Reports

__all__ = ["usage_command"]

_TIME_HELP = "ISO date or date-time (UTC unless it has an offset), or a span ago such as 24h or 7d"


async def _ids(config: Config, org: str | None, project: str | None) -> tuple[str | None, ...]:
    """Org and project ids for names (ids pass through without a database lookup)."""
    if (org is None or org.startswith("org_")) and (project is None or project.startswith("prj_")):
        return org, project
    try:
        async with Store(config.database_url) as store, store.connect() as conn:
            if org is not None and not org.startswith("org_"):
                found = await conn.scalar(select(orgs.c.id).where(orgs.c.name == org))
                if found is None:
                    raise ValueError(f"no org named {org!r}")
                org = str(found)
            if project is not None and not project.startswith("prj_"):
                if org is None:
                    raise ValueError("a project name needs --org (or give its id, prj_...)")
                where = (projects.c.org_id == org) & (projects.c.name == project)
                found = await conn.scalar(select(projects.c.id).where(where))
                if found is None:
                    raise ValueError(f"no project named {project!r} in that org")
                project = str(found)
    except DBAPIError as exc:  # e.g. no tables yet: `hoodrun db upgrade` never ran
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise ValueError(f"cannot look up names in the database ({reason}); give ids") from exc
    return org, project


async def _report(config: Config, **options: Any) -> dict[str, Any]:
    # Loaded here: the analytics engine is large, and most commands never need it.
    from hoodrun.telemetry.store import open_analytics

    org, project = await _ids(config, options.pop("org"), options.pop("project"))
    store = open_analytics(config)
    try:
        retention = config.telemetry.retention
        reports = Reports(store, raw_days=retention.raw_days, hourly_days=retention.hourly_days)
        start, end = reports.bounds(options.pop("from_"), options.pop("to"), options["source"])
        return await reports.usage(start=start, end=end, org=org, project=project, **options)
    finally:
        await store.aclose()


def _number(value: int | float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _window(value: str, every: str) -> str:
    when = datetime.fromisoformat(value).astimezone(UTC)
    return when.strftime("%Y-%m-%d" if every == "day" else "%Y-%m-%d %H:%M")


def _render(report: dict[str, Any]) -> None:
    caption = (
        f"{_window(report['start'], 'minute')} to {_window(report['end'], 'minute')} UTC, "
        f"from {report['table']}."
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption=caption)
    every = report["every"]
    if every:
        table.add_column("window", no_wrap=True)
    for column in report["by"]:
        table.add_column(column, no_wrap=column.endswith("_id"))
    metrics = ("requests", "CU", "errors", "error %", "p50 ms", "p95 ms", "p99 ms", "cache %")
    for header in metrics:
        table.add_column(header, justify="right", no_wrap=True)
    for row in report["rows"]:
        cells = [_window(row["window"], every)] if every else []
        cells += [escape(str(row[column])) for column in report["by"]]
        cells += [
            _number(row["requests"]),
            _number(row["compute_units"]),
            _number(row["errors"]),
            _number(row["error_rate"] * 100),
            _number(row["latency_p50_ms"]),
            _number(row["latency_p95_ms"]),
            _number(row["latency_p99_ms"]),
            _number(row["cache_hit_ratio"] * 100),
        ]
        table.add_row(*cells)
    # A console made now measures the terminal now; rich reads $COLUMNS once, when it is made.
    Console(highlight=False).print(table)


def usage_command(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Only this org (name or id).")] = None,
    project: Annotated[
        str | None, typer.Option(help="Only this project (id, or name with --org).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this key id (key_...).")] = None,
    chain: Annotated[str | None, typer.Option(help="Only this chain, e.g. eth.")] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help=f"Start: {_TIME_HELP}; default 24h before --to.")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help=f"End: {_TIME_HELP}; default now.")] = None,
    by: Annotated[
        str,
        typer.Option(
            help=f"Group by a comma list of {', '.join(GROUP_COLUMNS)} (or org, project, key); "
            "'' for totals."
        ),
    ] = "chain,method",
    every: Annotated[
        str | None, typer.Option(help="One row per window: minute, hour or day.")
    ] = None,
    source: Annotated[
        str, typer.Option(help="auto (raw rows while kept, else rollups), raw or rollup.")
    ] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show requests, compute units, errors and latency by chain and method (or other groups)."""
    # Loaded here: the analytics store brings pyarrow, which most commands never need.
    from hoodrun.telemetry.store import StoreError

    config = config_of(ctx)
    options: dict[str, Any] = {
        "org": org,
        "project": project,
        "key": key,
        "chain": chain,
        "from_": from_,
        "to": to,
        "by": by,
        "every": every,
        "source": source,
    }
    try:
        report = asyncio.run(_report(config, **options))
    except ValueError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(f"analytics store: {exc}")
    except BusinessStoreError as exc:
        fail(f"looking up names: {exc}")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if not report["rows"] or not any(row["requests"] for row in report["rows"]):
        stderr.print("No requests in this range.")
        return
    _render(report)

"""``hoodrun logs``: a project's application logs and RPC request records, from the analytics store.

The embedded analytics store (chDB) admits one process per directory: while ``hoodrun up`` runs on
the same ``data_dir``, ask its API (``/logs/v1/...``) instead. ``--project`` takes an id
(``prj_...``), or a name with ``--org``; names are looked up in the business database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hoodrun.cli import config_of, fail, stderr
from hoodrun.cli.usage import _ids
from hoodrun.store import StoreError as BusinessStoreError

if TYPE_CHECKING:
    from hoodrun.explorer.query import LogFilter, LogQuery
    from hoodrun.explorer.requests import RequestExplorer
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["app"]

app: typer.Typer = typer.Typer(
    no_args_is_help=True,
    help="A project's logs and request records (the analytics store; not while `hoodrun up` "
    "holds an embedded store: ask its API then).",
)

_TIME = "ISO date or date-time (UTC unless it has an offset), or a span ago such as 24h or 7d"
Project = Annotated[str, typer.Option(help="The project: its id, or its name with --org.")]
Org = Annotated[str | None, typer.Option(help="The project's org (name or id).")]
From = Annotated[str | None, typer.Option("--from", help=f"Start: {_TIME}; default 24h ago.")]
To = Annotated[str | None, typer.Option("--to", help=f"End: {_TIME}; default now.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Level = Annotated[
    str | None, typer.Option(help="A level, a comma list (warn,error), or a minimum (>=warn).")
]
Service = Annotated[str | None, typer.Option(help="A service, or a comma list.")]
Attr = Annotated[
    list[str] | None, typer.Option("--attr", help="KEY=VALUE an attribute must have (repeat).")
]
Query = Annotated[
    str | None,
    typer.Option("--query", "-q", help='Words that must all appear; "a phrase" as a substring.'),
]
Cursor = Annotated[str | None, typer.Option(help="The next page: the cursor the last one gave.")]


def _run(
    ctx: typer.Context,
    org: str | None,
    project: str,
    work: Callable[[AnalyticsStore, str, str | None], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """``work(store, project id, org id)`` on the config's analytics store, errors as exits."""
    # Loaded here: the analytics store brings pyarrow (and chDB), which most commands never need.
    from hoodrun.telemetry.store import StoreError, open_analytics

    config = config_of(ctx)

    async def main() -> dict[str, Any]:
        org_id, project_id = await _ids(config, org, project)
        store = open_analytics(config)
        try:
            return await work(store, project_id or project, org_id)
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    except ValueError as exc:
        fail(str(exc))
    except StoreError as exc:
        fail(f"analytics store: {exc}")
    except BusinessStoreError as exc:
        fail(f"looking up names: {exc}")


def _queries(store: AnalyticsStore) -> LogQuery:
    from hoodrun.explorer.query import LogQuery

    return LogQuery(store)


def _explorer(store: AnalyticsStore) -> RequestExplorer:
    from hoodrun.explorer.requests import RequestExplorer

    return RequestExplorer(store)


def _filters(
    level: str | None = None,
    service: str | None = None,
    attr: list[str] | None = None,
    query: str | None = None,
) -> LogFilter:
    from hoodrun.explorer.query import LogFilter, parse_attributes

    return LogFilter.parse(
        level=level, service=service, attributes=parse_attributes(attr or []), q=query
    )


def _time(value: str, spec: str = "%Y-%m-%d %H:%M:%S") -> str:
    when = datetime.fromisoformat(value)
    text = when.strftime(spec)
    return f"{text}.{when.microsecond // 1000:03d}" if spec.endswith("%S") else text


def _table(*columns: str | tuple[str, str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        name, justify = column if isinstance(column, tuple) else (column, "left")
        table.add_column(name, justify=justify, no_wrap=justify == "right")  # type: ignore[arg-type]
    return table


def _show(report: dict[str, Any], as_json: bool, table: Callable[[dict[str, Any]], Table]) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if not report.get("rows"):
        stderr.print("Nothing in this range.")
        return
    # A console made now measures the terminal now; rich reads $COLUMNS once, when it is made.
    console = Console(highlight=False)
    console.print(table(report))
    minute = "%Y-%m-%d %H:%M"
    console.print(f"{_time(report['start'], minute)} to {_time(report['end'], minute)} UTC")
    if report.get("next_cursor"):
        stderr.print(f"More: --cursor {report['next_cursor']}")


@app.command("search")
def search(
    ctx: typer.Context,
    project: Project,
    org: Org = None,
    from_: From = None,
    to: To = None,
    level: Level = None,
    service: Service = None,
    attr: Attr = None,
    query: Query = None,
    limit: Annotated[int, typer.Option(help="Lines per page (at most 1000).")] = 50,
    cursor: Cursor = None,
    as_json: Json = False,
) -> None:
    """Log lines, newest first."""

    async def work(store: AnalyticsStore, project_id: str, _: str | None) -> dict[str, Any]:
        logs = _queries(store)
        start, end = logs.bounds(from_, to)
        filters = _filters(level, service, attr, query)
        return await logs.search(
            project_id, start=start, end=end, filters=filters, limit=limit, cursor=cursor
        )

    report = _run(ctx, org, project, work)

    def table(report: dict[str, Any]) -> Table:
        out = _table("time (UTC)", "level", "service", "message")
        for row in report["rows"]:
            message = row["message"].splitlines()[0] if row["message"] else ""
            out.add_row(_time(row["ts"]), row["level"], escape(row["service"]), escape(message))
        return out

    _show(report, as_json, table)


@app.command("top")
def top(
    ctx: typer.Context,
    project: Project,
    org: Org = None,
    from_: From = None,
    to: To = None,
    service: Service = None,
    attr: Attr = None,
    query: Query = None,
    limit: Annotated[int, typer.Option(help="How many errors (at most 1000).")] = 20,
    as_json: Json = False,
) -> None:
    """The most frequent errors (levels error and fatal) by fingerprint."""

    async def work(store: AnalyticsStore, project_id: str, _: str | None) -> dict[str, Any]:
        logs = _queries(store)
        start, end = logs.bounds(from_, to)
        filters = _filters(None, service, attr, query)
        return await logs.top_errors(project_id, start=start, end=end, filters=filters, limit=limit)

    report = _run(ctx, org, project, work)

    def table(report: dict[str, Any]) -> Table:
        out = _table(
            ("count", "right"), ("fatal", "right"), "first seen", "last seen",
            "fingerprint", "sample",
        )  # fmt: skip
        for row in report["rows"]:
            sample = row["sample"].splitlines()[0] if row["sample"] else ""
            out.add_row(
                f"{row['count']:,}", f"{row['fatal']:,}", _time(row["first_seen"]),
                _time(row["last_seen"]), row["fingerprint"][:12], escape(sample),
            )  # fmt: skip
        return out

    _show(report, as_json, table)


@app.command("errors-rate")
def errors_rate(
    ctx: typer.Context,
    project: Project,
    org: Org = None,
    from_: From = None,
    to: To = None,
    service: Service = None,
    attr: Attr = None,
    as_json: Json = False,
) -> None:
    """Lines, error lines (error and fatal) and the error rate per 5 minutes."""

    async def work(store: AnalyticsStore, project_id: str, _: str | None) -> dict[str, Any]:
        logs = _queries(store)
        start, end = logs.bounds(from_, to)
        filters = _filters(None, service, attr)
        return await logs.error_rate(project_id, start=start, end=end, filters=filters)

    report = _run(ctx, org, project, work)

    def table(report: dict[str, Any]) -> Table:
        out = _table("window", ("lines", "right"), ("errors", "right"), ("%", "right"))
        quiet = sum(1 for row in report["rows"] if not row["total"])
        if quiet:
            out.caption = f"{quiet:,} windows without lines are not shown."
        for row in report["rows"]:
            if not row["total"]:
                continue
            out.add_row(
                _time(row["window"], "%Y-%m-%d %H:%M"),
                f"{row['total']:,}",
                f"{row['errors']:,}",
                f"{row['rate'] * 100:.1f}",
            )
        return out

    _show(report, as_json, table)


@app.command("volume")
def volume(
    ctx: typer.Context,
    project: Project,
    org: Org = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", help=f"Start: {_TIME}; default 24h ago (7 days with --daily)."),
    ] = None,
    to: To = None,
    daily: Annotated[bool, typer.Option(help="Lines per UTC day instead of per level.")] = False,
    level: Level = None,
    service: Service = None,
    as_json: Json = False,
) -> None:
    """Lines per level (or per day, with --daily)."""

    async def work(store: AnalyticsStore, project_id: str, _: str | None) -> dict[str, Any]:
        logs = _queries(store)
        filters = _filters(level, service)
        if daily:
            start, end = logs.day_bounds(from_, to)
            return await logs.daily(project_id, start=start, end=end, filters=filters)
        start, end = logs.bounds(from_, to)
        return await logs.volume(project_id, start=start, end=end, filters=filters)

    report = _run(ctx, org, project, work)

    def table(report: dict[str, Any]) -> Table:
        out = _table("day" if daily else "level", ("lines", "right"))
        for row in report["rows"]:
            out.add_row(row["day"] if daily else row["level"], f"{row['lines']:,}")
        out.add_row("total", f"{report['total']:,}", style="bold")
        return out

    _show(report, as_json, table)


@app.command("requests")
def requests(
    ctx: typer.Context,
    project: Project,
    request_id: Annotated[
        str | None, typer.Argument(help="Show this request and its calls instead of a list.")
    ] = None,
    org: Org = None,
    from_: From = None,
    to: To = None,
    chain: Annotated[str | None, typer.Option(help="A chain, or a comma list.")] = None,
    method: Annotated[str | None, typer.Option(help="A method, or a comma list.")] = None,
    outcome: Annotated[
        str | None, typer.Option(help="ok, rpc_error, a refusal reason; or a comma list.")
    ] = None,
    error_code: Annotated[int | None, typer.Option(help="A JSON-RPC error code.")] = None,
    latency_above: Annotated[
        float | None, typer.Option(help="Only calls slower than this (ms).")
    ] = None,
    key: Annotated[str | None, typer.Option(help="A key id (key_...), or a comma list.")] = None,
    limit: Annotated[int, typer.Option(help="Calls per page (at most 1000).")] = 50,
    cursor: Cursor = None,
    as_json: Json = False,
) -> None:
    """The project's RPC calls, newest first, or one request's calls (with their params and
    answers when the project captures payloads)."""

    async def work(store: AnalyticsStore, project_id: str, org_id: str | None) -> dict[str, Any]:
        explorer = _explorer(store)
        if request_id is not None:
            start = end = None
            if from_ is not None or to is not None:
                start, end = explorer.bounds(from_, to)
            found = await explorer.detail(project_id, request_id, org=org_id, start=start, end=end)
            if found is None:
                raise ValueError(f"no request {request_id!r} in this project")
            return found
        start, end = explorer.bounds(from_, to)
        return await explorer.search(
            project_id, org=org_id, start=start, end=end, chain=chain, method=method,
            outcome=outcome, error_code=error_code, latency_above=latency_above, key=key,
            limit=limit, cursor=cursor,
        )  # fmt: skip

    report = _run(ctx, org, project, work)
    if request_id is not None and not as_json:
        _detail(report)
        return

    def table(report: dict[str, Any]) -> Table:
        out = _table(
            "time (UTC)", "request", "chain", "method", "outcome",
            ("code", "right"), ("ms", "right"), ("CU", "right"),
        )  # fmt: skip
        for row in report["rows"]:
            index = f"#{row['call_index']}" if row["batch_size"] > 1 else ""
            out.add_row(
                _time(row["ts"]), f"{row['request_id']}{index}", escape(row["chain"]),
                escape(row["method"]), escape(row["outcome"]), str(row["error_code"] or ""),
                f"{row['latency_ms']:.1f}", f"{row['compute_units']:,}",
            )  # fmt: skip
        return out

    _show(report, as_json, table)


def _detail(found: dict[str, Any]) -> None:
    console = Console(highlight=False)
    console.print(
        f"request {escape(found['request_id'])} at {_time(found['ts'])} UTC on "
        f"{escape(found['chain'])}, key {escape(found['key_id'])}: HTTP {found['status']}, "
        f"{found['latency_ms']:.1f} ms, upstream {escape(found['upstream'] or '-')} "
        f"({found['attempts']} attempts), {found['bytes_in']:,} bytes in, "
        f"{found['bytes_out']:,} out, {found['compute_units']:,} CU"
    )
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for name in ("call", "method", "outcome", "code", "cache", "CU"):
        table.add_column(name)
    for call in found["calls"]:
        table.add_row(
            str(call["call_index"]), escape(call["method"]), escape(call["outcome"]),
            str(call["error_code"] or ""), "hit" if call["cache_hit"] else "",
            str(call["compute_units"]),
        )  # fmt: skip
    console.print(table)
    if not found["payloads_captured"]:
        console.print(f"No params or answers: {found['payloads_note']}.")
        return
    for call in found["calls"]:
        if call["params_excerpt"] is None:
            continue
        console.print(f"call {call['call_index']} {escape(call['method'])}")
        console.print(f"  params:   {escape(call['params_excerpt'])}", soft_wrap=True)
        console.print(
            f"  response: {escape(call['response_excerpt'] or '(none sent)')}", soft_wrap=True
        )

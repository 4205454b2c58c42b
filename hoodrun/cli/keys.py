"""``hoodrun keys ...``: create, list, show, revoke, rotate, disable, enable; the audit log.

Every command migrates the database first (idempotent, cheap), so a fresh SQLite file works at
once. With ``redis_url`` configured, changes are announced to running gateways over Redis.
A new key goes to stdout alone and everything else to stderr, so
``KEY=$(hoodrun keys create --org acme)`` captures just the key.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hoodrun.api.models import AuditEntryOut, CreatedKeyOut, KeyOut
from hoodrun.cli import config_of, fail, stderr
from hoodrun.config import Config
from hoodrun.keys.durations import parse_duration
from hoodrun.keys.errors import KeysError
from hoodrun.keys.record import KeyRecord
from hoodrun.keys.redis_events import RedisKeyEvents
from hoodrun.keys.service import CreatedKey, KeyService
from hoodrun.store import Store, StoreError, upgrade

__all__ = ["app"]

app: typer.Typer = typer.Typer(no_args_is_help=True, help="Create and manage API keys.")

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
KeyId = Annotated[str, typer.Argument(help="The key's id (key_...), from `hoodrun keys list`.")]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "cli"


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


@asynccontextmanager
async def _service(config: Config) -> AsyncIterator[KeyService]:
    await upgrade(config.database_url)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(config.database_url))
        events = None
        if config.redis_url is not None:
            # Publish only: the CLI has no cache to purge, so no subscription is started.
            events = RedisKeyEvents(config.redis_url, config.redis_prefix)
            stack.push_async_callback(events.aclose)
        yield KeyService(store, config, events)


def _run(ctx: typer.Context, action: Callable[[KeyService], Awaitable[T]]) -> T:
    config = config_of(ctx)

    async def go() -> T:
        async with _service(config) as service:
            return await action(service)

    try:
        return asyncio.run(go())
    except (KeysError, StoreError) as exc:
        fail(str(exc))


def _when(value: datetime | None, default: str = "never") -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else default


def _short(value: datetime | None, default: str = "never") -> str:
    """For tables: UTC, without the zone (the column header says it)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else default


def _table(*headers: str) -> Table:
    """A compact table whose ids and short fixed words are never wrapped or cut (``--json``
    has every field in full)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption="Times are UTC.")
    for header in headers:
        table.add_column(header, no_wrap=header in _FIXED_COLUMNS)
    return table


_FIXED_COLUMNS = frozenset({"id", "start", "status", "action", "target"})


def _print_table(table: Table) -> None:
    # A console made now measures the terminal now; rich reads $COLUMNS once, when it is made.
    Console(highlight=False).print(table)


def _print_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2))


def _print_created(created: CreatedKey, as_json: bool, **extra: Any) -> None:
    now = datetime.now(UTC)
    if as_json:
        out = CreatedKeyOut.of(created.record, now, key=created.key, **extra)
        _print_json(out.model_dump(mode="json"))
        return
    record = created.record
    stderr.print(
        f"Created key [bold]{record.id}[/bold] for org {escape(record.org)}, "
        f"project {escape(record.project)}, plan {escape(record.plan)}; "
        f"expires {_when(record.expires_at)}."
    )
    typer.echo(created.key)
    stderr.print("[yellow]Store this key now: it will not be shown again.[/yellow]")


@app.command()
def create(
    ctx: typer.Context,
    org: Annotated[str, typer.Option(help="Org name; created if new.")],
    project: Annotated[str | None, typer.Option(help="Project; default 'default'.")] = None,
    plan: Annotated[str | None, typer.Option(help="Plan; default the org's or config's.")] = None,
    chains: Annotated[str | None, typer.Option(help="Allowed chains, e.g. eth,base.")] = None,
    origins: Annotated[
        str | None, typer.Option(help="Allowed origins, e.g. https://a.example,https://b.example.")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime: 30d, 12h, 90m or 3600s; default never.")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    allow_methods: Annotated[
        str | None, typer.Option(help="Only these methods (on top of the plan's rules).")
    ] = None,
    deny_methods: Annotated[str | None, typer.Option(help="Also refuse these methods.")] = None,
    rps: Annotated[
        float | None, typer.Option(help="Own steady rate, instead of the plan's.")
    ] = None,
    burst: Annotated[
        int | None, typer.Option(help="Own burst size, instead of the plan's.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print it once."""

    async def action(service: KeyService) -> CreatedKey:
        return await service.create(
            org=org,
            project=project,
            plan=plan,
            chains=_split(chains),
            origins=_split(origins),
            expires_in=parse_duration(expires_in, option="--expires-in") if expires_in else None,
            name=name,
            methods_allow=_split(allow_methods),
            methods_deny=_split(deny_methods) or (),
            rps=rps,
            burst=burst,
            actor=_actor(),
        )

    _print_created(_run(ctx, action), as_json)


def _expires_cell(record: KeyRecord, now: datetime) -> str:
    if record.revoked_at is not None and record.revoked_at > now:
        return f"{_short(record.revoked_at)} (rotated)"
    return _short(record.expires_at)


@app.command("list")
def list_keys(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Only this org (name or id).")] = None,
    as_json: JsonOption = False,
) -> None:
    """List keys (never the keys themselves)."""

    async def action(service: KeyService) -> list[KeyRecord]:
        return await service.list(org=org)

    records = _run(ctx, action)
    now = datetime.now(UTC)
    if as_json:
        _print_json({"keys": [KeyOut.of(r, now).model_dump(mode="json") for r in records]})
        return
    if not records:
        stderr.print("No keys yet: create one with `hoodrun keys create --org NAME`.")
        return
    table = _table("id", "start", "org", "project", "plan", "status", "expires", "created")
    for r in records:
        table.add_row(
            r.id,
            f"{r.start}…",
            escape(r.org),
            escape(r.project),
            escape(r.plan),
            r.status_at(now),
            _expires_cell(r, now),
            _short(r.created_at),
        )
    _print_table(table)


@app.command()
def show(ctx: typer.Context, key_id: KeyId, as_json: JsonOption = False) -> None:
    """Show one key's settings and state."""

    async def action(service: KeyService) -> KeyRecord:
        return await service.get(key_id)

    out = KeyOut.of(_run(ctx, action), datetime.now(UTC)).model_dump(mode="json")
    if as_json:
        _print_json(out)
        return
    table = Table(show_header=False, box=None)
    for field, value in out.items():
        shown = "any" if value is None and field in ("chains", "origins") else value
        if isinstance(shown, list):
            shown = ", ".join(shown) or "-"
        table.add_row(field, escape(str("-" if shown is None else shown)))
    _print_table(table)


def _changed(
    ctx: typer.Context, verb: str, action: Callable[[KeyService], Awaitable[KeyRecord]]
) -> None:
    record = _run(ctx, action)
    status = record.status_at(datetime.now(UTC))
    stderr.print(f"{verb} {record.id} (org {escape(record.org)}): now {status}.")


@app.command()
def revoke(ctx: typer.Context, key_id: KeyId) -> None:
    """Revoke a key at once; gateways stop accepting it within moments."""
    _changed(ctx, "Revoked", lambda service: service.revoke(key_id, actor=_actor()))


@app.command()
def disable(ctx: typer.Context, key_id: KeyId) -> None:
    """Refuse a key until it is enabled again."""
    _changed(ctx, "Disabled", lambda service: service.disable(key_id, actor=_actor()))


@app.command()
def enable(ctx: typer.Context, key_id: KeyId) -> None:
    """Accept a disabled key again."""
    _changed(ctx, "Enabled", lambda service: service.enable(key_id, actor=_actor()))


@app.command()
def rotate(
    ctx: typer.Context,
    key_id: KeyId,
    grace: Annotated[
        str | None, typer.Option(help="How long the old key keeps working, e.g. 1h; default 0.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Replace a key by a new one with the same settings; print the new key once."""

    async def action(service: KeyService) -> tuple[CreatedKey, KeyRecord]:
        created = await service.rotate(
            key_id,
            grace=parse_duration(grace, option="--grace") if grace else None,
            actor=_actor(),
        )
        return created, await service.get(key_id)

    created, old = _run(ctx, action)
    _print_created(created, as_json, rotated_from=old.id)
    if not as_json:
        stderr.print(f"The old key {old.id} stops working at {_when(old.revoked_at)}.")


@app.command()
def audit(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 50,
    target: Annotated[str | None, typer.Option(help="Only entries about this id.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the audit log of key, org and project changes."""

    async def action(service: KeyService) -> list[AuditEntryOut]:
        entries = await service.audit(limit=limit, target_id=target)
        return [AuditEntryOut.model_validate(e) for e in entries]

    entries = _run(ctx, action)
    if as_json:
        _print_json({"entries": [e.model_dump(mode="json") for e in entries]})
        return
    table = _table("at", "actor", "action", "target", "details")
    for e in entries:
        details = json.dumps(e.details, separators=(",", ":"), default=str)
        table.add_row(_short(e.at), escape(e.actor), e.action, e.target_id, escape(details))
    _print_table(table)

"""``hoodrun ledger ...``: verify the hash-chained money ledger and its signed exports, export a
day, list entries, print the public key auditors verify exports with.

``verify`` prints one line per check on stdout and exits 1 if any fails, naming the first bad
entry; other errors print ``error: ...`` on stderr and exit 1. Unlike ``hoodrun keys``, these
commands never migrate the database: an audit does not change what it audits
(``hoodrun db upgrade`` does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hoodrun.billing.ledger import (
    Ledger,
    LedgerError,
    Verification,
    default_archive_dir,
    default_signing_key_path,
    key_fingerprint,
    load_or_create_signing_key,
    load_public_key,
    load_signing_key,
    public_key_pem,
    verify_export,
)
from hoodrun.cli import config_of, fail, stderr
from hoodrun.config import Config
from hoodrun.store import Store, StoreError

__all__ = ["app"]

app: typer.Typer = typer.Typer(
    no_args_is_help=True,
    help="The hash-chained money ledger: verify it, export days, list entries.",
)

T = TypeVar("T")


def _run(ctx: typer.Context, action: Callable[[Ledger, Config], Awaitable[T]]) -> T:
    config = config_of(ctx)

    async def go() -> T:
        async with Store(config.database_url) as store:
            return await action(Ledger(store), config)

    try:
        return asyncio.run(go())
    except LedgerError as exc:
        fail(str(exc))
    except StoreError as exc:
        unmigrated = any(s in str(exc) for s in ("no such table", "does not exist"))
        fail(f"{exc}; run `hoodrun db upgrade`" if unmigrated else str(exc))


def _public_key(config: Config, path: Path | None) -> Ed25519PublicKey:
    try:
        if path is not None:
            return load_public_key(path)
        key_path = default_signing_key_path(config)
        if not key_path.exists():
            fail(
                f"no ledger signing key at {key_path}: pass --public-key FILE "
                "(the PEM `hoodrun ledger public-key` prints)"
            )
        return load_signing_key(key_path).public_key()
    except LedgerError as exc:
        fail(str(exc))


def _report(subject: str, result: Verification) -> None:
    if result.ok:
        tail = f", last hash {result.last_hash}" if result.last_hash else ""
        typer.echo(f"{subject} ok: {result.reason}{tail}")
    elif result.first_bad is not None:
        typer.echo(f"{subject} broken at entry #{result.first_bad}: {result.reason}")
    else:
        typer.echo(f"{subject} broken: {result.reason}")


@app.command()
def verify(
    ctx: typer.Context,
    export: Annotated[
        list[Path] | None,
        typer.Option(
            "--export",
            help="Also check this export file: signature, chain, and that the ledger agrees.",
            dir_okay=False,
        ),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="PEM public key of the exports (default: the signing key's)."),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(help="Check the export files alone, without the database."),
    ] = False,
) -> None:
    """Check the ledger's hash chain (and exports); exit 1 naming the first bad entry."""
    config = config_of(ctx)
    exports = export or []
    if offline:
        if not exports:
            fail("--offline checks export files: give them with --export FILE")
        offline_key = _public_key(config, public_key)
        results = [(f"export {path}", verify_export(path, offline_key)) for path in exports]
    else:
        key = _public_key(config, public_key) if exports else None

        async def check(ledger: Ledger, _: Config) -> list[tuple[str, Verification]]:
            found = [("ledger", await ledger.verify())]
            if key is not None:
                for path in exports:
                    found.append((f"export {path}", await ledger.verify_against_export(path, key)))
            return found

        results = _run(ctx, check)
    for subject, result in results:
        _report(subject, result)
    if not all(result.ok for _, result in results):
        raise typer.Exit(1)


@app.command("export")
def export_command(
    ctx: typer.Context,
    day: Annotated[
        str | None, typer.Option(help="The UTC day, YYYY-MM-DD (default: yesterday).")
    ] = None,
    missing: Annotated[
        bool,
        typer.Option(
            "--missing", help="Export every day not exported yet, through yesterday (catch up)."
        ),
    ] = False,
) -> None:
    """Write the signed export of a day into the archive directory (safe to run again)."""
    if day is not None and missing:
        fail("give either --day or --missing")
    try:
        chosen = date.fromisoformat(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    except ValueError:
        fail(f"--day {day!r}: use YYYY-MM-DD")

    async def go(ledger: Ledger, config: Config) -> list[Path]:
        key = load_or_create_signing_key(default_signing_key_path(config))
        archive = default_archive_dir(config)
        if missing:
            return await ledger.export_missing(archive, key)
        return [await ledger.export_day(chosen, archive, key)]

    paths = _run(ctx, go)
    for path in paths:
        typer.echo(str(path))
    if not paths:
        stderr.print("Nothing to export: every day through yesterday is exported.")


@app.command("list")
def list_command(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option(help="Only this org's entries (its id).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest entries.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """The newest entries, oldest first."""

    async def go(ledger: Ledger, _: Config) -> list[dict[str, object]]:
        entries = await ledger.entries(org_id=org, limit=limit, newest_first=True)
        return [entry.line() for entry in reversed(entries)]

    lines = _run(ctx, go)
    if as_json:
        for line in lines:
            typer.echo(json.dumps(line, sort_keys=True))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption="Times are UTC.")
    for header in ("seq", "at", "kind", "org", "reference", "amount", "hash"):
        table.add_column(header, no_wrap=True)
    for line in lines:
        table.add_row(
            str(line["seq"]),
            str(line["at"])[:19].replace("T", " "),
            escape(str(line["kind"])),
            escape(str(line["org_id"])),
            escape(str(line["reference"])),
            f"{line['amount']} {line['currency']}",
            f"{str(line['hash'])[:12]}…",
        )
    Console(highlight=False).print(table)


@app.command("public-key")
def public_key_command(ctx: typer.Context) -> None:
    """Print the exports' public key (PEM), made with the signing key if there is none yet."""
    path = default_signing_key_path(config_of(ctx))
    try:
        key = load_or_create_signing_key(path)
    except LedgerError as exc:
        fail(str(exc))
    typer.echo(public_key_pem(key), nl=False)
    stderr.print(f"Key {key_fingerprint(key)[:16]} (SHA-256 of the raw key), from {path}.")

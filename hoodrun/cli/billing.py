"""``hoodrun billing ...``: close periods, look into invoices, refund, and keep billing accounts.

``close`` opens the business database and the analytics store. The embedded analytics store
(chDB) admits one process per directory: while ``hoodrun up`` runs on the same ``data_dir`` it
holds the store, and the work has to run inside the platform, as a job on its queue
(``period-close``), instead.

The other commands need the business database only: ``invoices``, ``show`` and ``document`` read;
``refund`` records a refund and enqueues its ``refund-process`` job (the worker pays it back);
``account`` sets what an org's invoices are addressed to; ``verify-snapshots`` recomputes the
closing snapshots' content hashes. They never migrate the database (``hoodrun db upgrade`` does).
An invoice is named by its id (``inv_...``) or its number (``HR-2026-000001``).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from hoodrun.billing.invoices import (
    STATUSES,
    BillingAccount,
    CreditNote,
    Invoice,
    InvoiceBook,
    InvoiceError,
    InvoiceNotFound,
    Refund,
)
from hoodrun.billing.ledger import Ledger
from hoodrun.cli import config_of, fail, stderr, stdout
from hoodrun.cli._billing_show import (
    ACCOUNT_FIELDS,
    account_json,
    account_table,
    invoice_json,
    invoice_view,
    invoices_table,
    summary_json,
)
from hoodrun.config import Config
from hoodrun.jobs import Job, JobError, JobQueue
from hoodrun.metering.money import Money, MoneyError
from hoodrun.store import Store, StoreError, write_audit
from hoodrun.store.tables import billing_accounts, closing_snapshots, orgs

if TYPE_CHECKING:
    from hoodrun.billing.close import CloseResult
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["app"]

app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="Close billing periods; invoices, refunds, billing accounts."
)

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


# --- invoices, refunds, accounts, snapshots ------------------------------------------------------

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
InvoiceRef = Annotated[
    str, typer.Argument(help="The invoice's number (HR-2026-000001) or id (inv_...).")
]
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_VERIFY_BATCH = 500


class _Refused(Exception):
    """What was asked cannot be done; the message says why (one line for ``fail``)."""


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "cli"


def _run(ctx: typer.Context, action: Callable[[Store, Config], Awaitable[T]]) -> T:
    """``action`` on the open business store; its errors as one line and exit 1."""
    config = config_of(ctx)

    async def go() -> T:
        async with Store(config.database_url) as store:
            return await action(store, config)

    try:
        return asyncio.run(go())
    except (_Refused, InvoiceError, JobError) as exc:
        fail(str(exc))
    except StoreError as exc:
        unmigrated = any(s in str(exc) for s in ("no such table", "does not exist"))
        fail(f"database: {exc}{'; run `hoodrun db upgrade`' if unmigrated else ''}")
    except DBAPIError as exc:  # e.g. no tables: `hoodrun db upgrade` never ran
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        fail(f"database: {reason} (has `hoodrun db upgrade` run?)")


def _book(store: Store, config: Config) -> InvoiceBook:
    return InvoiceBook(store, config, ledger=Ledger(store))


async def _find(book: InvoiceBook, ref: str) -> Invoice:
    """The invoice numbered ``ref``, else the one whose id it is."""
    lookups = (book.get, book.by_number) if ref.startswith("inv_") else (book.by_number, book.get)
    for lookup in lookups:
        try:
            return await lookup(ref)
        except InvoiceNotFound:
            continue
    raise InvoiceNotFound(f"no invoice numbered {ref!r} or with that id")


def _check_period(period: str | None) -> None:
    if period is not None and not _PERIOD.match(period):
        fail(f"period {period!r}: a month written YYYY-MM, like 2026-11")


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@app.command("invoices")
def list_invoices(
    ctx: typer.Context,
    org: Annotated[str | None, typer.Option("--org", help="Only this org's (org_...).")] = None,
    status: Annotated[
        str | None, typer.Option(help=f"Only invoices in this state: {', '.join(STATUSES)}.")
    ] = None,
    period: Annotated[str | None, typer.Option(help="Only this month's, YYYY-MM.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List invoices, newest first."""
    if status is not None and status not in STATUSES:
        fail(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    _check_period(period)
    found = _run(
        ctx,
        lambda store, config: _book(store, config).list(
            org_id=org, status=status, period=period, limit=limit
        ),
    )
    if as_json:
        _print_json({"invoices": [summary_json(invoice) for invoice in found]})
    elif not found:
        stderr.print("No invoices.")
    else:
        Console(highlight=False).print(invoices_table(found))


@dataclass(frozen=True, slots=True)
class _Shown:
    invoice: Invoice
    refunds: list[Refund]
    notes: list[CreditNote]


@app.command()
def show(ctx: typer.Context, ref: InvoiceRef, as_json: JsonOption = False) -> None:
    """Show one invoice in full.

    Its lines, totals, conversion, provider fields, refunds and credit notes.
    """

    async def action(store: Store, config: Config) -> _Shown:
        book = _book(store, config)
        invoice = await _find(book, ref)
        return _Shown(invoice, await book.refunds(invoice.id), await book.credit_notes(invoice.id))

    shown = _run(ctx, action)
    if as_json:
        _print_json(invoice_json(shown.invoice, shown.refunds, shown.notes))
    else:
        stdout.print(invoice_view(shown.invoice, shown.refunds, shown.notes))


@dataclass(frozen=True, slots=True)
class _Addressed:
    invoice: Invoice
    account: BillingAccount | None
    org_name: str


@app.command()
def document(
    ctx: typer.Context,
    ref: InvoiceRef,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", dir_okay=False, help="The file to write: .html or .pdf."),
    ],
) -> None:
    """Write an invoice's document (HTML or PDF, by the file's suffix).

    The same document the customer downloads from the admin API.
    """
    kind = {".html": "HTML", ".htm": "HTML", ".pdf": "PDF"}.get(out.suffix.lower())
    if kind is None:
        fail(f"--out {out}: name a .html or .pdf file")

    async def action(store: Store, config: Config) -> _Addressed:
        book = _book(store, config)
        invoice = await _find(book, ref)
        return _Addressed(
            invoice, await book.account(invoice.org_id), await book.org_name(invoice.org_id)
        )

    found = _run(ctx, action)
    # Loaded here: the PDF library takes a good part of a second to import.
    from hoodrun.billing.documents import render_html, render_pdf

    issuer = config_of(ctx).billing.issuer
    render = render_pdf if kind == "PDF" else render_html
    rendered = render(found.invoice, issuer=issuer, account=found.account, org_name=found.org_name)
    content = rendered.encode() if isinstance(rendered, str) else rendered
    # Written whole or not at all: a half-written invoice must not be sent on.
    partial = out.with_name(f".{out.name}.partial")
    try:
        partial.write_bytes(content)
        partial.replace(out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        fail(f"cannot write {out}: {exc.strerror or exc}")
    stderr.print(f"Wrote invoice {escape(found.invoice.number)} ({kind}) to {escape(str(out))}.")


@dataclass(frozen=True, slots=True)
class _Refunded:
    invoice: Invoice
    refund: Refund
    job: Job


@app.command()
def refund(
    ctx: typer.Context,
    ref: InvoiceRef,
    amount: Annotated[
        str, typer.Option("--amount", help="How much, in the invoice's currency: 12.34.")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (1 to 256 characters).")],
) -> None:
    """Refund part or all of a paid invoice.

    The refund is recorded now and paid back by a refund-process job: its id goes to stdout
    (follow it with `hoodrun jobs show`).
    """
    actor = _actor()

    async def action(store: Store, config: Config) -> _Refunded:
        book = _book(store, config)
        invoice = await _find(book, ref)
        try:
            money = Money.of(amount, invoice.currency)
        except (MoneyError, ArithmeticError, ValueError):
            raise _Refused(
                f"refund refused: amount {amount!r} is not a number like 12.34"
            ) from None
        try:
            recorded = await book.add_refund(invoice.id, money, reason, actor=actor)
        except InvoiceError as exc:
            raise _Refused(f"refund refused: {exc}") from None
        key = f"refund-process:{recorded.id}"
        try:
            job = await JobQueue(store).enqueue(
                "refund-process", {"refund_id": recorded.id}, idempotency_key=key, actor=actor
            )
        except (StoreError, DBAPIError) as exc:
            # The refund stays recorded (pending): say how to start its job by hand.
            payload = json.dumps({"refund_id": recorded.id})
            raise _Refused(
                f"refund {recorded.id} is recorded but its job could not be enqueued ({exc}); "
                f"enqueue it: hoodrun jobs enqueue refund-process --payload '{payload}' "
                f"--key {key}"
            ) from exc
        return _Refunded(invoice, recorded, job)

    done = _run(ctx, action)
    typer.echo(done.job.id)
    stderr.print(
        f"Recorded refund {done.refund.id} of {done.refund.amount} on invoice "
        f"{escape(done.invoice.number)}; {done.job.kind} job {done.job.id} pays it back."
    )


@dataclass(frozen=True, slots=True)
class _Upserted:
    account: BillingAccount
    created: bool
    changed: tuple[str, ...]


async def _upsert_account(store: Store, org: str, given: dict[str, str], actor: str) -> _Upserted:
    """Set ``given`` fields of the org's billing account (made if missing, its legal name the
    org's name unless given), with an audit row naming what changed."""
    now = datetime.now(UTC)
    async with store.transaction() as conn:
        name = await conn.scalar(select(orgs.c.name).where(orgs.c.id == org))
        if name is None:
            raise _Refused(f"no org {org!r}")
        stmt = select(billing_accounts).where(billing_accounts.c.org_id == org)
        before = (await conn.execute(stmt.with_for_update())).mappings().first()
        if before is None:
            values = {field: "" for field in ACCOUNT_FIELDS} | {"legal_name": name} | given
        else:
            values = {field: before[field] for field in ACCOUNT_FIELDS} | given
        changes = {
            field: {"from": None if before is None else before[field], "to": value}
            for field, value in values.items()
            if before is None or before[field] != value
        }
        if changes:
            upsert = store.insert(billing_accounts).values(org_id=org, updated_at=now, **values)
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=[billing_accounts.c.org_id], set_={**values, "updated_at": now}
                )
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="billing_account.create" if before is None else "billing_account.update",
                target_type="org",
                target_id=org,
                details={"changes": changes},
            )
        row = (await conn.execute(stmt)).mappings().one()
    account = BillingAccount(**{k: v for k, v in row.items() if k != "updated_at"})
    return _Upserted(account, before is None, tuple(changes))


@app.command()
def account(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's id (org_...).")],
    legal_name: Annotated[
        str | None, typer.Option(help="The name invoices are addressed to.")
    ] = None,
    email: Annotated[str | None, typer.Option(help="Where invoices go.")] = None,
    address: Annotated[
        str | None, typer.Option(help="Street address (lines separated by newlines).")
    ] = None,
    city: Annotated[str | None, typer.Option(help="City (il).")] = None,
    district: Annotated[str | None, typer.Option(help="District (ilçe).")] = None,
    tax_office: Annotated[str | None, typer.Option(help="Tax office (vergi dairesi).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Set an org's billing account: who its invoices are addressed to.

    Invoice documents and the Paraşüt contact show it. Fields left out keep their value; a new
    account's legal name is the org's name unless given.
    """
    options = {
        "legal_name": legal_name,
        "email": email,
        "address": address,
        "city": city,
        "district": district,
        "tax_office": tax_office,
    }
    given = {field: value.strip() for field, value in options.items() if value is not None}
    if not given:
        fail("nothing to set: give --legal-name, --email, --address, --city, --district or "
             "--tax-office")  # fmt: skip
    for field, value in given.items():
        if len(value) > ACCOUNT_FIELDS[field]:
            fail(f"--{field.replace('_', '-')}: at most {ACCOUNT_FIELDS[field]} characters")
    if given.get("legal_name") == "":
        fail("--legal-name cannot be empty")
    if given.get("email") and not _EMAIL.match(given["email"]):
        fail(f"--email {given['email']!r} is not an email address")
    done = _run(ctx, lambda store, _: _upsert_account(store, org, given, _actor()))
    if as_json:
        _print_json({"account": account_json(done.account), "changed": list(done.changed)})
    else:
        Console(highlight=False).print(account_table(done.account))
    if done.created or done.changed:
        verb = "Created" if done.created else "Updated"
        stderr.print(f"{verb} the billing account of org {escape(org)}: {', '.join(done.changed)}.")
    else:
        stderr.print(f"The billing account of org {escape(org)} is unchanged.")


@dataclass(frozen=True, slots=True)
class _Checked:
    count: int
    bad: list[dict[str, str]]


async def _verify_snapshots(store: Store, period: str | None) -> _Checked:
    """Every closing snapshot (of ``period``) hashed again, in batches by id."""
    # Loaded here: hoodrun.billing.close brings in the analytics store's module.
    from hoodrun.billing.close import verify_snapshot

    count, bad, after = 0, [], ""
    while True:
        stmt = (
            select(closing_snapshots)
            .where(closing_snapshots.c.id > after)
            .order_by(closing_snapshots.c.id)
            .limit(_VERIFY_BATCH)
        )
        if period is not None:
            stmt = stmt.where(closing_snapshots.c.period == period)
        async with store.connect() as conn:
            rows = [dict(row) for row in (await conn.execute(stmt)).mappings()]
        for row in rows:
            try:
                reason = None if verify_snapshot(row) else "does not match its content_hash"
            except (ValueError, TypeError, KeyError) as exc:
                reason = f"cannot be hashed: {exc}"
            if reason is not None:
                bad.append(
                    {"id": row["id"], "org_id": row["org_id"], "period": row["period"],
                     "reason": reason}
                )  # fmt: skip
        count += len(rows)
        if len(rows) < _VERIFY_BATCH:
            return _Checked(count, bad)
        after = rows[-1]["id"]


@app.command("verify-snapshots")
def verify_snapshots(
    ctx: typer.Context,
    period: Annotated[str | None, typer.Option(help="Only this month's, YYYY-MM.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Check every closing snapshot against its content hash.

    Exits 1 naming the snapshots whose content changed since they were closed.
    """
    _check_period(period)
    checked = _run(ctx, lambda store, _: _verify_snapshots(store, period))
    if as_json:
        _print_json({"checked": checked.count, "ok": not checked.bad, "bad": checked.bad})
    elif not checked.bad:
        of = f" of {period}" if period else ""
        stdout.print(f"{checked.count:,} closing snapshot(s){of} match their content hash.")
    for item in checked.bad:
        stderr.print(
            f"[red]bad snapshot:[/red] {escape(item['id'])} (org {escape(item['org_id'])}, "
            f"{item['period']}) {escape(item['reason'])}"
        )
    if checked.bad:
        fail(f"{len(checked.bad)} of {checked.count:,} closing snapshots fail verification")

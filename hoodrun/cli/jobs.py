"""``hoodrun jobs ...``: look into the worker's job queue and repair it.

``list``, ``show`` and ``stats`` read; ``retry`` (one job, or every dead letter), ``cancel``,
``enqueue`` and ``prune`` change the queue, and the first three write the audit log. Every
command migrates the database first (idempotent, cheap), as ``hoodrun keys`` does. Payloads are
shown only by ``show`` and ``list --json``: the table has no column for them.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hoodrun.cli import config_of, fail, stderr
from hoodrun.jobs import STATUSES, Job, JobError, JobQueue
from hoodrun.store import Store, StoreError, upgrade

__all__ = ["app"]

app: typer.Typer = typer.Typer(
    no_args_is_help=True, help="Inspect and repair the worker's job queue."
)

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
JobId = Annotated[str, typer.Argument(help="The job's id (job_...), from `hoodrun jobs list`.")]
_ERROR_CELL = 60


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this environment (some containers)
        return "cli"


def _run(ctx: typer.Context, action: Callable[[JobQueue], Awaitable[T]]) -> T:
    config = config_of(ctx)

    async def go() -> T:
        await upgrade(config.database_url)
        async with Store(config.database_url) as store:
            return await action(JobQueue(store))

    try:
        return asyncio.run(go())
    except (JobError, StoreError, ValueError) as exc:
        fail(str(exc))


def _short(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _print_table(table: Table) -> None:
    Console(highlight=False).print(table)


def _error_cell(error: str | None) -> str:
    if not error:
        return ""
    line = error.splitlines()[0]
    return escape(line if len(line) <= _ERROR_CELL else line[: _ERROR_CELL - 1] + "…")


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help=f"Only jobs in this state: {', '.join(STATUSES)}.")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List jobs, newest first."""
    if status is not None and status not in STATUSES:
        fail(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
    found = _run(ctx, lambda queue: queue.list(status=status, kind=kind, limit=limit))
    if as_json:
        _print_json({"jobs": [job.to_json() for job in found]})
        return
    if not found:
        stderr.print("No jobs.")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption="Times are UTC.")
    # On a narrow terminal the times and the error give way; the id, kind and state stay whole.
    for header, width in (("id", 30), ("kind", 18), ("status", 9), ("attempts", 8)):
        table.add_column(header, no_wrap=True, min_width=width)
    for header in ("run at", "updated", "last error"):
        table.add_column(header, no_wrap=header != "last error")
    for job in found:
        table.add_row(
            job.id,
            job.kind,
            job.status,
            f"{job.attempts}/{job.max_attempts}",
            _short(job.run_at),
            _short(job.updated_at),
            _error_cell(job.last_error),
        )
    _print_table(table)


@app.command()
def show(ctx: typer.Context, job_id: JobId) -> None:
    """Show one job, in full, as JSON (its payload included)."""
    job = _run(ctx, lambda queue: queue.get(job_id))
    if job is None:
        fail(f"no job {job_id}")
    _print_json(job.to_json())


def _changed(verb: str, job: Job) -> None:
    stderr.print(f"{verb} job {job.id} ({job.kind}): now {job.status}.")


@app.command()
def retry(
    ctx: typer.Context,
    job_id: Annotated[
        str | None, typer.Argument(help="A dead or cancelled job's id (or use --dead).")
    ] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Retry every dead job.")] = False,
    kind: Annotated[str | None, typer.Option(help="With --dead: only this kind.")] = None,
) -> None:
    """Run a dead or cancelled job again, now, with all its attempts; or every dead job."""
    if (job_id is None) == (not dead):
        fail("name one job to retry, or use --dead for every dead job (not both)")
    if kind is not None and not dead:
        fail("--kind goes with --dead")
    if job_id is not None:
        _changed("Retrying", _run(ctx, lambda queue: queue.retry(job_id, actor=_actor())))
        return
    count = _run(ctx, lambda queue: queue.retry_dead(kind=kind, actor=_actor()))
    stderr.print(f"Retrying {count} dead job{'' if count == 1 else 's'}.")


@app.command()
def cancel(ctx: typer.Context, job_id: JobId) -> None:
    """Give up a queued, running or dead job (a running one stops at its next heartbeat)."""
    _changed("Cancelled", _run(ctx, lambda queue: queue.cancel(job_id, actor=_actor())))


@app.command()
def enqueue(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="The job kind, e.g. invoice-generate.")],
    payload: Annotated[
        str | None, typer.Option(help='The payload, a JSON object: \'{"invoice_id": "..."}\'.')
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(help="Idempotency key: if a job has it already, that job is shown instead."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Enqueue a job, due now; its id goes to stdout."""
    data: dict[str, Any] = {}
    if payload is not None:
        try:
            parsed = json.loads(payload)
        except json.JSONDecodeError as exc:
            fail(f"--payload is not JSON: {exc}")
        if not isinstance(parsed, dict):
            fail('--payload must be a JSON object, like \'{"invoice_id": "inv_..."}\'')
        data = parsed

    async def action(queue: JobQueue) -> tuple[Job, bool]:
        existing = await queue.by_key(key) if key is not None else None
        job = await queue.enqueue(kind, data, idempotency_key=key, actor=_actor())
        return job, existing is not None

    job, existed = _run(ctx, action)
    if as_json:
        _print_json(job.to_json())
    else:
        typer.echo(job.id)
    if existed:
        stderr.print(f"A job with key {escape(key or '')} exists already: {job.id}, {job.status}.")
    else:
        stderr.print(f"Enqueued {job.kind} job {job.id}.")


@app.command()
def stats(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """How many jobs of each kind are in each state."""
    counts = _run(ctx, lambda queue: queue.counts())
    kinds = sorted({kind for kind, _ in counts})
    if as_json:
        _print_json(
            {kind: {status: counts.get((kind, status), 0) for status in STATUSES} for kind in kinds}
        )
        return
    if not kinds:
        stderr.print("No jobs.")
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("kind", no_wrap=True)
    for status in STATUSES:
        table.add_column(status, justify="right")
    for kind in kinds:
        table.add_row(kind, *(str(counts.get((kind, status), 0)) for status in STATUSES))
    _print_table(table)


@app.command()
def prune(
    ctx: typer.Context,
    days: Annotated[
        int | None,
        typer.Option(min=1, help="Keep this many days (default: billing.jobs.keep_done_days)."),
    ] = None,
) -> None:
    """Delete done and cancelled jobs finished more than --days ago (dead ones stay)."""
    keep = days if days is not None else config_of(ctx).billing.jobs.keep_done_days
    before = datetime.now(UTC) - timedelta(days=keep)
    count = _run(ctx, lambda queue: queue.prune(before))
    plural = "" if count == 1 else "s"
    stderr.print(f"Deleted {count} job{plural} finished before {_short(before)} UTC.")

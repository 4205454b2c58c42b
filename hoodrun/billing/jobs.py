"""The billing jobs and their schedules: the handlers the worker runs for billing's job kinds
(see ``hoodrun.jobs.POLICIES``) and when the scheduled ones are enqueued (``billing.schedule``).

Scheduled (UTC): ``period-close`` of the month before on ``period_close_day`` at
``period_close_hour``; ``subscription-renew`` hourly; ``reconcile`` every ``reconcile_every``
seconds; ``ledger-export`` daily at ``ledger_export_hour`` (every day not exported yet);
``billing-sweep`` hourly; ``fx-fetch`` daily at ``fx_fetch_hour`` (after TCMB's 15:30 Istanbul
bulletin), only with Paraşüt enabled, the one consumer of TL rates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from hoodrun.billing.close import previous_period
from hoodrun.billing.fx import fetch_job
from hoodrun.billing.ledger import (
    default_archive_dir,
    default_signing_key_path,
    load_or_create_signing_key,
)
from hoodrun.billing.service import Billing
from hoodrun.config import Config
from hoodrun.jobs import (
    Handler,
    Job,
    JobQueue,
    Permanent,
    Retry,
    Schedule,
    daily,
    every,
    monthly,
)
from hoodrun.store import Store
from hoodrun.telemetry.store import AnalyticsStore

__all__ = ["handlers", "open_billing", "schedules"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _field(job: Job, name: str) -> str:
    value = job.payload.get(name)
    if not isinstance(value, str) or not value:
        raise Permanent(f"{job.kind} job {job.id}: payload needs {name!r} (a string)")
    return value


def _period_of_slot(job: Job) -> str:
    """The month a period-close job closes: ``period`` if given, else the month before the
    schedule's slot."""
    period = job.payload.get("period")
    if isinstance(period, str) and period:
        return period
    slot = job.payload.get("slot")
    if not isinstance(slot, str):
        raise Permanent(f"period-close job {job.id}: payload needs 'period' (YYYY-MM)")
    at = datetime.fromisoformat(slot)
    return previous_period(f"{at.year:04d}-{at.month:02d}")


def handlers(billing: Billing) -> dict[str, Handler]:
    """The handler of each billing job kind, by kind."""
    config = billing.config

    async def period_close(job: Job) -> dict[str, Any]:
        return await billing.close_period(_period_of_slot(job))

    async def invoice_generate(job: Job) -> dict[str, Any]:
        invoice = await billing.generate_invoice(_field(job, "snapshot_id"), job.id)
        return {"invoice": invoice.number, "status": invoice.status}

    async def payment_process(job: Job) -> dict[str, Any]:
        invoice = await billing.process_payment(_field(job, "invoice_id"))
        return {"invoice": invoice.number, "status": invoice.status}

    async def refund_process(job: Job) -> dict[str, Any]:
        return await billing.process_refund(_field(job, "refund_id"))

    async def subscription_renew(job: Job) -> dict[str, Any]:
        return await billing.renew()

    async def report_generate(job: Job) -> dict[str, Any]:
        return await billing.report(_period_of_slot(job))

    async def fx_fetch(job: Job) -> dict[str, Any]:
        return await fetch_job(config, billing.store, clock=billing.clock)

    async def reconcile(job: Job) -> dict[str, Any]:
        # Two runs at once would both find a mismatch and both correct it.
        if await billing.running_elsewhere("reconcile", job.id):
            raise Retry("another reconciliation is running")
        return (await billing.reconciler.run()).summary()

    async def ledger_export(job: Job) -> dict[str, Any]:
        key = load_or_create_signing_key(default_signing_key_path(config))
        through: date = billing.yesterday()
        paths = await billing.ledger.export_missing(
            default_archive_dir(config), key, through=through
        )
        return {"exported": [p.name for p in paths]}

    async def sweep(job: Job) -> dict[str, Any]:
        return await billing.sweep()

    return {
        "period-close": period_close,
        "invoice-generate": invoice_generate,
        "payment-process": payment_process,
        "refund-process": refund_process,
        "subscription-renew": subscription_renew,
        "report-generate": report_generate,
        "fx-fetch": fx_fetch,
        "reconcile": reconcile,
        "ledger-export": ledger_export,
        "billing-sweep": sweep,
    }


def schedules(config: Config) -> list[Schedule]:
    """The billing schedules, as ``config.billing.schedule`` sets them."""
    schedule = config.billing.schedule
    found = [
        Schedule(
            "period-close",
            "period-close",
            monthly(schedule.period_close_day, schedule.period_close_hour),
        ),
        Schedule("subscription-renew", "subscription-renew", every(3600)),
        Schedule("reconcile", "reconcile", every(schedule.reconcile_every)),
        Schedule("ledger-export", "ledger-export", daily(schedule.ledger_export_hour)),
        Schedule("billing-sweep", "billing-sweep", every(3600)),
    ]
    if config.billing.parasut.enabled:
        # Rates are needed to issue TL invoices (Paraşüt); the feed is not asked otherwise.
        found.append(Schedule("fx-fetch", "fx-fetch", daily(schedule.fx_fetch_hour)))
    return found


def open_billing(
    config: Config,
    store: Store,
    queue: JobQueue,
    *,
    analytics: AnalyticsStore | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> Billing:
    """The billing service of a worker, with the providers the config enables."""
    from hoodrun.billing.service import open_providers

    return Billing(
        config, store, queue, analytics=analytics, providers=open_providers(config), clock=clock
    )

"""The notifications' jobs for the worker: their handlers and the watcher's schedule.

::

    worker = Worker(
        queue,                     # a JobQueue whose policies hold notify-watch and notify-email
        billing_handlers | webhook_handlers | notify_jobs.handlers(config, store, analytics=...),
        schedules=[*billing_schedules, *notify_jobs.schedules(config)],
    )

``notify-watch`` runs every ``notifications.interval`` seconds (``hoodrun.notify.watch``); it
needs the analytics store, so without one (telemetry disabled) it is neither scheduled nor
handled. ``notify-email`` mails each event to the members who want it (``hoodrun.notify.mailing``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from hoodrun.config import Config
from hoodrun.jobs import Handler, Job, JobQueue, Schedule, every
from hoodrun.notify.kinds import NOTIFY_EMAIL, NOTIFY_WATCH
from hoodrun.notify.mail import Mailer
from hoodrun.notify.mailing import EventMailer
from hoodrun.notify.watch import Watcher
from hoodrun.store import Store
from hoodrun.telemetry.store import AnalyticsStore
from hoodrun.webhooks import WebhookBook

__all__ = ["handlers", "schedules"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def handlers(
    config: Config,
    store: Store,
    *,
    analytics: AnalyticsStore | None,
    mailer: Mailer | None = None,
    queue: JobQueue | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> dict[str, Handler]:
    """The handlers of ``notify-email`` and (with ``analytics``) ``notify-watch``, by kind.

    ``mailer``: default ``Mailer(config.smtp)``. ``queue``: the one the per-member mail jobs are
    enqueued on (default: one on ``store`` that knows the notifications' kinds)."""
    mailing = EventMailer(config, store, mailer, queue=queue, clock=clock)
    found: dict[str, Handler] = {NOTIFY_EMAIL: mailing.run}
    if analytics is not None:
        book = WebhookBook(store, clock=clock)
        watcher = Watcher(config, store, analytics, book=book, clock=clock)

        async def watch(job: Job) -> dict[str, Any]:
            return await watcher.check()

        found[NOTIFY_WATCH] = watch
    return found


def schedules(config: Config) -> list[Schedule]:
    """The watcher's schedule (none with notifications or telemetry disabled)."""
    settings = config.notifications
    if not settings.enabled or not config.telemetry.enabled:
        return []
    return [Schedule(NOTIFY_WATCH, NOTIFY_WATCH, every(settings.interval))]

"""The ``notify-email`` jobs: an org's event, mailed to each member who wants it.

``WebhookBook.emit`` enqueues one job per mailed event, in the event's transaction (payload
``{"event": <the webhook payload>}``, key ``notify-email:<event id>``). Its run picks the members
who get it (``hoodrun.notify.recipients``) and enqueues one job per member (``user_id`` added,
key ``notify-email:<event id>:<user id>``): each member gets each event once, and an address the
server refuses is retried (with the queue's backoff) without mailing the others again. The
member's job checks again that they still want it, renders the mail (``hoodrun.notify.messages``)
and sends it with the ``Mailer``.

Without ``smtp.host`` (or with ``notifications.enabled: false``) the jobs finish without sending:
a warning says so once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from hoodrun.config import Config
from hoodrun.jobs import Job, JobQueue, Permanent, Retry
from hoodrun.notify.kinds import MAILED_EVENTS, NOTIFY_EMAIL, job_policies, mail_key
from hoodrun.notify.mail import Mailer, MailError
from hoodrun.notify.messages import render
from hoodrun.notify.recipients import recipient, recipients
from hoodrun.store import Store
from hoodrun.store.tables import orgs

__all__ = ["EventMailer"]

log = logging.getLogger("hoodrun.notify")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _event_of(job: Job) -> dict[str, Any]:
    event = job.payload.get("event")
    if (
        not isinstance(event, dict)
        or not all(isinstance(event.get(name), str) for name in ("id", "type", "org_id"))
        or event["type"] not in MAILED_EVENTS
    ):
        raise Permanent(f"{NOTIFY_EMAIL} job {job.id}: payload needs a mailed 'event'")
    return event


def _data_of(event: Mapping[str, Any]) -> Mapping[str, Any]:
    # Who gets a usage notice depends on its meter (the spending cap's go to billing readers).
    data = event.get("data")
    return data if isinstance(data, Mapping) else {}


class EventMailer:
    """Runs ``notify-email`` jobs (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        mailer: Mailer | None = None,
        *,
        queue: JobQueue | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._config = config
        self._store = store
        self._mailer = mailer if mailer is not None else Mailer(config.smtp)
        self._queue = queue or JobQueue(store, clock=clock, policies=job_policies())
        self._public_url = config.web.public_url or f"http://{config.api_listen}"
        self._warned = False

    def _off(self) -> str | None:
        """Why nothing is sent, if so (said once in the log)."""
        if not self._config.notifications.enabled:
            reason = "notifications.enabled is false"
        elif not self._mailer.enabled:
            reason = "smtp.host is unset"
        else:
            return None
        if not self._warned:
            self._warned = True
            log.warning("notices are not mailed: %s", reason)
        return reason

    async def run(self, job: Job) -> Mapping[str, Any]:
        """The ``notify-email`` handler."""
        event = _event_of(job)
        skipped = self._off()
        if skipped is not None:
            return {"event": event["id"], "skipped": skipped}
        user_id = job.payload.get("user_id")
        if user_id is None:
            return await self._fan_out(event)
        if not isinstance(user_id, str):
            raise Permanent(f"{NOTIFY_EMAIL} job {job.id}: 'user_id' must be a string")
        return await self._send(event, user_id)

    async def _fan_out(self, event: dict[str, Any]) -> Mapping[str, Any]:
        async with self._store.transaction() as conn:
            chosen = await recipients(conn, event["org_id"], event["type"], _data_of(event))
            for member in chosen:
                await self._queue.enqueue_in(
                    conn,
                    NOTIFY_EMAIL,
                    {"event": event, "user_id": member.user_id},
                    idempotency_key=mail_key(event["id"], member.user_id),
                )
        return {"event": event["id"], "members": len(chosen)}

    async def _send(self, event: dict[str, Any], user_id: str) -> Mapping[str, Any]:
        async with self._store.connect() as conn:
            member = await recipient(conn, event["org_id"], event["type"], _data_of(event), user_id)
            org_name = await conn.scalar(select(orgs.c.name).where(orgs.c.id == event["org_id"]))
        if member is None:  # left the org, disabled, no longer a billing reader, or opted out
            return {"event": event["id"], "user": user_id, "skipped": "not wanted"}
        mail = render(event, str(org_name or event["org_id"]), public_url=self._public_url)
        try:
            await self._mailer.send(member.email, mail.subject, mail.text, mail.html)
        except MailError as exc:
            raise Retry(str(exc)) from None
        log.info("notice %s (%s) mailed to user %s", event["id"], event["type"], user_id)
        return {"event": event["id"], "user": user_id, "sent": True}

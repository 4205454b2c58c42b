"""The notifications' job kinds, their policies, and the events mailed to an org's members.

``notify-watch`` checks usage and error rates (``hoodrun.notify.watch``), scheduled every
``notifications.interval`` seconds: a failed check is not retried, the next slot checks again.
``notify-email`` mails one event (enqueued by ``WebhookBook.emit`` in the event's transaction) and
then one mail per member who wants it (``hoodrun.notify.mailing``): eight attempts with the queue's
backoff ride out an SMTP server's outage of hours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from hoodrun.jobs import NORMAL, POLICIES, JobPolicy

__all__ = [
    "DEFAULT_EMAIL",
    "MAILED_EVENTS",
    "NOTIFY_EMAIL",
    "NOTIFY_POLICIES",
    "NOTIFY_WATCH",
    "job_policies",
    "mail_key",
]

NOTIFY_WATCH: Final = "notify-watch"
NOTIFY_EMAIL: Final = "notify-email"

NOTIFY_POLICIES: Final = (
    JobPolicy(NOTIFY_WATCH, NORMAL, 1, 120.0),
    JobPolicy(NOTIFY_EMAIL, NORMAL, 8, 60.0),
)
"""The two kinds' policies (also to be declared in ``hoodrun.jobs.POLICIES``)."""

MAILED_EVENTS: Final = (
    "usage.threshold",
    "quota.exhausted",
    "error_rate.spike",
    "invoice.created",
    "invoice.paid",
    "credits.low",
)
"""The webhook events also mailed to the org's members (the portal's notification choices)."""

DEFAULT_EMAIL: Final = True
"""A member who made no choice for an event gets its mail (as the portal shows it)."""


def job_policies(base: Mapping[str, JobPolicy] = POLICIES) -> Mapping[str, JobPolicy]:
    """``base`` with the notifications' kinds added (those ``base`` declares win)."""
    return MappingProxyType({**{policy.kind: policy for policy in NOTIFY_POLICIES}, **base})


_MAX_KEY = 128  # jobs.idempotency_key


def mail_key(event_id: str, user_id: str | None = None) -> str:
    """The idempotency key of an event's ``notify-email`` job (``user_id``: of its mail to that
    member), so each event is mailed once, and once to each member."""
    key = f"{NOTIFY_EMAIL}:{event_id}" + (f":{user_id}" if user_id is not None else "")
    if len(key) <= _MAX_KEY:
        return key
    # An event id given by a caller can be long: a digest keeps the key unique and short.
    return f"{NOTIFY_EMAIL}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"

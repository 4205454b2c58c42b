"""Job kinds and how each runs: its priority, how many attempts it gets, how long one may take.

A kind's policy is fixed in code, next to the handlers that implement it, rather than in the
config: the attempts and timeouts follow from what the handler does (a payment may be tried five
times within minutes; a report runs once for up to half an hour), not from the deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["HIGH", "LOW", "NORMAL", "POLICIES", "JobPolicy"]

# Higher runs first. Spaced out so a caller can slot a job between two levels.
HIGH = 100
NORMAL = 50
LOW = 0

_MAX_KIND = 32  # jobs.kind is VARCHAR(32)


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """How jobs of ``kind`` run: ``timeout`` seconds per attempt, ``max_attempts`` in all."""

    kind: str
    priority: int
    max_attempts: int
    timeout: float

    def __post_init__(self) -> None:
        if not 0 < len(self.kind) <= _MAX_KIND:
            raise ValueError(f"a job kind has 1 to {_MAX_KIND} characters: {self.kind!r}")
        if self.max_attempts < 1:
            raise ValueError(f"job kind {self.kind}: max_attempts must be >= 1")
        if self.timeout <= 0:
            raise ValueError(f"job kind {self.kind}: timeout must be > 0 seconds")


def _policies(*policies: JobPolicy) -> Mapping[str, JobPolicy]:
    return MappingProxyType({policy.kind: policy for policy in policies})


MINUTE = 60.0

POLICIES: Mapping[str, JobPolicy] = _policies(
    JobPolicy("invoice-generate", NORMAL, 3, 5 * MINUTE),
    JobPolicy("payment-process", HIGH, 5, 2 * MINUTE),
    JobPolicy("subscription-renew", NORMAL, 3, 5 * MINUTE),
    JobPolicy("refund-process", HIGH, 5, 2 * MINUTE),
    JobPolicy("report-generate", LOW, 1, 30 * MINUTE),
    # Enqueued by the worker's schedules.
    JobPolicy("period-close", NORMAL, 3, 30 * MINUTE),
    JobPolicy("fx-fetch", NORMAL, 5, 2 * MINUTE),
    JobPolicy("reconcile", NORMAL, 3, 10 * MINUTE),
    JobPolicy("ledger-export", LOW, 3, 10 * MINUTE),
    # Re-enqueues the invoices left pending (their provider could not be reached).
    JobPolicy("billing-sweep", LOW, 3, 5 * MINUTE),
    # One POST of a webhook event (hoodrun.webhooks): eight attempts with the queue's backoff
    # ride out a receiver's outage of hours; a POST gives up after 10 s.
    JobPolicy("webhook-deliver", NORMAL, 8, 30.0),
    # Notifications (hoodrun.notify): the watcher each notifications.interval (a failed check is
    # not retried: the next slot checks again); an event's mail, then each member's (8 attempts).
    JobPolicy("notify-watch", NORMAL, 1, 2 * MINUTE),
    JobPolicy("notify-email", NORMAL, 8, MINUTE),
)
"""The job kinds HoodRun runs, by name."""

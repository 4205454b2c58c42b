"""The durable job queue and the worker that runs it (billing's invoices, payments, refunds,
period closes, exchange rates, reconciliation, ledger exports), in the business database.

::

    queue = JobQueue(store)
    await queue.enqueue("invoice-generate", {"invoice_id": ...}, idempotency_key="invoice:...")
    worker = Worker(queue, {"invoice-generate": generate}, schedules=[...])
    await worker.run(stop)          # or: await worker.burst()
"""

from __future__ import annotations

from hoodrun.jobs.errors import (
    JobError,
    JobFailed,
    JobNotFound,
    JobStateError,
    LeaseLost,
    Permanent,
    Retry,
    UnknownJobKind,
)
from hoodrun.jobs.job import CANCELLED, DEAD, DONE, QUEUED, RUNNING, STATUSES, Job
from hoodrun.jobs.policy import HIGH, LOW, NORMAL, POLICIES, JobPolicy
from hoodrun.jobs.queue import JobQueue
from hoodrun.jobs.schedule import Schedule, daily, every, monthly, slot_key
from hoodrun.jobs.worker import BurstResult, Handler, Worker

__all__ = [
    "CANCELLED",
    "DEAD",
    "DONE",
    "HIGH",
    "LOW",
    "NORMAL",
    "POLICIES",
    "QUEUED",
    "RUNNING",
    "STATUSES",
    "BurstResult",
    "Handler",
    "Job",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobPolicy",
    "JobQueue",
    "JobStateError",
    "LeaseLost",
    "Permanent",
    "Retry",
    "Schedule",
    "UnknownJobKind",
    "Worker",
    "daily",
    "every",
    "monthly",
    "slot_key",
]

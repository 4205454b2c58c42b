"""What handlers raise to steer their job, and what the queue raises.

::

    JobError                  root of everything ``hoodrun.jobs`` raises
    ├── Retry                 a handler asks to run the job again later (counts an attempt)
    ├── Permanent             a handler says retrying cannot help: the job goes dead at once
    ├── UnknownJobKind        no policy for that kind (also a ``ValueError``)
    ├── JobNotFound           no job with that id
    ├── JobStateError         the job is not in a state that allows the change
    └── LeaseLost             the worker no longer holds the job (its lease expired or it was
                              cancelled), so its outcome is not recorded

Handlers signal with typed values rather than return codes: any other exception is a failed
attempt too, retried with backoff until the job's attempts run out.
"""

from __future__ import annotations

__all__ = [
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobStateError",
    "LeaseLost",
    "Permanent",
    "Retry",
    "UnknownJobKind",
]


class JobError(Exception):
    """The job queue failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class Retry(JobError):
    """The job asked to be retried."""

    def __init__(self, reason: str | None = None, *, delay: float | None = None) -> None:
        """``delay``: seconds until the next attempt (``None``: the queue's backoff)."""
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must be >= 0 seconds, not {delay}")
        super().__init__(reason)
        self.delay = delay

    @property
    def reason(self) -> str:
        return str(self)


class Permanent(JobError):
    """The job failed for good: retrying it cannot help."""


# The same signal under the name a caller may find more natural.
JobFailed = Permanent


class UnknownJobKind(JobError, ValueError):
    """No job of that kind exists."""


class JobNotFound(JobError):
    """No such job."""


class JobStateError(JobError):
    """The job is not in a state that allows this."""


class LeaseLost(JobError):
    """The worker no longer holds the job's lease; its outcome was not recorded."""

"""The job queue's Prometheus metrics, in the process's default registry.

Labels are the job kind (a fixed set, from the policies) and the outcome; never a job id or
anything from a payload.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["DURATION", "OUTCOMES", "QUEUED_JOBS"]

OUTCOMES = Counter(
    "hoodrun_jobs",
    "Job attempts by kind and outcome: done, retry (failed, to run again) or dead",
    ("kind", "outcome"),
)
DURATION = Histogram(
    "hoodrun_job_duration_seconds",
    "Time a handler took per job attempt",
    ("kind",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
QUEUED_JOBS = Gauge(
    "hoodrun_jobs_queued",
    "Jobs waiting to run (due or not) by kind, as last counted by a worker",
    ("kind",),
)

"""Shared by the job tests: policies with short timeouts, and a queue on a fake clock."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from hoodrun.jobs import NORMAL, POLICIES, JobPolicy, JobQueue
from hoodrun.store import Store
from tests._stores import FakeClock

# HoodRun's kinds plus two for tests: "fast" (3 attempts, 0.3 s) and "once" (1 attempt).
TEST_POLICIES: Mapping[str, JobPolicy] = {
    **POLICIES,
    "fast": JobPolicy("fast", NORMAL, 3, 0.3),
    "once": JobPolicy("once", NORMAL, 1, 5.0),
}


def make_queue(store: Store, clock: FakeClock, seed: int = 1, **options: Any) -> JobQueue:
    return JobQueue(store, clock=clock, rng=random.Random(seed), policies=TEST_POLICIES, **options)

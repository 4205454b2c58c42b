"""Entitlement checks: the cost of ``Entitlements.check`` and of the gateway's quota test.

    .venv/bin/python bench/entitlements.py [--n 1000000]

Both answer from memory (the org's month-to-date counters and the plan). The reference, in the
same run, is one dict lookup through a method call (the least any check can cost). Goal from the
issue: a cached check <= 5 µs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime

from hoodrun.config import PlanConfig, RateConfig
from hoodrun.metering.entitlements import Entitlements, UsageCounters
from hoodrun.telemetry.sink import RequestRecord
from hoodrun.telemetry.units import ComputeUnits


class _Reference:
    def __init__(self) -> None:
        self.table = {f"org_{i}": i for i in range(1000)}

    def get(self, org: str) -> int:
        return self.table[org]


def _per_call(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    usage = UsageCounters(ComputeUnits())
    now = datetime.now(UTC).timestamp()
    for i in range(1000):
        usage.emit(
            RequestRecord(
                ts=now, chain="eth", method="eth_call", methods=("eth_call",), calls=1,
                status=200, reason=None, key_id="k", org_id=f"org_{i}", project_id="p",
                client_ip="10.0.0.1", latency=0.001, upstream="a", upstream_latency=0.001,
                attempts=1, bytes_in=10, bytes_out=10,
            )
        )  # fmt: skip
    entitlements = Entitlements(usage)
    plan = PlanConfig(
        name="metered", rate=RateConfig(rps=10), quotas={"requests": 10**9, "compute_units": 10**9}
    )
    reference = _Reference()
    n = args.n
    results = {
        "reference: a dict lookup through a method": _per_call(lambda: reference.get("org_7"), n),
        "check(org, plan, 'compute_units')": _per_call(
            lambda: entitlements.check("org_7", plan, "compute_units"), n
        ),
        "check(org, plan, 'trace') (a feature)": _per_call(
            lambda: entitlements.check("org_7", plan, "trace"), n
        ),
        "exhausted(org, plan) (the gateway's test, 2 quotas)": _per_call(
            lambda: entitlements.exhausted("org_7", plan), n
        ),
    }
    for name, micros in results.items():
        print(f"{micros:8.3f} µs  {name}")
    worst = max(micros for name, micros in results.items() if not name.startswith("reference"))
    print(f"entitlement check, worst case: {worst:.2f} µs   (goal <= 5 µs)")


if __name__ == "__main__":
    main()

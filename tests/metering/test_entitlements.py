"""Entitlement checks and the month-to-date counters behind quotas (in memory, clock injected)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hoodrun.config import PlanConfig, RateConfig
from hoodrun.metering.entitlements import Entitlements, UsageCounters, month_bounds
from hoodrun.metering.money import Money
from hoodrun.telemetry.units import ComputeUnits
from tests.telemetry.support import call_record

NOV = datetime(2026, 11, 29, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plan(**extra: object) -> PlanConfig:
    return PlanConfig.model_validate({"name": "p", "rate": RateConfig(rps=1), **extra})


def counters(clock: Clock, percent: int = 100) -> UsageCounters:
    return UsageCounters(ComputeUnits(cache_hit_percent=percent), clock)


def test_month_bounds() -> None:
    assert month_bounds(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_billable_calls_count_and_refusals_do_not() -> None:
    clock = Clock(NOV)
    usage = counters(clock, percent=50)
    usage.emit(call_record("a", ts=NOV, method="eth_call", org_id="o"))  # 26
    usage.emit(call_record("b", ts=NOV, method="eth_call", org_id="o", cache_hit=True))  # 13
    usage.emit(call_record("c", ts=NOV, org_id="o", reason="rate_limited", status=429))
    usage.emit(call_record("d", ts=NOV, org_id="o", reason="upstream_error", status=502))
    usage.emit(call_record("e", ts=NOV, org_id=None))
    batch = call_record(
        "f", ts=NOV, org_id="o", method="batch", calls=3,
        methods=("eth_blockNumber", "eth_getLogs", "eth_call"),
        call_results=((0, None), (-32005, "logs_range_exceeded"), (3, None)),
    )  # fmt: skip
    usage.emit(batch)  # 10 + 26: the refused eth_getLogs costs nothing
    assert usage.used("o", "requests") == 4 and usage.used("o", "compute_units") == 26 + 13 + 36
    assert usage.used("nobody", "requests") == 0


def test_a_new_month_starts_from_zero() -> None:
    clock = Clock(NOV)
    usage = counters(clock)
    usage.seed({"o": (100, 1000)})
    usage.emit(call_record("a", ts=NOV, org_id="o"))
    assert usage.used("o", "requests") == 101
    clock.now = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert usage.used("o", "requests") == 0
    assert usage.month_start == datetime(2026, 12, 1, tzinfo=UTC)


def test_checks_for_features_and_quotas() -> None:
    clock = Clock(NOV)
    usage = counters(clock)
    entitlements = Entitlements(usage)
    limited = plan(trace=False, quotas={"requests": 2})
    assert entitlements.check("o", limited, "trace").allowed is False
    assert entitlements.check("o", limited, "archive").allowed is True
    fresh = entitlements.check("o", limited, "requests")
    assert (fresh.allowed, fresh.limit, fresh.used, fresh.remaining) == (True, 2, 0, 2)
    assert fresh.resets_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert entitlements.exhausted("o", limited) is None
    for n in range(2):
        usage.emit(call_record(str(n), ts=NOV, org_id="o"))
    spent = entitlements.exhausted("o", limited)
    assert spent is not None and spent.name == "requests" and spent.remaining == 0
    unlimited = entitlements.check("o", plan(), "compute_units")
    assert unlimited.allowed and unlimited.limit is None and unlimited.used == 52
    with pytest.raises(KeyError):
        entitlements.check("o", limited, "tokens")


def test_spending_cap_of_a_metered_plan() -> None:
    clock = Clock(NOV)
    usage = counters(clock)
    entitlements = Entitlements(usage, cap_every=1.0)
    price = {
        "type": "METERED", "currency": "USD", "per": 1000,
        "tiers": [{"up_to": 100, "unit_price": "1.00"}, {"unit_price": "0.50"}],
        "multipliers": {"trace": 3},
    }  # fmt: skip
    capped = plan(price=price, spending_cap="0.20")
    assert entitlements.spent("o", capped) == Money.of("0", "USD")
    assert entitlements.over_cap("o", capped) is None
    for n in range(3):  # 3 x 26 units of eth_call
        usage.emit(call_record(str(n), ts=NOV, org_id="o", method="eth_call"))
    usage.emit(call_record("t", ts=NOV, org_id="o", method="debug_traceTransaction"))  # 309 x 3
    # Cached for a second: still nothing spent.
    assert entitlements.over_cap("o", capped) is None
    clock.now += 1.0
    # 78 + 927 = 1005 units: 100 at 1.00 and 905 at 0.50 per 1000 -> 0.10 + 0.4525 -> 0.10 + 0.45
    spent = entitlements.spent("o", capped)
    assert spent == Money.of("0.55", "USD")
    assert entitlements.over_cap("o", capped) == (spent, Money.of("0.20", "USD"))
    assert entitlements.over_cap("o", plan(price=price)) is None  # no cap, no refusal


@pytest.mark.parametrize(
    "methods",
    [
        ("eth_call", "eth_call", "debug_traceTransaction"),
        ("debug_traceTransaction", "eth_call", "eth_call"),
    ],
)
def test_a_batch_weighs_each_call_by_its_own_kind(methods: tuple[str, ...]) -> None:
    # Whatever its order, a batch costs what the same calls cost one by one.
    clock = Clock(NOV)
    price = {
        "type": "METERED", "currency": "USD", "per": 1000,
        "tiers": [{"unit_price": "1.00"}], "multipliers": {"trace": 3},
    }  # fmt: skip
    capped = plan(price=price, spending_cap="100")
    batched, single = counters(clock), counters(clock)
    batched.emit(
        call_record(
            "b", ts=NOV, org_id="o", method="batch", calls=3, methods=methods,
            call_results=((0, None), (0, None), (0, None)),
        )
    )  # fmt: skip
    for n, method in enumerate(methods):
        single.emit(call_record(str(n), ts=NOV, org_id="o", method=method))
    for meter in ("requests", "compute_units"):
        assert sorted(batched.usage_rows("o", meter)) == sorted(single.usage_rows("o", meter))
    # 2 x 26 plain + 309 x 3 trace = 979 units at 1.00 per 1000
    assert Entitlements(batched).spent("o", capped) == Money.of("0.98", "USD")


def test_notifications_cost_units_not_requests() -> None:
    clock = Clock(NOV)
    usage = UsageCounters(ComputeUnits(notification_bytes_per_unit=25), clock)
    usage.emit(call_record("n", ts=NOV, org_id="o", method="eth_subscription", bytes_out=260))
    usage.emit(call_record("c", ts=NOV, org_id="o", method="eth_call"))
    assert usage.used("o", "requests") == 1 and usage.used("o", "compute_units") == 11 + 26

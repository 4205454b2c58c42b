"""The circuit breaker, driven by a fake clock."""

from __future__ import annotations

import pytest

from hoodrun.upstreams import BreakerState, CircuitBreaker

from .support import FakeClock


def make(failures: int = 3, cooldown: float = 10.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    return CircuitBreaker(failures, cooldown, clock=clock), clock


def test_states_are_gauge_values() -> None:
    assert [int(s) for s in BreakerState] == [0, 1, 2]
    assert [s.name for s in BreakerState] == ["CLOSED", "HALF_OPEN", "OPEN"]


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _ = make(failures=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the run
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.closed
    assert not breaker.allow()


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker, clock = make(failures=1, cooldown=10.0)
    breaker.record_failure()
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.probe_available()
    assert breaker.allow()
    assert not breaker.probe_available()
    assert not breaker.allow()
    assert not breaker.allow()


def test_probe_success_closes() -> None:
    breaker, clock = make(failures=2, cooldown=5.0)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failures == 0
    # A fresh run of failures is needed to open again.
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_probe_failure_reopens_for_a_full_cooldown() -> None:
    breaker, clock = make(failures=1, cooldown=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    clock.advance(1.0)
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(4.9)
    assert breaker.state is BreakerState.OPEN
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN


def test_late_failures_do_not_extend_the_cooldown() -> None:
    breaker, clock = make(failures=1, cooldown=5.0)
    breaker.record_failure()
    clock.advance(3.0)
    breaker.record_failure()  # a request sent before the breaker opened
    clock.advance(2.0)
    assert breaker.state is BreakerState.HALF_OPEN


def test_late_successes_do_not_close_an_open_breaker() -> None:
    breaker, clock = make(failures=1, cooldown=5.0)
    breaker.record_failure()
    breaker.record_success()  # a request sent before the breaker opened
    assert breaker.state is BreakerState.OPEN
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED


def test_released_probe_can_be_taken_again() -> None:
    breaker, clock = make(failures=1, cooldown=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()


def test_a_lost_probe_expires_after_a_cooldown() -> None:
    breaker, clock = make(failures=1, cooldown=5.0)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_state_changes_are_reported() -> None:
    changes: list[tuple[BreakerState, BreakerState]] = []
    clock = FakeClock()
    breaker = CircuitBreaker(1, 1.0, clock=clock, on_change=lambda a, b: changes.append((a, b)))
    breaker.record_failure()
    clock.advance(1.0)
    breaker.allow()
    breaker.record_success()
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(0, 1.0)

"""Schedules: which slot is due at a given time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hoodrun.jobs import Schedule, daily, every, monthly, slot_key


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_monthly() -> None:
    due = monthly(1, 2)
    assert due(at(2030, 3, 1, 2)) == at(2030, 3, 1, 2)  # at the slot: due
    assert due(at(2030, 3, 1, 1, 59)) == at(2030, 2, 1, 2)
    assert due(at(2030, 1, 1, 0)) == at(2029, 12, 1, 2)
    assert monthly(28, 23)(at(2030, 3, 15)) == at(2030, 2, 28, 23)
    tokyo = timezone(timedelta(hours=9))
    assert due(datetime(2030, 3, 1, 11, tzinfo=tokyo)) == at(2030, 3, 1, 2)


def test_daily() -> None:
    due = daily(16)
    assert due(at(2030, 5, 10, 16, 0, 1)) == at(2030, 5, 10, 16)
    assert due(at(2030, 5, 10, 15, 59)) == at(2030, 5, 9, 16)
    assert daily(0, 30)(at(2030, 1, 1, 0, 10)) == at(2029, 12, 31, 0, 30)


def test_every() -> None:
    hourly = every(3600)
    assert hourly(at(2030, 1, 1, 12, 59, 59)) == at(2030, 1, 1, 12)
    assert hourly(at(2030, 1, 1, 13)) == at(2030, 1, 1, 13)
    assert every(90)(at(1970, 1, 1, 0, 4)) == at(1970, 1, 1, 0, 3)


def test_keys_and_payloads() -> None:
    schedule = Schedule("period-close", "period-close", monthly(1, 2))
    slot = at(2030, 3, 1, 2)
    assert schedule.key(slot) == "schedule:period-close:2030-03-01T02:00:00+00:00"
    assert slot_key("x", slot) == "schedule:x:2030-03-01T02:00:00+00:00"
    assert schedule.payload(slot) == {"slot": "2030-03-01T02:00:00+00:00"}


def test_invalid_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="1 to 28"):
        monthly(31)
    with pytest.raises(ValueError, match="hour"):
        daily(24)
    with pytest.raises(ValueError, match="at least 1 second"):
        every(0.5)
    with pytest.raises(ValueError, match="naive"):
        daily(1)(datetime(2030, 1, 1))  # noqa: DTZ001 (the naive time is the point)

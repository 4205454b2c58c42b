"""Human durations for key options: ``30d``, ``12h``, ``90m``, ``3600s`` or plain seconds."""

from __future__ import annotations

import re
from datetime import timedelta

from hoodrun.keys.errors import InvalidKeyOptions

__all__ = ["parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(value: str | float, *, option: str = "duration") -> timedelta:
    """``"30d"`` → 30 days; a bare number is seconds. Must be positive."""
    if isinstance(value, bool):  # bool is an int; true/false is never a duration
        raise InvalidKeyOptions(f"{option}: expected a duration like 30d, 12h, 90m or 3600s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value.lower())
        if not match:
            raise InvalidKeyOptions(
                f"{option}: {value!r} is not a duration; use e.g. 30d, 12h, 90m or 3600s"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 < seconds <= 100 * 365 * 86400:
        raise InvalidKeyOptions(f"{option}: must be more than 0 seconds and at most 100 years")
    return timedelta(seconds=seconds)

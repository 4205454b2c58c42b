"""Service levels per chain, from the analytics store, against the seeds' targets.

Targets (seed 000 §10 and seed 003; where they disagree the stricter wins, see ARCHITECTURE.md):

- **p95 latency < 100 ms**: the 95th percentile of the time calls spent in the gateway (every
  call it answered, refusals included: the gateway's latency).
- **error rate < 0.1 %**: calls answered with a 5xx (the gateway's or the node's failure:
  ``SERVER_FAULTS``) over all calls. Refusals of the caller (4xx: keys, limits) are not errors
  of the service; a node's JSON-RPC error to a well-formed call (a revert) is an answer.
- **rate-limit hit ratio < 5 %**: calls a rate limit refused (``rate_limited``) over all calls.
- **availability >= 99.9 %**: the share of the window's minutes (hours, for windows over
  ``MINUTE_WINDOWS_UP_TO``) in which the chain served. A minute is down when at least half of
  its calls failed with a 5xx; a minute without calls is up (nothing failed).

The error rate and latency follow the Prometheus recording rules of deploy/prometheus (so the
control center and the Grafana SLO dashboard agree); availability is time-based, as seed 003's
"uptime", so that a short outage under heavy traffic and a long one under light traffic weigh by
their length. A chain without calls in the window has no verdict (``ok`` is ``None``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from hoodrun.telemetry.reporting import Reports

__all__ = [
    "MAX_WINDOW",
    "MIN_WINDOW",
    "OBJECTIVES",
    "RATE_LIMITED",
    "SERVER_FAULTS",
    "ChainSlo",
    "Indicator",
    "Objective",
    "SloReport",
    "measure",
    "parse_window",
]

SERVER_FAULTS: Final = frozenset(
    {"internal_error", "upstream_error", "no_healthy_upstream", "upstream_timeout"}
    | {"key_store_unavailable"}
)
"""Outcomes the gateway answers with a 5xx (``hoodrun.gateway.errors``)."""
RATE_LIMITED: Final = "rate_limited"
MIN_WINDOW: Final = timedelta(minutes=1)
MAX_WINDOW: Final = timedelta(days=30)
MINUTE_WINDOWS_UP_TO: Final = timedelta(days=6)  # the reports allow 10,000 windows
DOWN_SHARE: Final = 0.5
WINDOW_PATTERN: Final = r"^[1-9][0-9]{0,4}[mhd]$"
_WINDOW_UNITS: Final = {"m": 60, "h": 3600, "d": 86400}


def parse_window(value: str) -> timedelta:
    """``15m``, ``1h``, ``7d``: a report's window; ``ValueError`` when it is not one, or out of
    bounds (``MIN_WINDOW`` to ``MAX_WINDOW``)."""
    text = value.strip().lower()
    unit = _WINDOW_UNITS.get(text[-1:]) if text else None
    if unit is None or not text[:-1].isdigit():
        raise ValueError(f"window {value!r}: use e.g. 15m, 1h or 7d")
    window = timedelta(seconds=int(text[:-1]) * unit)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ValueError(f"window {value!r}: it must be from 1m to {MAX_WINDOW.days}d")
    return window


@dataclass(frozen=True, slots=True)
class Objective:
    name: str
    label: str
    op: Literal["<", ">="]
    target: float
    unit: Literal["ms", "ratio"]
    source: str

    def met(self, value: float) -> bool:
        return value < self.target if self.op == "<" else value >= self.target


OBJECTIVES: Final = (
    Objective("latency_p95_ms", "p95 latency", "<", 100.0, "ms", "seed 003 (seed 000: 300 ms)"),
    Objective("error_rate", "error rate", "<", 0.001, "ratio", "seed 003 (seed 000: 1%)"),
    Objective("rate_limit_ratio", "rate-limit hit ratio", "<", 0.05, "ratio", "seed 000"),
    Objective("availability", "availability", ">=", 0.999, "ratio", "seeds 000 and 003"),
)


@dataclass(frozen=True, slots=True)
class Indicator:
    objective: Objective
    value: float | None
    """``None`` without calls in the window."""

    @property
    def ok(self) -> bool | None:
        return None if self.value is None else self.objective.met(self.value)


@dataclass(frozen=True, slots=True)
class ChainSlo:
    chain: str
    requests: int
    errors: int
    rate_limited: int
    windows: int
    down_windows: int
    indicators: tuple[Indicator, ...]

    @property
    def ok(self) -> bool | None:
        """All met; ``None`` without calls."""
        verdicts = [i.ok for i in self.indicators]
        if any(v is None for v in verdicts):
            return None
        return all(verdicts)


@dataclass(frozen=True, slots=True)
class SloReport:
    start: datetime
    end: datetime
    every: str
    chains: tuple[ChainSlo, ...]


def _floor_hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


async def measure(
    reports: Reports, chains: Iterable[str], window: timedelta, *, now: datetime | None = None
) -> SloReport:
    """Each chain's indicators over the ``window`` up to ``now`` (the reports' clock).

    Chains named in ``chains`` appear even without calls; chains with calls but not named (gone
    from the config) appear too. Raises ``ValueError`` for a window out of bounds, and what the
    analytics store raises when it fails.
    """
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise ValueError(f"window must be from {MIN_WINDOW} to {MAX_WINDOW.days} days")
    end = (now or reports.now()).astimezone(UTC)
    start = end - window
    if start < reports.now() - timedelta(days=reports.raw_days):
        # Beyond the raw rows the rollups answer, and they hold whole hours.
        start, end = _floor_hour(start), _floor_hour(end)
    every = "minute" if window <= MINUTE_WINDOWS_UP_TO else "hour"
    totals = await reports.usage(start=start, end=end, by=("chain",))
    split = await reports.usage(start=start, end=end, by=("chain", "outcome"), every=every)

    p95: dict[str, float | None] = {}
    requests: dict[str, int] = defaultdict(int)
    for row in totals["rows"]:
        p95[row["chain"]] = row["latency_p95_ms"]
        requests[row["chain"]] = row["requests"]
    errors: dict[str, int] = defaultdict(int)
    limited: dict[str, int] = defaultdict(int)
    per_window: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in split["rows"]:
        chain, outcome, count = row["chain"], row["outcome"], row["requests"]
        calls = per_window[(chain, row["window"])]
        calls[0] += count
        if outcome in SERVER_FAULTS:
            errors[chain] += count
            calls[1] += count
        elif outcome == RATE_LIMITED:
            limited[chain] += count
    down: dict[str, int] = defaultdict(int)
    for (chain, _), (calls_in, failed) in per_window.items():
        if calls_in and failed / calls_in >= DOWN_SHARE:
            down[chain] += 1
    step = timedelta(minutes=1) if every == "minute" else timedelta(hours=1)
    first = datetime.fromtimestamp(
        start.timestamp() // step.total_seconds() * step.total_seconds(), UTC
    )
    windows = max(1, -(-(end - first) // step))  # the windows the range touches, partial ones too

    names = list(dict.fromkeys([*chains, *sorted(requests)]))
    found = []
    for chain in names:
        total = requests.get(chain, 0)
        values: dict[str, float | None] = {
            "latency_p95_ms": p95.get(chain) if total else None,
            "error_rate": errors[chain] / total if total else None,
            "rate_limit_ratio": limited[chain] / total if total else None,
            "availability": 1.0 - down[chain] / windows if total else None,
        }
        found.append(
            ChainSlo(
                chain=chain,
                requests=total,
                errors=errors[chain],
                rate_limited=limited[chain],
                windows=windows,
                down_windows=down[chain],
                indicators=tuple(Indicator(o, values[o.name]) for o in OBJECTIVES),
            )
        )
    return SloReport(start=start, end=end, every=every, chains=tuple(found))

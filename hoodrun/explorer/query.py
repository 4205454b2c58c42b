"""Reading a project's application logs: search, top errors, error rate, volume and daily lines.

Every query names its project (``project_id = ...``, the first column of the table's sorting key)
and its time range on ``ts`` (the partition key's column, so days outside the range are never
read), and reads ``logs FINAL``: a line sent twice (the same ``id``) counts once.

Filters (``LogFilter``): levels (``error``, ``warn,error``, or ``>=warn`` for a minimum level),
services, attributes (``key=value``, all must match) and ``q``, a full-text search over messages:
every word must appear as a whole token (``hasToken`` on ``message_lower``, which the token index
answers), case-insensitively; a word with punctuation in it (``db-1``, ``user@host``) and a
phrase in double quotes must appear as a substring (``positionCaseInsensitive``; the whole words
inside it are also looked up in the token index first). Case folding is ASCII, as ``lower``.

Lists are newest first and paged by an opaque cursor (keyset on ``(ts, id)``: a page never moves
when lines arrive). Times are ISO-8601 UTC strings, to the microsecond when they have one.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from hoodrun.explorer.schema import LEVELS
from hoodrun.telemetry.reporting import parse_time

if TYPE_CHECKING:
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = [
    "ERROR_LEVELS",
    "MAX_LIMIT",
    "WINDOW",
    "LogFilter",
    "LogQuery",
    "check_limit",
    "check_project",
    "checked_range",
    "decode_cursor",
    "encode_cursor",
    "iso",
    "parse_attributes",
    "parse_levels",
    "split_values",
    "time_range",
]

MAX_LIMIT = 1000
ERROR_LEVELS = ("error", "fatal")
WINDOW = timedelta(minutes=5)
"""The error rate's window."""
MAX_WINDOWS = 10_000  # 34 days of 5-minute windows
MAX_TERMS = 16
MAX_TERM_CHARS = 256
MAX_FILTER_VALUES = 32

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_DAY = timedelta(days=1)

# ClickHouse's tokens: maximal runs of ASCII letters and digits and of non-ASCII characters.
_SEPARATOR = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+")
_PHRASE = re.compile(r'"([^"]*)"')
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- parameters -------------------------------------------------------------------------------


def parse_levels(text: str | None) -> tuple[str, ...]:
    """Levels from ``error``, ``warn,error`` or ``>=warn`` (that level and the more severe ones);
    empty for no filter."""
    if text is None or not text.strip():
        return ()
    value = text.strip().lower()
    if value.startswith(">="):
        least = value[2:].strip()
        if least not in LEVELS:
            raise ValueError(f"level: {least!r} is not a level ({', '.join(LEVELS)})")
        return LEVELS[LEVELS.index(least) :]
    levels = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [level for level in levels if level not in LEVELS]
    if unknown:
        raise ValueError(
            f"level: {unknown[0]!r} is not a level ({', '.join(LEVELS)}); give one, a comma "
            "list, or >=warn for a minimum"
        )
    return levels


def parse_attributes(pairs: Iterable[str]) -> dict[str, str]:
    """Attribute filters from ``key=value`` texts (the CLI's ``--attr``)."""
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"attribute filter {pair!r}: use key=value")
        found[key.strip()] = value
    return found


def split_values(name: str, text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Values from a comma list (or already a list); empty for no filter."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else text
    values = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if len(values) > MAX_FILTER_VALUES:
        raise ValueError(f"{name}: at most {MAX_FILTER_VALUES} values")
    return values


def time_range(
    start: str | None,
    end: str | None,
    *,
    now: datetime,
    default: timedelta = timedelta(hours=24),
) -> tuple[datetime, datetime]:
    """A range from text (``parse_time``: ISO-8601 or a span ago such as ``24h``), as the CLI
    and the API take it: ``end`` defaults to ``now``, ``start`` to ``default`` before ``end``."""
    until = parse_time(end, now=now, name="to") if end else now
    since = parse_time(start, now=now, name="from") if start else until - default
    return checked_range(since, until)


def checked_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``start`` and ``end`` in UTC; ValueError unless both are aware and ``start < end``."""
    for name, value in (("from", start), ("to", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware (UTC), not {value.isoformat()}")
    if start >= end:
        raise ValueError(f"from ({iso(start)}) must be before to ({iso(end)})")
    return start.astimezone(UTC), end.astimezone(UTC)


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")


def check_project(project: str) -> None:
    # An empty id would match the rows that belong to no project (e.g. refused keys).
    if not project:
        raise ValueError("a project id is required")


# --- cursors ----------------------------------------------------------------------------------


def encode_cursor(kind: str, *values: int | str) -> str:
    """An opaque cursor: the position after the last row of a page (base64 of JSON)."""
    return base64.urlsafe_b64encode(orjson.dumps([kind, *values])).rstrip(b"=").decode()


def decode_cursor(kind: str, text: str, types: tuple[type, ...]) -> list[Any]:
    """The values of a cursor made by ``encode_cursor(kind, ...)``; ValueError for any other."""
    problem = ValueError("cursor: not a cursor of this list; pass next_cursor as it was returned")
    try:
        data = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        raise problem from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != kind:
        raise problem
    values = data[1:]
    # bool is an int subclass: refuse it where an int is expected.
    if not all(type(value) is wanted for value, wanted in zip(values, types, strict=True)):
        raise problem
    return values


# --- times ------------------------------------------------------------------------------------


def micros(value: datetime) -> int:
    return (value - _EPOCH) // _US


def iso(value: datetime | int) -> str:
    """An ISO-8601 UTC text of a datetime or of microseconds since the epoch."""
    when = _EPOCH + value * _US if isinstance(value, int) else value.astimezone(UTC)
    spec = "microseconds" if when.microsecond else "seconds"
    return when.isoformat(timespec=spec).replace("+00:00", "Z")


def _floor(value: datetime, step: timedelta) -> datetime:
    return _EPOCH + (value - _EPOCH) // step * step


def windows(start: datetime, end: datetime, step: timedelta) -> list[datetime]:
    """The starts of the ``step`` windows (aligned on the epoch) that meet [start, end)."""
    first = _floor(start, step)
    count = -(-(end - first) // step)
    if count > MAX_WINDOWS:
        raise ValueError(
            f"{count} windows of {step} in this range; at most {MAX_WINDOWS}: use a shorter range"
        )
    return [first + i * step for i in range(count)]


# --- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """What lines to keep, besides the project and the range (see the module's docstring)."""

    levels: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)
    q: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        level: str | None = None,
        service: str | Iterable[str] | None = None,
        attributes: Mapping[str, str] | None = None,
        q: str | None = None,
    ) -> LogFilter:
        """From text as the API and the CLI take it; ValueError says what is wrong."""
        services = split_values("service", service)
        found = cls(parse_levels(level), services, dict(attributes or {}), q)
        if len(found.attributes) > MAX_FILTER_VALUES:
            raise ValueError(f"at most {MAX_FILTER_VALUES} attribute filters")
        found.terms()  # checks q
        return found

    def terms(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``q`` as (words matched as tokens, texts matched as substrings)."""
        if not self.q or not self.q.strip():
            return (), ()
        phrases = [p for p in _PHRASE.findall(self.q) if p.strip()]
        rest = _PHRASE.sub(" ", self.q)
        if '"' in rest:
            raise ValueError("q: a phrase's closing quote (\") is missing")
        tokens: list[str] = []
        for word in rest.split():
            if _SEPARATOR.search(word):
                phrases.append(word)  # several tokens and their punctuation: a substring
            else:
                tokens.append(word.translate(_ASCII_LOWER))
        words = tuple(dict.fromkeys(tokens))
        texts = tuple(dict.fromkeys(phrases))
        if len(words) + len(texts) > MAX_TERMS:
            raise ValueError(f"q: at most {MAX_TERMS} words and phrases")
        if any(len(term) > MAX_TERM_CHARS for term in (*words, *texts)):
            raise ValueError(f"q: a word or phrase has at most {MAX_TERM_CHARS} characters")
        return words, texts


def _inner_tokens(text: str) -> list[str]:
    """The tokens of ``text`` that are whole in any message containing it: those with a
    separator (or the text's edge that is a separator) on both sides."""
    parts = _SEPARATOR.split(text.translate(_ASCII_LOWER))
    # split() leaves '' at an edge that is a separator: every other part is bounded there.
    inner = parts[1:-1]
    return [part for part in inner if part]


def _where(
    project: str, start: datetime, end: datetime, filters: LogFilter
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause of a logs query and its parameters (values are never formatted in)."""
    check_project(project)
    start, end = checked_range(start, end)
    clauses = [
        "project_id = {project:String}",
        "ts >= fromUnixTimestamp64Micro({start:Int64}, 'UTC')",
        "ts < fromUnixTimestamp64Micro({end:Int64}, 'UTC')",
    ]
    params: dict[str, Any] = {"project": project, "start": micros(start), "end": micros(end)}

    def bind(prefix: str, values: Iterable[str]) -> list[str]:
        names = []
        for i, value in enumerate(values):
            params[f"{prefix}{i}"] = value
            names.append(f"{{{prefix}{i}:String}}")
        return names

    if filters.levels:
        clauses.append(f"level IN ({', '.join(bind('lv', filters.levels))})")
    if filters.services:
        clauses.append(f"service IN ({', '.join(bind('sv', filters.services))})")
    keys = bind("ak", filters.attributes.keys())
    values = bind("av", filters.attributes.values())
    clauses += [
        f"mapContains(attributes, {key}) AND attributes[{key}] = {value}"
        for key, value in zip(keys, values, strict=True)
    ]
    words, texts = filters.terms()
    tokens = list(dict.fromkeys([*words, *(t for text in texts for t in _inner_tokens(text))]))
    clauses += [f"hasToken(message_lower, {name})" for name in bind("tk", tokens)]
    clauses += [f"positionCaseInsensitive(message, {name}) > 0" for name in bind("tx", texts)]
    return " AND ".join(clauses), params


# --- statements -------------------------------------------------------------------------------

_SEARCH = """
SELECT toUnixTimestamp64Micro(ts) AS ts_us, id, level, service, message, fingerprint, stack,
    attributes, trace_id, span_id, key_id
FROM {{db}}.logs FINAL
WHERE {where}
ORDER BY ts DESC, id DESC
LIMIT {{limit:UInt32}}
"""
_AFTER = (
    " AND ts <= fromUnixTimestamp64Micro({c_ts:Int64}, 'UTC')"
    " AND (ts, id) < (fromUnixTimestamp64Micro({c_ts:Int64}, 'UTC'), {c_id:String})"
)
# Aliases are prefixed (m_...): an alias named like a column would replace it in other aggregates.
_TOP_ERRORS = """
SELECT fingerprint, count() AS m_count, countIf(level = 'fatal') AS m_fatal,
    toUnixTimestamp64Micro(min(ts)) AS m_first, toUnixTimestamp64Micro(max(ts)) AS m_last,
    argMax(message, ts) AS m_sample, topK(3)(service) AS m_services
FROM {{db}}.logs FINAL
WHERE {where}
GROUP BY fingerprint
ORDER BY m_count DESC, fingerprint
LIMIT {{limit:UInt32}}
"""
_ERROR_RATE = """
SELECT toUnixTimestamp(toStartOfFiveMinutes(ts)) AS m_window, count() AS m_total,
    countIf(level IN ('error', 'fatal')) AS m_errors
FROM {{db}}.logs FINAL
WHERE {where}
GROUP BY m_window
"""
_VOLUME = """
SELECT level, count() AS m_lines
FROM {{db}}.logs FINAL
WHERE {where}
GROUP BY level
"""
_DAILY = """
SELECT toUnixTimestamp(toStartOfDay(ts)) AS m_day, count() AS m_lines
FROM {{db}}.logs FINAL
WHERE {where}
GROUP BY m_day
"""


class LogQuery:
    """Queries over one analytics store's ``logs`` table, each for one project.

    ``start`` and ``end`` are timezone-aware; ``end`` is excluded. ``clock`` is "now" for
    ``bounds``. Errors in the arguments raise ``ValueError`` (its text says what to fix); the
    store's own raise its ``StoreError``.
    """

    def __init__(self, store: AnalyticsStore, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self.store = store
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    def bounds(
        self, start: str | None, end: str | None, default: timedelta = timedelta(hours=24)
    ) -> tuple[datetime, datetime]:
        """A range from text (see ``time_range``); ``default`` is its length without ``start``."""
        return time_range(start, end, now=self.now(), default=default)

    def day_bounds(self, start: str | None, end: str | None) -> tuple[datetime, datetime]:
        """``bounds`` for daily figures: without ``start``, the 7 UTC days up to ``end``."""
        since, until = self.bounds(start, end)
        if start is None:
            since = _floor(until - _US, _DAY) - 6 * _DAY
        return since, until

    async def search(
        self,
        project: str,
        *,
        start: datetime,
        end: datetime,
        filters: LogFilter | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Lines newest first, ``limit`` at a time; ``next_cursor`` (``None`` on the last page)
        gives the next page with the same arguments."""
        check_limit(limit)
        where, params = _where(project, start, end, filters or LogFilter())
        if cursor is not None:
            params["c_ts"], params["c_id"] = decode_cursor("logs", cursor, (int, str))
            where += _AFTER
        params["limit"] = limit + 1  # one more tells whether there is a next page
        rows = await self.store.query(_SEARCH.format(where=where), params)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor("logs", int(last["ts_us"]), str(last["id"]))
        return {
            **_header(project, start, end),
            "limit": limit,
            "next_cursor": next_cursor,
            "rows": [_line(row) for row in page],
        }

    async def top_errors(
        self,
        project: str,
        *,
        start: datetime,
        end: datetime,
        filters: LogFilter | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        """Lines of level error and fatal grouped by fingerprint, the most frequent first.

        Each row: ``fingerprint``, ``count``, ``fatal`` (how many of them were fatal),
        ``first_seen`` and ``last_seen`` within the range, ``sample`` (the latest message) and
        ``services`` (up to three, the most frequent first). A level filter narrows the two
        levels (``fatal`` alone); other levels are refused.
        """
        check_limit(limit)
        filters = filters or LogFilter()
        levels: tuple[str, ...] = ERROR_LEVELS
        if filters.levels:
            levels = tuple(level for level in filters.levels if level in ERROR_LEVELS)
            if not levels:
                raise ValueError("top errors counts levels error and fatal: drop the level filter")
        where, params = _where(project, start, end, _replace(filters, levels=levels))
        params["limit"] = limit
        rows = await self.store.query(_TOP_ERRORS.format(where=where), params)
        return {
            **_header(project, start, end),
            "limit": limit,
            "rows": [
                {
                    "fingerprint": str(row["fingerprint"]),
                    "count": int(row["m_count"]),
                    "fatal": int(row["m_fatal"]),
                    "first_seen": iso(int(row["m_first"])),
                    "last_seen": iso(int(row["m_last"])),
                    "sample": str(row["m_sample"]),
                    "services": [str(s) for s in row["m_services"]],
                }
                for row in rows
            ],
        }

    async def error_rate(
        self,
        project: str,
        *,
        start: datetime,
        end: datetime,
        filters: LogFilter | None = None,
    ) -> dict[str, Any]:
        """Per 5-minute window (UTC, every window of the range, zeros included): ``total``
        lines, ``errors`` (levels error and fatal) and ``rate`` (errors / total, 0 without
        lines). A window cut by the range counts only its part within it."""
        filters = filters or LogFilter()
        if filters.levels:
            raise ValueError("the error rate counts every level: drop the level filter")
        where, params = _where(project, start, end, filters)
        starts = windows(start, end, WINDOW)
        rows = await self.store.query(_ERROR_RATE.format(where=where), params)
        found = {int(row["m_window"]): row for row in rows}
        out = []
        for window in starts:
            row = found.get(int(window.timestamp()), {})
            total, errors = int(row.get("m_total", 0)), int(row.get("m_errors", 0))
            out.append(
                {
                    "window": iso(window),
                    "total": total,
                    "errors": errors,
                    "rate": errors / total if total else 0.0,
                }
            )
        return {**_header(project, start, end), "every": "5m", "rows": out}

    async def volume(
        self,
        project: str,
        *,
        start: datetime,
        end: datetime,
        filters: LogFilter | None = None,
    ) -> dict[str, Any]:
        """Lines per level, least severe first, zeros included (only the filtered levels when
        there is a level filter), and their ``total``."""
        filters = filters or LogFilter()
        where, params = _where(project, start, end, filters)
        rows = await self.store.query(_VOLUME.format(where=where), params)
        found = {str(row["level"]): int(row["m_lines"]) for row in rows}
        levels = [level for level in LEVELS if not filters.levels or level in filters.levels]
        levels += sorted(set(found) - set(levels))  # not normalized: shown rather than lost
        out = [{"level": level, "lines": found.get(level, 0)} for level in levels]
        return {
            **_header(project, start, end),
            "total": sum(found.values()),
            "rows": out,
        }

    async def daily(
        self,
        project: str,
        *,
        start: datetime,
        end: datetime,
        filters: LogFilter | None = None,
    ) -> dict[str, Any]:
        """Lines per UTC day, every day of the range (zeros included); a day cut by the range
        counts only its part within it."""
        where, params = _where(project, start, end, filters or LogFilter())
        days = windows(start, end, _DAY)
        rows = await self.store.query(_DAILY.format(where=where), params)
        found = {int(row["m_day"]): int(row["m_lines"]) for row in rows}
        out = [
            {"day": day.date().isoformat(), "lines": found.get(int(day.timestamp()), 0)}
            for day in days
        ]
        return {
            **_header(project, start, end),
            "total": sum(found.values()),
            "rows": out,
        }


def _replace(filters: LogFilter, *, levels: tuple[str, ...]) -> LogFilter:
    return LogFilter(levels, filters.services, filters.attributes, filters.q)


def _header(project: str, start: datetime, end: datetime) -> dict[str, Any]:
    return {"project": project, "start": iso(start), "end": iso(end)}


def _line(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "ts": iso(int(row["ts_us"])),
        "id": str(row["id"]),
        "level": str(row["level"]),
        "service": str(row["service"]),
        "message": str(row["message"]),
        "fingerprint": str(row["fingerprint"]),
        "stack": str(row["stack"]),
        "attributes": {str(k): str(v) for k, v in dict(row["attributes"]).items()},
        "trace_id": str(row["trace_id"]),
        "span_id": str(row["span_id"]),
        "key_id": str(row["key_id"]),
    }

"""Meters: usage aggregated per subject, group and time window, in ClickHouse SQL.

Two kinds, one query shape:

- Meters of the config (``meters:``) read the usage events (``hoodrun.metering.events``) of their
  ``event_type``; the value and the groups come from each event's ``data`` by JSONPath. Paths are
  object keys only: ``$.tokens``, ``$.usage.input`` (keys of letters, digits, ``_`` and ``-``);
  anything else (``$.items[0]``, ``$..x``) is refused when the service starts.
- The built-in meters read the gateway's own records (``requests_raw``, kept
  ``telemetry.retention.raw_days`` days): ``requests`` counts calls, ``compute_units`` sums their
  compute units; the subject is the org id, the groups are chain, method, key_id, project_id and
  outcome.

A query (``MeterQuery``) takes a range ``[from, to)``, optional windows (MINUTE, HOUR, DAY or MONTH,
aligned in ``window_time_zone``: a DAY in Europe/Istanbul runs from local midnight, and in
America/New_York the day DST starts has 23 hours), subjects, groups and group filters. The
answer is OpenMeter's, ``{from, to, windowSize, data: [{value, windowStart, windowEnd, subject,
groupBy}]}``, with one row per window, subject (when filtered or grouped by) and group that has
usage; windows without usage have no row. When ``from`` or ``to`` falls inside a window, that
window counts only its part of the range. Without windows, ``windowStart`` and ``windowEnd`` are
``from`` and ``to`` (without ``from``: the minute of the group's first usage).

Aggregations: SUM, AVG, MIN, MAX of numbers (JSON numbers or numeric strings; events whose value
is missing or not a number are left out), COUNT of events, UNIQUE_COUNT of distinct values
(``uniqExact``), LATEST: the value of the latest event (``argMax`` by time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hoodrun.config import ConfigError
from hoodrun.metering.config import BUILTIN_METERS, JSON_PATH, MeterConfig
from hoodrun.metering.events import DEFAULT_RETENTION_DAYS, EventLog, parse_rfc3339

if TYPE_CHECKING:
    from hoodrun.telemetry.store import AnalyticsStore

__all__ = [
    "MAX_ROWS",
    "WINDOW_SIZES",
    "MeterError",
    "MeterQuery",
    "MeterService",
    "UnknownMeter",
    "json_path_keys",
    "meter_query",
]

WINDOW_SIZES = ("MINUTE", "HOUR", "DAY", "MONTH")
MAX_ROWS = 100_000  # one answer's rows at most: a longer range or larger windows beyond that
SUBJECT = "subject"  # groupBy's reserved name: group by the subject

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# Built-in meters' groups: the request record's columns.
_BUILTIN_GROUPS = ("chain", "method", "key_id", "project_id", "outcome")


class MeterError(ValueError):
    """A meter query that cannot be answered as asked (a 400)."""


class UnknownMeter(LookupError):
    """No meter has this slug (a 404)."""

    def __init__(self, slug: str) -> None:
        super().__init__(f"no meter {slug!r}")
        self.slug = slug


def json_path_keys(path: str) -> tuple[str, ...]:
    """The object keys of a JSONPath of the supported form ``$.a`` / ``$.a.b``."""
    match = JSON_PATH.match(path)
    if not match:
        raise ValueError(
            f"{path!r} is not supported: use $.key or $.key.subkey (object keys of letters, "
            "digits, _ and -; no arrays, wildcards or filters)"
        )
    return tuple(match.group(1)[1:].split("."))


@dataclass(frozen=True)
class MeterQuery:
    """What to aggregate: a range (``end`` defaults to now), windows, subjects and groups."""

    start: datetime | None = None
    end: datetime | None = None
    window_size: str | None = None
    window_time_zone: str = "UTC"
    subjects: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    filter_group_by: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def meter_query(
    *,
    start: str | None = None,
    end: str | None = None,
    window_size: str | None = None,
    window_time_zone: str | None = None,
    subjects: Sequence[str] = (),
    group_by: Sequence[str] = (),
    filter_group_by: Mapping[str, str | Sequence[str]] | None = None,
) -> MeterQuery:
    """A ``MeterQuery`` from the API's text (``from``/``to`` in RFC 3339, an IANA time zone);
    ``MeterError`` names the parameter that is wrong."""
    bounds: list[datetime | None] = []
    for name, text in (("from", start), ("to", end)):
        try:
            bounds.append(None if text is None else parse_rfc3339(text))
        except ValueError as exc:
            raise MeterError(f"{name}: {exc}") from None
    if bounds[0] is not None and bounds[1] is not None and bounds[0] >= bounds[1]:
        raise MeterError("from must be before to")
    if window_size is not None and window_size not in WINDOW_SIZES:
        raise MeterError(
            f"windowSize must be one of {', '.join(WINDOW_SIZES)}, not {window_size!r}"
        )
    zone = window_time_zone or "UTC"
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise MeterError(f"windowTimeZone: {zone!r} is not an IANA time zone") from None
    filters: dict[str, tuple[str, ...]] = {}
    for name, values in (filter_group_by or {}).items():
        listed = (values,) if isinstance(values, str) else tuple(values)
        if not listed or not all(isinstance(value, str) for value in listed):
            raise MeterError(f"filterGroupBy[{name}]: a string or a list of strings")
        filters[name] = listed
    return MeterQuery(
        start=bounds[0],
        end=bounds[1],
        window_size=window_size,
        window_time_zone=zone,
        subjects=tuple(subjects),
        group_by=tuple(dict.fromkeys(group_by)),
        filter_group_by=filters,
    )


@dataclass(frozen=True)
class _Meter:
    """A meter and where its rows come from: SQL fragments, values bound as parameters."""

    slug: str
    description: str
    aggregation: str
    event_type: str
    value_property: str | None
    group_by: Mapping[str, str]  # name -> JSONPath, as shown
    builtin: bool
    table: str
    time: str
    order: str  # ties of LATEST: the latest by this expression
    subject: str
    where: str
    params: Mapping[str, Any]
    groups: Mapping[str, str]  # name -> SQL text expression ('' when missing)
    value: str | None  # SQL expression: Float64 (or text for UNIQUE_COUNT); NULL is left out


_AGGREGATES = {
    "SUM": "sum(m_v)",
    "COUNT": "count()",
    "UNIQUE_COUNT": "uniqExact(m_v)",
    "AVG": "avg(m_v)",
    "MIN": "min(m_v)",
    "MAX": "max(m_v)",
    "LATEST": "argMax(m_v, m_o)",
}

# Window start (a DateTime in the zone) and the start of the next window, from m_t.
_WINDOWS = {
    "MINUTE": (
        "toStartOfInterval(toDateTime(m_t), INTERVAL 1 MINUTE, {tz:String})",
        "w_start + INTERVAL 1 MINUTE",
    ),
    "HOUR": ("toStartOfHour(toDateTime(m_t), {tz:String})", "w_start + INTERVAL 1 HOUR"),
    "DAY": (
        "toStartOfDay(toDateTime(m_t), {tz:String})",
        "toDateTime(toDate(w_start, {tz:String}) + 1, {tz:String})",
    ),
    "MONTH": (
        "toDateTime(toStartOfMonth(toDateTime(m_t), {tz:String}), {tz:String})",
        "toDateTime(addMonths(toDate(w_start, {tz:String}), 1), {tz:String})",
    ),
}


def _text(raw: str, alias: str) -> str:
    """A JSON value's text from its raw JSON: a string unquoted, null and absent as ''."""
    return (
        f"if(startsWith({raw} AS {alias}, '\"'), JSONExtractString({alias}), "
        f"if({alias} = 'null', '', {alias}))"
    )


def _events_meter(meter: MeterConfig) -> _Meter:
    params: dict[str, Any] = {"event_type": meter.event_type}

    def extract(path: str, prefix: str, what: str) -> str:
        try:
            keys = json_path_keys(path)
        except ValueError as exc:
            raise ConfigError(f"meters[{meter.slug}].{what}: {exc}") from None
        names = []
        for position, key in enumerate(keys):
            params[f"{prefix}_{position}"] = key
            names.append(f"{{{prefix}_{position}:String}}")
        return _text(f"JSONExtractRaw(data, {', '.join(names)})", f"m_r{prefix}")

    groups = {
        name: extract(path, f"g{index}", f"group_by.{name}")
        for index, (name, path) in enumerate(meter.group_by.items())
    }
    value = None
    if meter.value_property is not None:
        text = extract(meter.value_property, "v", "value_property")
        if meter.aggregation == "UNIQUE_COUNT":
            value = f"nullIf({text}, '')"
        else:
            value = f"if(isFinite(toFloat64OrNull({text}) AS m_f), m_f, NULL)"
    return _Meter(
        slug=meter.slug,
        description=meter.description,
        aggregation=meter.aggregation,
        event_type=meter.event_type,
        value_property=meter.value_property,
        group_by=dict(meter.group_by),
        builtin=False,
        table="events",
        time="time",
        order="(time, source, id)",
        subject="subject",
        where="type = {event_type:String}",
        params=params,
        groups=groups,
        value=value,
    )


def _builtin_meter(slug: str) -> _Meter:
    counts = slug == "requests"
    return _Meter(
        slug=slug,
        description=(
            "Built in: billable JSON-RPC calls through the gateway, answered by a node or the "
            "cache (a batch counts each call; refusals and failures do not); the subject is the "
            "org id."
            if counts
            else "Built in: compute units of the calls through the gateway; the subject is the "
            "org id."
        ),
        aggregation="COUNT" if counts else "SUM",
        event_type="hoodrun.gateway.request",
        value_property=None if counts else "$.compute_units",
        group_by={name: f"$.{name}" for name in _BUILTIN_GROUPS},
        builtin=True,
        table="requests_raw",
        time="ts",
        order="(ts, request_id, call_index)",
        subject="org_id",
        # Billable calls only, as quotas and invoices count them (compute units of the others
        # are 0 already); WebSocket notifications are not calls, but their bytes cost units.
        where=(
            "outcome IN ('ok', 'rpc_error') AND method != 'eth_subscription'"
            if counts
            else "outcome IN ('ok', 'rpc_error')"
        ),
        params={},
        groups={name: f"toString({name})" for name in _BUILTIN_GROUPS},
        value=None if counts else "toFloat64(compute_units)",
    )


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _US


def _iso(value: datetime) -> str:
    spec = "microseconds" if value.microsecond % 1000 else "milliseconds"
    spec = "seconds" if not value.microsecond else spec
    return value.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def _iso_seconds(epoch: int) -> str:
    return _iso(_EPOCH + timedelta(seconds=epoch))


class MeterService:
    """The meters of a deployment (the built-ins and ``meters``) over an analytics store, and the
    usage events they count (``events``: an ``EventLog`` on the same store).

    ``ConfigError`` when a meter's JSONPath is of a form not supported (see the module).
    """

    def __init__(
        self,
        store: AnalyticsStore,
        meters: Sequence[MeterConfig] = (),
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.store = store
        self.events = EventLog(store, retention_days=retention_days, clock=clock)
        self._clock = clock
        self.created = clock()
        self._meters: dict[str, _Meter] = {slug: _builtin_meter(slug) for slug in BUILTIN_METERS}
        for meter in meters:
            self._meters[meter.slug] = _events_meter(meter)

    def now(self) -> datetime:
        return self._clock()

    def _meter(self, slug: str) -> _Meter:
        meter = self._meters.get(slug)
        if meter is None:
            raise UnknownMeter(slug)
        return meter

    def slugs(self) -> list[str]:
        return list(self._meters)

    def describe(self, slug: str) -> dict[str, Any]:
        """The meter as OpenMeter shows one (``id`` is the slug; times are the service's start)."""
        meter = self._meter(slug)
        created = _iso(self.created)
        out: dict[str, Any] = {
            "id": meter.slug,
            "slug": meter.slug,
            "name": meter.slug,
            "aggregation": meter.aggregation,
            "eventType": meter.event_type,
            "groupBy": dict(meter.group_by),
            "createdAt": created,
            "updatedAt": created,
        }
        if meter.description:
            out["description"] = meter.description
        if meter.value_property is not None:
            out["valueProperty"] = meter.value_property
        if meter.builtin:
            out["annotations"] = {"hoodrun.builtin": True}
        return out

    def describe_all(self) -> list[dict[str, Any]]:
        return [self.describe(slug) for slug in self._meters]

    async def query(self, slug: str, query: MeterQuery) -> dict[str, Any]:
        """The meter's usage as OpenMeter answers a query (see the module's docstring)."""
        meter = self._meter(slug)
        end = query.end or self._clock()
        if query.start is not None and query.start >= end:
            raise MeterError("from must be before to (which defaults to now)")
        for name in query.group_by:
            if name != SUBJECT and name not in meter.groups:
                raise MeterError(f"groupBy: {meter.slug} has no group {name!r}{_known(meter)}")
        for name in query.filter_group_by:
            if name not in meter.groups:
                raise MeterError(
                    f"filterGroupBy: {meter.slug} has no group {name!r}{_known(meter)}"
                )
        groups = [name for name in query.group_by if name != SUBJECT]
        by_subject = bool(query.subjects) or SUBJECT in query.group_by
        sql, params, aliases = _statement(meter, query, end, groups, by_subject)
        if not meter.builtin:
            await self.events.setup()
        rows = await self.store.query(sql, params)
        if len(rows) > MAX_ROWS:
            raise MeterError(
                f"more than {MAX_ROWS} rows: use a shorter range, larger windows or fewer groups"
            )
        data = []
        for row in rows:
            if not int(row["m_n"]):  # the totals of a range without usage: no row
                continue
            if query.window_size is not None:
                window_start = _iso_seconds(int(row["w_start_s"]))
                window_end = _iso_seconds(int(row["w_end_s"]))
            else:
                first = _EPOCH + int(row["m_first_us"]) * _US
                window_start = _iso(query.start) if query.start else _iso(_minute(first))
                window_end = _iso(end)
            data.append(
                {
                    "value": float(row["m_value"]),
                    "windowStart": window_start,
                    "windowEnd": window_end,
                    "subject": str(row["m_s"]) if by_subject else None,
                    "groupBy": {name: (str(row[aliases[name]]) or None) for name in groups},
                }
            )
        answer: dict[str, Any] = {}
        if query.start is not None:
            answer["from"] = _iso(query.start)
        if query.end is not None:
            answer["to"] = _iso(query.end)
        if query.window_size is not None:
            answer["windowSize"] = query.window_size
        answer["data"] = data
        return answer

    async def subjects(
        self, slug: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[str]:
        """The subjects with usage of the meter (in ``[start, end)`` when given), sorted."""
        meter = self._meter(slug)
        where, params = _where(meter, start, end)
        sql = (
            f"SELECT DISTINCT {meter.subject} AS m_s FROM {{db}}.{meter.table} FINAL "  # noqa: S608
            f"WHERE {where} AND m_s != '' ORDER BY m_s"
        )
        if not meter.builtin:
            await self.events.setup()
        return [str(row["m_s"]) for row in await self.store.query(sql, params)]


def _known(meter: _Meter) -> str:
    names = ", ".join(meter.groups)
    return f"; it has {names}" if names else "; it has no groups"


def _minute(value: datetime) -> datetime:
    return value.replace(second=0, microsecond=0)


def _where(
    meter: _Meter, start: datetime | None, end: datetime | None
) -> tuple[str, dict[str, Any]]:
    clauses, params = [meter.where], dict(meter.params)
    if start is not None:
        clauses.append(f"{meter.time} >= fromUnixTimestamp64Micro({{m_from:Int64}})")
        params["m_from"] = _micros(start)
    if end is not None:
        clauses.append(f"{meter.time} < fromUnixTimestamp64Micro({{m_to:Int64}})")
        params["m_to"] = _micros(end)
    return " AND ".join(clauses), params


def _statement(
    meter: _Meter, query: MeterQuery, end: datetime, groups: list[str], by_subject: bool
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The query's SQL, its parameters, and the column alias of each group asked for."""
    where, params = _where(meter, query.start, end)
    if query.subjects:
        names = []
        for index, subject in enumerate(query.subjects):
            params[f"s_{index}"] = subject
            names.append(f"{{s_{index}:String}}")
        where += f" AND {meter.subject} IN ({', '.join(names)})"
    # Only the groups asked for or filtered on are extracted (each one parses the JSON).
    needed = list(dict.fromkeys([*groups, *query.filter_group_by]))
    aliases = {name: f"m_g{index}" for index, name in enumerate(needed)}
    inner = [
        f"{meter.time} AS m_t",
        f"{meter.order} AS m_o",
        f"{meter.subject} AS m_s",
        *(f"{meter.groups[name]} AS {aliases[name]}" for name in needed),
    ]
    outer_where = []
    if meter.value is not None:
        inner.append(f"{meter.value} AS m_v")
        outer_where.append("m_v IS NOT NULL")
    for name, values in query.filter_group_by.items():
        names = []
        for index, value in enumerate(values):
            params[f"f_{aliases[name][2:]}_{index}"] = value
            names.append(f"{{f_{aliases[name][2:]}_{index}:String}}")
        outer_where.append(f"{aliases[name]} IN ({', '.join(names)})")
    select, keys = [], []
    if query.window_size is not None:
        start_sql, end_sql = _WINDOWS[query.window_size]
        params["tz"] = query.window_time_zone
        select += [
            f"{start_sql} AS w_start",
            "toUnixTimestamp(w_start) AS w_start_s",
            f"toUnixTimestamp({end_sql}) AS w_end_s",
        ]
        keys.append("w_start")
    else:
        select.append("toUnixTimestamp64Micro(min(m_t)) AS m_first_us")
    if by_subject:
        select.append("m_s")
        keys.append("m_s")
    select += [aliases[name] for name in groups]
    keys += [aliases[name] for name in groups]
    select += [f"{_AGGREGATES[meter.aggregation]} AS m_value", "count() AS m_n"]
    params["m_limit"] = MAX_ROWS + 1
    sql = (
        f"SELECT {', '.join(select)} FROM ("  # noqa: S608 (fragments; values are parameters)
        f"SELECT {', '.join(inner)} FROM {{db}}.{meter.table} FINAL WHERE {where})"
    )
    if outer_where:
        sql += f" WHERE {' AND '.join(outer_where)}"
    if keys:
        sql += f" GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    sql += " LIMIT {m_limit:UInt32}"
    return sql, params, aliases

"""Log lines as projects send them (``POST /logs/v1``): the body decoded, every line checked and
normalized, and the errors of the logs API.

A body is JSON (``application/json``) or MessagePack (``application/msgpack``,
``application/x-msgpack``): one log line (an object), an array of them, or ``{"logs": [...]}``,
at most ``logs.max_batch`` lines. A line::

    {"message": "payment failed", "level": "error", "timestamp": "2026-11-29T10:00:00Z",
     "service": "billing", "id": "01HX...", "stack": "Traceback ...",
     "attributes": {"order": 1234, "retry": true}, "trace_id": "...", "span_id": "..."}

- ``message``: required, a string; cut at ``logs.max_message_bytes`` (UTF-8), as ``stack`` and
  attribute values are, each cut named in the attribute ``_truncated`` (``message,stack``).
- ``level``: ``trace``, ``debug``, ``info`` (the default), ``warn``, ``error``, ``fatal``; also
  ``warning``, ``err``, ``critical``/``crit``/``panic``/``emergency``/``emerg``/``alert`` (fatal),
  ``notice``, ``verbose``, ``severe``, Java's ``fine``/``finer``/``finest``, any case; a syslog
  severity 0-7 or a Python level 10-59 (10 debug, 20 info, 30 warn, 40 error, 50 fatal).
- ``timestamp`` (or ``ts``): RFC 3339 with an offset, or a number since the epoch in seconds,
  milliseconds, microseconds or nanoseconds (told apart by size); default: when it arrived. At
  most a day ahead, and not older than the plan's retention (it would be dropped at once).
- ``id``: 1-128 characters; lines with the same id and timestamp are stored once (a retried
  batch), so a client that retries should send both. Default: a new id.
- ``service``, ``trace_id``, ``span_id``: strings; ``attributes``: an object of at most 64 keys
  whose values are strings, numbers, booleans or null (dropped); nested values are refused.
- Any other field is refused by name; ``project`` too, since a key writes only to its project.

A batch is all or nothing: one invalid line refuses it whole (``InvalidLogs``, 422), with every
problem named by line and field.

Errors (``LogsError``, each with an HTTP status and a stable code)::

    LogsError
    ├── MalformedBody (400)       ├── InvalidLogs (422, per-line errors)
    ├── KeyRequired (403)         ├── RateLimited (429)
    ├── BodyTooLarge (413)        ├── QuotaExceeded (429)
    ├── TooManyLines (413)        ├── QueueFull (503)
    ├── UnsupportedContentType (415)
    ├── StoreUnavailable (503)    └── LogsClosed (503)
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgpack
import orjson

from hoodrun.explorer.schema import LEVELS
from hoodrun.metering.events import parse_rfc3339

__all__ = [
    "JSON_TYPES",
    "MSGPACK_TYPES",
    "BodyTooLarge",
    "FieldError",
    "InvalidLogs",
    "KeyRequired",
    "LogLines",
    "LogsClosed",
    "LogsError",
    "MalformedBody",
    "QueueFull",
    "QuotaExceeded",
    "RateLimited",
    "StoreUnavailable",
    "TooManyLines",
    "UnsupportedContentType",
    "body_lines",
    "decode_body",
    "new_ids",
    "normalize_level",
    "parse_logs",
]

JSON_TYPES = ("application/json",)
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")

MAX_ERRORS = 100  # field errors listed in one refusal; the rest are counted
MAX_ID = 128
MAX_NAME = 256  # service, trace_id, span_id, attribute keys
MAX_ATTRIBUTES = 64

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_DAY_US = 86_400_000_000
_FIELDS = frozenset(
    {"message", "level", "timestamp", "ts", "service", "id", "stack", "attributes"}
    | {"trace_id", "span_id"}
)
_FIELD_LIST = ", ".join(sorted(_FIELDS))

_LEVELS: dict[str, str] = {name: name for name in LEVELS} | {
    "warning": "warn",
    "err": "error",
    "severe": "error",
    "critical": "fatal",
    "crit": "fatal",
    "panic": "fatal",
    "emergency": "fatal",
    "emerg": "fatal",
    "alert": "fatal",
    "notice": "info",
    "informational": "info",
    "information": "info",
    "verbose": "debug",
    "fine": "debug",
    "finer": "trace",
    "finest": "trace",
}
# Syslog severities (RFC 5424): 0 emergency, 1 alert, 2 critical, 3 error, 4 warning, 5 notice,
# 6 informational, 7 debug.
_SYSLOG = ("fatal", "fatal", "fatal", "error", "warn", "info", "info", "debug")
_PYTHON = ("debug", "info", "warn", "error", "fatal")  # 10-19, 20-29, ..., 50-59
_LEVEL_HELP = (
    f"use {', '.join(LEVELS)} (or warning, err, critical, panic, notice, ..., "
    "a syslog severity 0-7, a Python level 10-59)"
)


# --- errors ------------------------------------------------------------------------------------


class LogsError(Exception):
    """The logs were refused."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        self.message = message or (type(self).__doc__ or "").strip()
        self.retry_after = retry_after
        super().__init__(self.message)


class MalformedBody(LogsError):
    """The body could not be read."""

    code = "malformed_body"


class KeyRequired(LogsError):
    """Logs are sent with a project's API key."""

    status, code = 403, "key_required"


class BodyTooLarge(LogsError):
    """The body is too large: send smaller batches."""

    status, code = 413, "body_too_large"


class TooManyLines(LogsError):
    """Too many lines in one request."""

    status, code = 413, "too_many_lines"


class UnsupportedContentType(LogsError):
    """Send application/json or application/msgpack."""

    status, code = 415, "unsupported_content_type"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem of a batch: the line (``None``: the body) and the field (``None``: the line)."""

    index: int | None
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        where = "" if self.index is None else f"[{self.index}]"
        if self.field is not None:
            where = f"{where}.{self.field}" if where else self.field
        return f"{where}: {self.message}" if where else self.message


class InvalidLogs(LogsError):
    """Some lines are invalid; nothing was stored."""

    status, code = 422, "invalid_logs"

    def __init__(self, errors: Sequence[FieldError], total: int | None = None) -> None:
        self.errors = list(errors)[:MAX_ERRORS]
        total = len(errors) if total is None else total
        shown = "; ".join(str(error) for error in self.errors[:3])
        more = f" (and {total - 3} more)" if total > 3 else ""
        super().__init__(f"nothing was stored: {shown}{more}")


class RateLimited(LogsError):
    """Too many requests for this project's plan."""

    status, code = 429, "rate_limited"


class QuotaExceeded(LogsError):
    """This project's lines for today are used up."""

    status, code = 429, "quota_exceeded"


class QueueFull(LogsError):
    """Too many lines of this project wait to be written; nothing of this request was stored."""

    status, code = 503, "queue_full"


class StoreUnavailable(LogsError):
    """The log store failed; nothing of this request was stored."""

    status, code = 503, "store_unavailable"


class LogsClosed(LogsError):
    """Log ingestion is not running (starting or stopping)."""

    status, code = 503, "unavailable"


# --- parsing -----------------------------------------------------------------------------------


def decode_body(body: bytes, content_type: str) -> Any:
    """The body's value (JSON or MessagePack by ``content_type``); ``UnsupportedContentType``,
    ``MalformedBody`` with the parser's message."""
    kind = content_type.partition(";")[0].strip().lower()
    if kind in JSON_TYPES:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"the body is not JSON: {exc}") from None
    if kind in MSGPACK_TYPES:
        try:
            return msgpack.unpackb(body, raw=False, timestamp=3, strict_map_key=False)
        except (ValueError, TypeError) as exc:  # msgpack's errors are ValueErrors
            reason = str(exc) or type(exc).__name__
            raise MalformedBody(f"the body is not MessagePack: {reason}") from None
    raise UnsupportedContentType(
        f"send {', '.join(JSON_TYPES + MSGPACK_TYPES)}, not {kind or 'no content type'}"
    )


def normalize_level(value: Any) -> str | None:
    """One of ``LEVELS`` for a level name or number; ``None`` when it is none."""
    if isinstance(value, str):
        found = _LEVELS.get(value)
        if found is not None:
            return found
        text = value.strip().lower()
        found = _LEVELS.get(text)
        if found is not None or not text.isdigit() or len(text) > 3:
            return found
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if 0 <= value <= 7:
        return _SYSLOG[value]
    if 10 <= value <= 59:
        return _PYTHON[value // 10 - 1]
    return None


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _US


def _timestamp(value: Any) -> int:
    """Microseconds since the epoch; ``ValueError`` says what is wrong."""
    if isinstance(value, str):
        return _micros(parse_rfc3339(value))
    if isinstance(value, datetime):  # MessagePack's timestamp type
        if value.tzinfo is None:
            raise ValueError("a MessagePack timestamp without a time zone")
        return _micros(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("RFC 3339 (2026-11-29T10:00:00Z) or a number since the epoch")
    size = abs(value)
    if size < 1e11:
        return round(value * 1_000_000)  # seconds
    if size < 1e14:
        return round(value * 1000)  # milliseconds
    if size < 1e17:
        return round(value)  # microseconds
    return round(value / 1000)  # nanoseconds


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` UTF-8 bytes (on a character boundary), and whether it was."""
    if len(text) * 4 <= limit:  # no character is more than 4 bytes
        return text, False
    raw = text.encode()
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", "ignore"), True


def _attr_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    raise TypeError


@dataclass(slots=True)
class LogLines:
    """Checked lines, as columns of the ``logs`` table (times in microseconds since the epoch)."""

    ts: list[int] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    level: list[str] = field(default_factory=list)
    service: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    fingerprint: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)
    attributes: list[list[tuple[str, str]]] = field(default_factory=list)
    trace_id: list[str] = field(default_factory=list)
    span_id: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)


def new_ids() -> Callable[[], str]:
    prefix = secrets.token_hex(4)
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter):016x}"


_default_ids = new_ids()


def _text(
    item: dict[Any, Any], name: str, index: int, errors: list[FieldError], limit: int = MAX_NAME
) -> str:
    value = item.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(FieldError(index, name, "must be a string"))
        return ""
    if len(value) > limit:
        errors.append(FieldError(index, name, f"at most {limit} characters"))
    return value


def _attributes(
    value: Any, index: int, limit: int, errors: list[FieldError], cuts: list[str]
) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        errors.append(FieldError(index, "attributes", "must be an object of scalar values"))
        return []
    if len(value) > MAX_ATTRIBUTES:
        errors.append(FieldError(index, "attributes", f"at most {MAX_ATTRIBUTES} keys"))
        return []
    pairs: list[tuple[str, str]] = []
    for key, raw in value.items():
        if not isinstance(key, str) or not key or len(key) > MAX_NAME:
            errors.append(
                FieldError(index, "attributes", f"keys are strings of 1-{MAX_NAME} characters")
            )
            continue
        if raw is None:
            continue
        try:
            text = _attr_value(raw)
        except TypeError:
            kind = "object" if isinstance(raw, dict) else type(raw).__name__
            if isinstance(raw, list | tuple):
                kind = "array"
            errors.append(
                FieldError(
                    index,
                    f"attributes.{key}",
                    f"a string, number, boolean or null, not {kind}: flatten nested values "
                    f'("{key}.name": ...)',
                )
            )
            continue
        text, cut = _cut(text, limit)
        if cut:
            cuts.append(f"attributes.{key}")
        pairs.append((key, text))
    return pairs


def parse_logs(
    items: Sequence[Any],
    now: datetime,
    *,
    max_message_bytes: int,
    retention_days: int,
    new_id: Callable[[], str] = _default_ids,
) -> LogLines:
    """Check and normalize ``items`` (decoded log lines) received at ``now``; ``InvalidLogs``
    names every problem by line and field."""
    lines = LogLines()
    errors: list[FieldError] = []
    now_us = _micros(now)
    latest = now_us + _DAY_US
    oldest = now_us - retention_days * _DAY_US
    limit = max_message_bytes
    fields = _FIELDS
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(FieldError(index, None, "a log line is an object"))
            continue
        before = len(errors)
        if not fields.issuperset(item):
            for name in item:
                if name in fields:
                    continue
                if name == "project":
                    problem = "not accepted: the project is the API key's"
                else:
                    problem = f"unknown field (fields: {_FIELD_LIST}; put others in attributes)"
                errors.append(FieldError(index, str(name), problem))
        cuts: list[str] = []
        message = item.get("message")
        if not isinstance(message, str):
            problem = "required" if message is None else "must be a string"
            errors.append(FieldError(index, "message", problem))
            message = ""
        else:
            message, cut = _cut(message, limit)
            if cut:
                cuts.append("message")
        raw_level = item.get("level")
        level = "info" if raw_level is None else normalize_level(raw_level)
        if level is None:
            errors.append(
                FieldError(index, "level", f"{raw_level!r} is not a level: {_LEVEL_HELP}")
            )
            level = "info"
        stamp = now_us
        name = "timestamp"
        raw_ts = item.get("timestamp")
        if "ts" in item:
            if raw_ts is not None:
                errors.append(FieldError(index, "ts", "give timestamp or ts, not both"))
                raw_ts = None
            else:
                name, raw_ts = "ts", item["ts"]
        if raw_ts is not None:
            try:
                stamp = _timestamp(raw_ts)
            except ValueError as exc:
                errors.append(FieldError(index, name, str(exc)))
            else:
                if stamp > latest:
                    errors.append(FieldError(index, name, "more than a day in the future"))
                elif stamp < oldest:
                    errors.append(
                        FieldError(
                            index,
                            name,
                            f"older than the retention ({retention_days} days): it would be "
                            "dropped at once",
                        )
                    )
        line_id = item.get("id")
        if line_id is None:
            line_id = new_id()
        elif not isinstance(line_id, str) or not 0 < len(line_id) <= MAX_ID:
            errors.append(FieldError(index, "id", f"a string of 1-{MAX_ID} characters"))
        stack = item.get("stack")
        if stack is None:
            stack = ""
        elif not isinstance(stack, str):
            errors.append(FieldError(index, "stack", "must be a string"))
            stack = ""
        else:
            stack, cut = _cut(stack, limit)
            if cut:
                cuts.append("stack")
        service = _text(item, "service", index, errors)
        trace_id = _text(item, "trace_id", index, errors)
        span_id = _text(item, "span_id", index, errors)
        raw_attributes = item.get("attributes")
        attributes = (
            []
            if raw_attributes is None
            else _attributes(raw_attributes, index, limit, errors, cuts)
        )
        if len(errors) > before:
            continue
        if cuts:  # replaces a client's own _truncated: a Map keeps duplicate keys
            attributes = [pair for pair in attributes if pair[0] != "_truncated"]
            attributes.append(("_truncated", ",".join(cuts)))
        lines.ts.append(stamp)
        lines.id.append(line_id)
        lines.level.append(level)
        lines.service.append(service)
        lines.message.append(message)
        lines.fingerprint.append("")  # filled by the ingestor (it caches them)
        lines.stack.append(stack)
        lines.attributes.append(attributes)
        lines.trace_id.append(trace_id)
        lines.span_id.append(span_id)
    if errors:
        raise InvalidLogs(errors, len(errors))
    return lines


def body_lines(value: Any) -> list[Any]:
    """The lines of a decoded body: one object, an array, or ``{"logs": [...]}``."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        if "logs" not in value:
            return [value]
        others = [FieldError(None, str(name), "beside logs: unknown") for name in value]
        others = [error for error in others if error.field != "logs"]
        if not isinstance(value["logs"], list):
            others.insert(0, FieldError(None, "logs", "must be an array of log lines"))
        if others:
            raise InvalidLogs(others)
        lines: list[Any] = value["logs"]
        return lines
    raise InvalidLogs(
        [FieldError(None, None, 'send a log line (an object), an array, or {"logs": [...]}')]
    )

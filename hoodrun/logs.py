"""Structured logs: one JSON object per line, a correlation id, and no API key, ever.

``setup_logging(level, "json")`` installs a handler on the root logger whose lines carry the time
(UTC), level, logger, message, the request id of the request being served (``REQUEST_ID``, the
same id as the ``X-Request-Id`` response header, the telemetry row and the trace's
``hoodrun.request_id`` attribute) and, when tracing is on, the trace and span ids. Every message
and traceback goes through ``redact`` first: anything shaped like a HoodRun key becomes
``hr_…redacted``, whichever code logged it.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

__all__ = ["REQUEST_ID", "JsonFormatter", "TextFormatter", "redact", "setup_logging"]

REQUEST_ID: ContextVar[str | None] = ContextVar("hoodrun_request_id", default=None)

# hr_ + base58 (no 0, O, I, l); keys are 20 random bytes (27-28 characters), anything from 12
# characters on is treated as a key.
_KEY = re.compile(r"hr_[1-9A-HJ-NP-Za-km-z]{12,}")


def redact(text: str) -> str:
    return _KEY.sub("hr_…redacted", text) if "hr_" in text else text


def _trace_ids() -> tuple[str, str] | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover (a dependency; the guard keeps logs working)
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        ids = _trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        request_id = REQUEST_ID.get()
        return f"{text} [request {request_id}]" if request_id is not None else text


def setup_logging(level: str, fmt: Literal["json", "text"] = "json") -> None:
    """Replace the root logger's handlers with one on stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's access log would print request paths, and a path can hold a key.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

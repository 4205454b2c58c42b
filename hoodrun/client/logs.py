"""``HoodRunLogHandler``: Python's ``logging`` into a HoodRun project's logs (``POST /logs/v1``).

A record becomes one line::

    {"id": "<uuid4 hex>", "message": record.getMessage(), "level": "error",
     "timestamp": record.created, "service": service, "stack": "Traceback ...",
     "attributes": {"logger": "shop.orders", "module": "orders", "line": 42, "order": 12}}

- ``level``: ``fatal`` from 50 (CRITICAL), ``error`` from 40, ``warn`` from 30, ``info`` from 20,
  ``debug`` from 10, ``trace`` below.
- ``stack``: the exception (``exc_info``) and the stack (``stack_info``), formatted as
  ``logging`` does.
- ``attributes``: the logger's name, the module and the line, and the ``extra`` keys whose values
  are strings, numbers or booleans (others are left out; at most ``MAX_EXTRA``). ``extra``
  ``trace_id`` and ``span_id`` (strings) become the line's own fields.
- ``id`` is made here, so a batch sent again after a lost answer is stored once.

Lines are buffered and sent in batches by a thread of the handler's (``hoodrun.client._batcher``:
retries, backoff, ``Retry-After``, flush on exit); logging never waits for the network, only for
room when ``max_buffer`` lines wait (up to ``block_timeout`` seconds, then the line is dropped and
counted in ``dropped``). Records made by the sender thread itself (httpx's own logs) are left
out, or each batch would log another.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import msgpack  # type: ignore[import-untyped,unused-ignore]
import orjson

from hoodrun.client._batcher import Batcher, Counted

__all__ = ["MAX_EXTRA", "HoodRunLogHandler", "level_name"]

MAX_EXTRA = 60  # ``extra`` keys kept: the server takes 64 attributes and three are ours
MAX_BODY_BYTES = 4 * 1024 * 1024  # under the server's default logs.max_body_bytes (5 MiB)

# What every LogRecord has: the other keys of its __dict__ came from ``extra``.
_RECORD_KEYS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_OWN_FIELDS = ("trace_id", "span_id")


def level_name(levelno: int) -> str:
    """The logs API's level of a Python level number."""
    if levelno >= logging.CRITICAL:
        return "fatal"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    if levelno >= logging.DEBUG:
        return "debug"
    return "trace"


def _msgpack(lines: Sequence[dict[str, Any]]) -> tuple[bytes, str]:
    return msgpack.packb(lines, use_bin_type=True), "application/msgpack"


def _json(lines: Sequence[dict[str, Any]]) -> tuple[bytes, str]:
    return orjson.dumps(lines), "application/json"


class HoodRunLogHandler(Counted, logging.Handler):
    """Send log records to ``url``'s ``/logs/v1`` with a project's ``api_key`` (see the module
    docstring). ``sent``, ``retried`` and ``dropped`` count lines, retries and lines lost;
    ``flush(timeout)`` waits for what was logged so far; ``close()`` (also at exit) sends what
    waits for at most ``close_timeout`` seconds. ``format`` is the body's encoding
    (``msgpack``, the smaller, or ``json``); ``transport`` is httpx's (tests)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8001",
        api_key: str = "",
        service: str = "",
        *,
        level: int = logging.NOTSET,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        block_timeout: float = 5.0,
        timeout: float = 10.0,
        close_timeout: float = 10.0,
        format: Literal["msgpack", "json"] = "msgpack",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(level)
        if not api_key:
            raise ValueError("api_key: the project's API key is required")
        if format not in ("msgpack", "json"):
            raise ValueError(f"format: msgpack or json, not {format!r}")
        self.service = service
        self._batcher: Batcher[dict[str, Any]] = Batcher(
            f"{url.rstrip('/')}/logs/v1",
            name="logs",
            encode=_msgpack if format == "msgpack" else _json,
            headers={"authorization": f"Bearer {api_key}"},
            secret=api_key,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_buffer=max_buffer,
            block_timeout=block_timeout,
            timeout=timeout,
            close_timeout=close_timeout,
            max_body_bytes=MAX_BODY_BYTES,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"<HoodRunLogHandler {self._batcher.url} ({logging.getLevelName(self.level)})>"

    def line(self, record: logging.LogRecord) -> dict[str, Any]:
        """The log line of ``record``."""
        line: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "message": record.getMessage(),
            "level": level_name(record.levelno),
            "timestamp": record.created,
        }
        if self.service:
            line["service"] = self.service
        stack = self._stack(record)
        if stack:
            line["stack"] = stack
        attributes: dict[str, Any] = {
            "logger": record.name,
            "module": record.module,
            "line": record.lineno,
        }
        extra = 0
        for key, value in record.__dict__.items():
            if key in _RECORD_KEYS or extra >= MAX_EXTRA:
                continue
            if key in _OWN_FIELDS and isinstance(value, str):
                line[key] = value
            elif isinstance(value, str | int | float | bool) and key not in attributes:
                attributes[key] = value
                extra += 1
        line["attributes"] = attributes
        return line

    def _stack(self, record: logging.LogRecord) -> str:
        parts = []
        if record.exc_info and record.exc_info[1] is not None:
            if not record.exc_text:  # the text logging's formatters cache on the record
                record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
            parts.append(record.exc_text)
        elif record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        return "\n".join(parts)

    def emit(self, record: logging.LogRecord) -> None:
        batcher = self._batcher
        if batcher.is_sender():
            return  # httpx logging about our own requests
        try:
            batcher.put(self.line(record))
        except Exception:  # noqa: BLE001 (logging's way: report on stderr, never raise)
            self.handleError(record)

    def flush(self, timeout: float | None = None) -> None:
        """Send the lines logged so far now and wait until they are sent (or dropped), for at
        most ``timeout`` seconds (``None``: however long it takes); ``pending`` says what is
        left."""
        self._batcher.flush(timeout)

    def close(self) -> None:
        """Send what waits (for at most ``close_timeout`` seconds) and stop; idempotent."""
        self._batcher.close()
        super().close()

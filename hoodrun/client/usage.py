"""``UsageRecorder``: usage events (CloudEvents 1.0) into HoodRun's meters
(``POST /api/v1/events``, behind the admin token).

``record(subject, type, data)`` makes one event::

    {"specversion": "1.0", "id": "<uuid4 hex>", "source": source, "type": type,
     "subject": subject, "time": "2026-11-29T10:00:00.123456+00:00", "data": {...}}

and buffers it; a thread sends them in batches (``application/cloudevents-batch+json``) with the
log handler's machinery (``hoodrun.client._batcher``: retries with backoff, ``Retry-After``,
flush on exit). The server de-duplicates on ``(source, id)``, so a batch sent again after a lost
answer counts once: give your own ``id`` when the same usage may be recorded twice (a job run
again), and keep ``source`` stable for a producer.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from hoodrun.client._batcher import Batcher, ClientClosed, Counted

__all__ = ["UsageRecorder"]

BATCH_TYPE = "application/cloudevents-batch+json"
MAX_BODY_BYTES = 8 * 1024 * 1024  # half the server's limit (16 MiB)


def _batch(events: Sequence[bytes]) -> tuple[bytes, str]:
    return b"[" + b",".join(events) + b"]", BATCH_TYPE


class UsageRecorder(Counted):
    """Record usage events for ``url``'s meters with the admin ``token`` (see the module
    docstring). ``sent``, ``retried`` and ``dropped`` count events, retries and events lost;
    ``flush(timeout)`` waits for what was recorded so far; ``close()`` (also at exit) sends what
    waits for at most ``close_timeout`` seconds. Also a context manager that closes."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8001",
        token: str = "",
        source: str = "app",
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_buffer: int = 100_000,
        block_timeout: float = 5.0,
        timeout: float = 10.0,
        close_timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ValueError("token: the admin token is required")
        if not source:
            raise ValueError("source: a non-empty name of this producer")
        self.source = source
        self._batcher: Batcher[bytes] = Batcher(
            f"{url.rstrip('/')}/api/v1/events",
            name="usage",
            encode=_batch,
            headers={"authorization": f"Bearer {token}"},
            secret=token,
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
        return f"<UsageRecorder {self._batcher.url} source={self.source!r}>"

    def record(
        self,
        subject: str,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        time: datetime | str | None = None,
    ) -> str:
        """Buffer one event: ``type`` (what the meters select) for ``subject`` (whose usage),
        ``data`` a JSON object; ``id`` default a new one, ``time`` (timezone-aware, or RFC 3339)
        default now. Returns the id. ``ValueError``/``TypeError`` for an event the server would
        refuse; ``ClientClosed`` after ``close``."""
        if self._batcher.closed:
            raise ClientClosed
        for name, value in (("subject", subject), ("type", type)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: a non-empty string")
        if id is not None and (not isinstance(id, str) or not id):
            raise ValueError("id: a non-empty string")
        if data is not None and not isinstance(data, Mapping):
            raise TypeError("data: a mapping (a JSON object)")
        if time is None:
            stamp = datetime.now(UTC).isoformat()
        elif isinstance(time, datetime):
            if time.tzinfo is None:
                raise ValueError("time: a timezone-aware datetime")
            stamp = time.isoformat()
        else:
            stamp = time
        event_id = id or uuid.uuid4().hex
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": self.source,
            "type": type,
            "subject": subject,
            "time": stamp,
        }
        if data is not None:
            event["data"] = dict(data)
        # Encoded now: a value JSON cannot carry is the caller's error, not a lost batch later.
        encoded = orjson.dumps(event)
        if not self._batcher.put(encoded) and self._batcher.closed:
            raise ClientClosed
        return event_id

    def flush(self, timeout: float | None = None) -> bool:
        """Send the events recorded so far now and wait until they are sent (or dropped), for
        at most ``timeout`` seconds (``None``: however long it takes); whether they all went."""
        return self._batcher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send what waits (for at most ``timeout``, default ``close_timeout``, seconds) and
        stop; idempotent."""
        self._batcher.close(timeout)

    def __enter__(self) -> UsageRecorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

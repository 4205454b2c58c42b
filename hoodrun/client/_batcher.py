"""The machinery the log handler and the usage recorder share: a bounded buffer in front of one
sender thread that posts batches, retries them and flushes on exit.

- ``put`` never waits while there is room. With ``max_buffer`` items waiting it waits up to
  ``block_timeout`` for room, then drops the item (counted in ``dropped``, reported once on
  stderr); while the buffer stays full, further puts drop at once instead of each waiting again.
- The sender posts a batch when ``batch_size`` items wait, or ``flush_interval`` seconds after
  the oldest one arrived, or at once on ``flush``/``close``. A body over ``max_body_bytes`` (or a
  413 from the server) is split in halves.
- A batch is retried, the same bytes (so the items keep their ids and the server stores them
  once), until it is answered 2xx: after ``Retry-After`` on 429 and 503 (at most
  ``MAX_RETRY_AFTER``), with exponential backoff and jitter (up to ``max_backoff``) on network
  errors, 408 and 5xx. Another 4xx (an invalid batch, a wrong key) would be refused again: the
  batch is dropped and the server's message reported once on stderr.
- ``close`` stops taking items, sends what waits until its deadline, drops the rest (counted)
  and stops the thread; it runs at interpreter exit (``atexit``). A forked child starts afresh,
  without its parent's items.

Nothing here logs through ``logging`` (the handler may be the root logger's): reports go to
stderr, and the token never appears in them.
"""

from __future__ import annotations

import atexit
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from hoodrun import __version__

__all__ = ["MAX_RETRY_AFTER", "Batcher", "ClientClosed", "ClientError", "Counted"]

T = TypeVar("T")

MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After (a daily quota) is tried again then
_BASE_BACKOFF = 0.5
_MAX_REPORT = 500  # characters of a server's message in a report
USER_AGENT = f"hoodrun-python/{__version__}"

Encoder = Callable[[Sequence[T]], tuple[bytes, str]]


class ClientError(Exception):
    """The HoodRun client failed."""


class ClientClosed(ClientError):
    """The client is closed: nothing more is sent."""


# --- what an attempt came to ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sent:
    pass


@dataclass(frozen=True, slots=True)
class _Retry:
    reason: str
    after: float | None  # the server's Retry-After; None: back off


@dataclass(frozen=True, slots=True)
class _Refused:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class _TooLarge:
    reason: str


_Outcome = _Sent | _Retry | _Refused | _TooLarge


def _retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (the seconds form; a date is backed off instead)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), MAX_RETRY_AFTER)


def _server_message(response: httpx.Response) -> str:
    """The message of an error answer: the logs API's ``error.message``, a problem's
    ``detail``, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return response.text[:_MAX_REPORT] or response.reason_phrase


class Batcher(Generic[T]):
    """Items buffered, and posted to ``url`` in batches by a thread of its own (see the module
    docstring). ``encode`` turns a batch into a body and its content type; ``secret`` (the token
    in ``headers``) is blanked in whatever is reported."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        encode: Encoder[T],
        headers: Mapping[str, str],
        secret: str = "",
        batch_size: int,
        flush_interval: float,
        max_buffer: int,
        block_timeout: float,
        timeout: float,
        close_timeout: float,
        max_body_bytes: int,
        max_backoff: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if batch_size < 1 or max_buffer < 1:
            raise ValueError("batch_size and max_buffer are at least 1")
        if flush_interval <= 0 or timeout <= 0:
            raise ValueError("flush_interval and timeout are positive")
        self.url = url
        self.name = name
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.block_timeout = block_timeout
        self.timeout = timeout
        self.close_timeout = close_timeout
        self.max_body_bytes = max_body_bytes
        self.max_backoff = max_backoff
        self._encode = encode
        self._headers = {"user-agent": USER_AGENT, **headers}
        self._secret = secret
        self._transport = transport
        self.sent = 0
        self.retried = 0
        self.dropped = 0
        self._reported: set[str] = set()
        self._reset()
        atexit.register(self.close)

    def _reset(self) -> None:
        """Fresh state: at start, and in a forked child (whose parent sends its own items)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # the sender: items, flush, close
        self._room = threading.Condition(self._lock)  # puts waiting for room
        self._progress = threading.Condition(self._lock)  # flushes waiting for sends
        self._buffer: deque[T] = deque()
        self._oldest = 0.0  # monotonic arrival of the buffer's first item
        self._queued = 0  # items accepted, ever
        self._taken = 0  # items taken by the sender, ever
        self._finished = 0  # items sent or dropped after they were accepted, ever
        self._urgent = 0  # send without waiting until ``_taken`` reaches it (flush)
        self._full = False  # a put timed out and the buffer has not had room since
        self._closed = False
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # -- what callers use

    @property
    def pending(self) -> int:
        """Items accepted and not yet sent (or dropped)."""
        return self._queued - self._finished

    @property
    def closed(self) -> bool:
        return self._closed

    def is_sender(self) -> bool:
        """Whether the calling thread is the sender (whose own logs must not come back)."""
        thread = self._thread
        return thread is not None and thread.ident == threading.get_ident()

    def put(self, item: T) -> bool:
        """Buffer ``item``; ``False`` when it was dropped (closed, or no room in time)."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            if self._closed:
                self.dropped += 1
                return False
            buffer = self._buffer
            if len(buffer) >= self.max_buffer:
                waits = not self._full and not self.is_sender() and self.block_timeout > 0
                if not (
                    waits
                    and self._room.wait_for(
                        lambda: len(buffer) < self.max_buffer or self._closed, self.block_timeout
                    )
                    and not self._closed
                ):
                    self._full = True
                    self.dropped += 1
                    self._report(
                        "full",
                        f"the buffer is full ({self.max_buffer} items waiting): items are "
                        "dropped until the server takes them again",
                    )
                    return False
            buffer.append(item)
            self._queued += 1
            size = len(buffer)
            if size == 1:
                self._oldest = time.monotonic()
                self._wakeup.notify()
            elif size == self.batch_size:
                self._wakeup.notify()
            if self._thread is None:
                self._start()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Send what was put so far now, and wait until it is sent or dropped (at most
        ``timeout`` seconds; ``None``: however long it takes); whether it all went."""
        with self._lock:
            target = self._queued
            if self._finished >= target or self._closed:  # closed: close() did the waiting
                return self._finished >= target
            self._urgent = max(self._urgent, target)
            if self._thread is None and not self._closed:
                self._start()
            self._wakeup.notify()
            return self._progress.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking items, send what waits (for at most ``timeout``, default
        ``close_timeout``, seconds), drop the rest and stop the sender. Idempotent."""
        atexit.unregister(self.close)
        timeout = self.close_timeout if timeout is None else timeout
        with self._lock:
            if self._closed or self._pid != os.getpid():
                return
            self._closed = True
            self._deadline = time.monotonic() + timeout
            self._wakeup.notify_all()
            self._room.notify_all()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            self._drain()  # never started: nothing to wait for (or nothing left to send)
            return
        thread.join(timeout + 1.0)
        if thread.is_alive():
            self._report("stuck", f"still sending {self.pending} items at close: left behind")

    # -- the sender

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"hoodrun-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._client = httpx.Client(
            headers=self._headers,
            timeout=self.timeout,
            transport=self._transport,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    self._deliver(batch)
                except Exception as exc:  # noqa: BLE001 (a bug must not stop the sender)
                    self._drop(len(batch))
                    self._report("bug", f"{len(batch)} items dropped: {type(exc).__name__}: {exc}")
                with self._lock:
                    self._finished += len(batch)
                    self._progress.notify_all()
        finally:
            self._client.close()
            self._drain()

    def _next_batch(self) -> list[T] | None:
        """The next batch to send, once it is due; ``None`` when closed and nothing is left (or
        the close's deadline has passed)."""
        with self._lock:
            buffer = self._buffer
            while True:
                size = len(buffer)
                now = time.monotonic()
                if self._closed and (not size or self._past_deadline(now)):
                    return None
                due = self._oldest + self.flush_interval
                if size >= self.batch_size or (
                    size and (self._closed or self._taken < self._urgent or now >= due)
                ):
                    break
                self._wakeup.wait(due - now if size else None)
            count = min(size, self.batch_size)
            batch = [buffer.popleft() for _ in range(count)]
            self._taken += count
            self._oldest = now
            self._full = False
            self._room.notify_all()
            return batch

    def _drain(self) -> None:
        """Drop what is left after the sender stopped (counted and reported)."""
        with self._lock:
            left = len(self._buffer)
            self._buffer.clear()
            self.dropped += left
            self._finished += left
            self._progress.notify_all()
        if left:
            self._report("closed", f"{left} items were not sent before the close's deadline")

    def _drop(self, count: int) -> None:
        with self._lock:  # puts count their drops too
            self.dropped += count

    def _past_deadline(self, now: float) -> bool:
        return self._deadline is not None and now >= self._deadline

    def _deliver(self, batch: list[T]) -> None:
        """Send ``batch`` until it is taken, refused, or the close's deadline comes."""
        body, content_type = self._encode(batch)
        if len(body) > self.max_body_bytes and len(batch) > 1:
            half = len(batch) // 2
            self._deliver(batch[:half])
            self._deliver(batch[half:])
            return
        attempt = 0
        while True:
            outcome = self._post(body, content_type)
            if isinstance(outcome, _Sent):
                self.sent += len(batch)
                return
            if isinstance(outcome, _TooLarge) and len(batch) > 1:
                half = len(batch) // 2
                self._deliver(batch[:half])
                self._deliver(batch[half:])
                return
            if isinstance(outcome, _Refused | _TooLarge):
                self._drop(len(batch))
                status = outcome.status if isinstance(outcome, _Refused) else 413
                self._report(
                    f"refused-{status}",
                    f"the server refused {len(batch)} items ({status}): {outcome.reason}; they "
                    "are dropped (further refusals with this status are not reported)",
                )
                return
            if outcome.after is not None:
                delay = outcome.after * (1 + 0.1 * random.random())  # noqa: S311 (jitter)
            else:
                ceiling = min(self.max_backoff, _BASE_BACKOFF * 2**attempt)
                delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (jitter)
            attempt += 1
            if not self._pause(delay):
                self._drop(len(batch))
                self._report(
                    "gave-up",
                    f"{len(batch)} items dropped at the close's deadline: {outcome.reason}",
                )
                return
            self.retried += 1

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds; ``False`` (at once) if that ends after the close's deadline."""
        end = time.monotonic() + delay
        with self._lock:
            while True:
                if self._deadline is not None and end > self._deadline:
                    return False
                now = time.monotonic()
                if now >= end:
                    return True
                self._wakeup.wait(end - now)  # a close wakes it: its deadline may come first

    def _post(self, body: bytes, content_type: str) -> _Outcome:
        assert self._client is not None  # noqa: S101 (set by _run)
        timeout = self.timeout
        if self._deadline is not None:
            timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
        try:
            response = self._client.post(
                self.url, content=body, headers={"content-type": content_type}, timeout=timeout
            )
        except httpx.TransportError as exc:
            return _Retry(f"{type(exc).__name__}: {exc}", None)
        status = response.status_code
        if status < 300:
            return _Sent()
        reason = f"{status} {_server_message(response)}"
        if status in (429, 503):
            return _Retry(reason, _retry_after(response.headers.get("retry-after")))
        if status == 408 or status >= 500:
            return _Retry(reason, None)
        if status == 413:
            return _TooLarge(reason)
        return _Refused(status, _server_message(response))

    def _report(self, kind: str, text: str) -> None:
        """Say ``text`` on stderr, once per ``kind``."""
        if kind in self._reported:
            return
        self._reported.add(kind)
        if self._secret:
            text = text.replace(self._secret, "***")
        try:
            sys.stderr.write(f"hoodrun.client ({self.name}): {text[: _MAX_REPORT * 2]}\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # no stderr (closed, or none at all)
            pass


class Counted:
    """What a sender built on a ``Batcher`` (``self._batcher``) tells of its items."""

    _batcher: Batcher[Any]

    @property
    def sent(self) -> int:
        """Items the server took."""
        return self._batcher.sent

    @property
    def retried(self) -> int:
        """Batches sent again (after a 429, a 503, a 5xx or a network error)."""
        return self._batcher.retried

    @property
    def dropped(self) -> int:
        """Items lost: no room in time, refused by the server, or unsent at the close."""
        return self._batcher.dropped

    @property
    def pending(self) -> int:
        """Items given and not yet sent (or dropped)."""
        return self._batcher.pending

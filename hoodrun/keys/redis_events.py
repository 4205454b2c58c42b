"""Key change events over Redis pub/sub, so a change made anywhere purges every gateway's cache.

Channel ``{prefix}:keys:changed``; each message is one key hash. ``publish`` works at once (the
CLI only publishes); listeners are called by a background task that ``start()`` launches and
``aclose()`` stops. A process receives its own publications too, back from Redis.

While the subscription is broken (Redis restarting), messages are lost; the task resubscribes
with backoff, and the gateway's ``changed_since`` poll and cache TTL cover the gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from types import TracebackType

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hoodrun.keys.events import Listener

__all__ = ["RedisKeyEvents"]

logger = logging.getLogger(__name__)

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
_MAX_BACKOFF = 30.0


class RedisKeyEvents:
    """``KeyEvents`` shared by every process on the same Redis and ``prefix``."""

    def __init__(self, redis_url: str, prefix: str = "hoodrun", *, backoff: float = 0.5) -> None:
        self.channel = f"{prefix}:keys:changed"
        # Named, so `CLIENT LIST` shows whose connections these are.
        self._redis = redis.Redis.from_url(
            redis_url, socket_connect_timeout=5.0, client_name=f"{prefix}:key-events"
        )
        self._backoff = backoff
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(key_hash)`` for each hash published by any process (after ``start``)."""
        self._listeners.append(listener)

    async def publish(self, key_hashes: Iterable[str]) -> None:
        hashes = list(key_hashes)
        if not hashes:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_hash in hashes:
                pipe.publish(self.channel, key_hash)
            await pipe.execute()

    async def start(self) -> None:
        """Subscribe (raising if Redis cannot be reached) and start delivering to listeners."""
        if self._closed:
            raise RuntimeError("RedisKeyEvents is closed")
        if self._task is not None:
            return
        pubsub = await self._subscribe()
        self._task = asyncio.get_running_loop().create_task(
            self._deliver(pubsub), name=f"key events {self.channel}"
        )

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._redis.aclose()

    async def __aenter__(self) -> RedisKeyEvents:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        return pubsub

    async def _deliver(self, pubsub: PubSub) -> None:
        delay = self._backoff
        while True:
            try:
                async for message in pubsub.listen():
                    delay = self._backoff
                    if message["type"] == "message":
                        self._dispatch(message["data"])
            except _LOST:
                logger.warning("key events: lost Redis, resubscribing in %.1f s", delay)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            # Retry until Redis is back; aclose() cancels this task, sleep included.
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                try:
                    pubsub = await self._subscribe()
                    break
                except _LOST:
                    logger.warning("key events: Redis still unreachable")

    def _dispatch(self, data: bytes | str) -> None:
        key_hash = data.decode() if isinstance(data, bytes) else data
        for listener in self._listeners:
            try:
                listener(key_hash)
            except Exception:
                # One faulty listener must not stop the others, nor the subscription.
                logger.exception("key events: listener failed")

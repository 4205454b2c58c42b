"""Key change events over the real Redis: every process on a prefix hears every other."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.exceptions

from hoodrun.keys.events import KeyEvents
from hoodrun.keys.redis_events import RedisKeyEvents

REDIS_URL = os.environ.get("HOODRUN_TEST_REDIS", "redis://127.0.0.1:6379/0")

Factory = Callable[[str], RedisKeyEvents]


@pytest.fixture
async def make_events() -> AsyncIterator[Factory]:
    made: list[RedisKeyEvents] = []

    def make(prefix: str) -> RedisKeyEvents:
        events = RedisKeyEvents(REDIS_URL, prefix, backoff=0.01)
        made.append(events)
        return events

    yield make
    for events in made:
        await events.aclose()


def _inbox(events: KeyEvents) -> asyncio.Queue[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    events.subscribe(queue.put_nowait)
    return queue


async def _next(queue: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(queue.get(), timeout=5)


async def test_instances_on_one_prefix_hear_each_other(
    make_events: Factory, redis_prefix: str
) -> None:
    a, b, elsewhere = (
        make_events(redis_prefix),
        make_events(redis_prefix),
        make_events(f"{redis_prefix}-other"),
    )
    assert a.channel == f"{redis_prefix}:keys:changed"
    inbox_a, inbox_b, inbox_elsewhere = _inbox(a), _inbox(b), _inbox(elsewhere)
    for events in (a, b, elsewhere):
        await events.start()

    await a.publish(["hash-1", "hash-2"])
    assert [await _next(inbox_b), await _next(inbox_b)] == ["hash-1", "hash-2"]
    assert [await _next(inbox_a), await _next(inbox_a)] == ["hash-1", "hash-2"]  # own, via Redis

    await b.publish(["hash-3"])
    assert await _next(inbox_a) == "hash-3"
    assert await _next(inbox_b) == "hash-3"

    # A publisher that never started (the CLI) still reaches subscribers.
    cli = make_events(redis_prefix)
    await cli.publish(["hash-4"])
    assert await _next(inbox_a) == "hash-4"

    # Another prefix heard nothing of this; its own message is the first it gets.
    await elsewhere.publish(["mine"])
    assert await _next(inbox_elsewhere) == "mine"


async def test_a_failing_listener_does_not_stop_the_others(
    make_events: Factory, redis_prefix: str
) -> None:
    events = make_events(redis_prefix)

    def broken(_: str) -> None:
        raise RuntimeError("listener bug")

    events.subscribe(broken)
    inbox = _inbox(events)
    await events.start()
    await events.publish(["h1"])
    await events.publish(["h2"])
    assert [await _next(inbox), await _next(inbox)] == ["h1", "h2"]


async def test_start_fails_loudly_without_redis() -> None:
    events = RedisKeyEvents("redis://127.0.0.1:1/0", "nowhere")
    with pytest.raises(redis.exceptions.ConnectionError):
        await events.start()
    await events.aclose()


async def test_resubscribes_after_losing_redis(
    make_events: Factory, redis_prefix: str, redis_client: Any
) -> None:
    listener, publisher = make_events(redis_prefix), make_events(redis_prefix)
    inbox = _inbox(listener)
    await listener.start()
    # Kill only this test's subscriber connection (other test sessions share the server).
    killed = 0
    for client in await redis_client.client_list():
        if client["name"] == f"{redis_prefix}:key-events" and client["cmd"] == "subscribe":
            killed += await redis_client.client_kill_filter(_id=client["id"])
    assert killed == 1
    # Messages sent while it is away are lost (the gateway's poll covers those); keep sending
    # until the resubscribed listener hears one.
    for attempt in range(100):
        await publisher.publish([f"after-{attempt}"])
        try:
            heard = await asyncio.wait_for(inbox.get(), timeout=0.1)
        except TimeoutError:
            continue
        assert heard.startswith("after-")
        break
    else:
        pytest.fail("the listener never resubscribed")

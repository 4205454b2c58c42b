"""Key change notifications: purge verified keys from every gateway's cache.

A change (revoke, rotate, disable, enable, expiry change) is announced by the key's hash. The
in-process bus reaches this process at once; the Redis bus reaches every process subscribed to the
same ``redis_prefix`` (pub/sub), typically within milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["KeyEvents", "LocalKeyEvents"]

Listener = Callable[[str], None]


class KeyEvents(Protocol):
    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(key_hash)`` for every change, from this process or (Redis) others."""

    async def publish(self, key_hashes: Iterable[str]) -> None:
        """Announce that these keys changed."""


class LocalKeyEvents:
    """In-process bus: listeners in this process only."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def publish(self, key_hashes: Iterable[str]) -> None:
        for key_hash in key_hashes:
            for listener in self._listeners:
                listener(key_hash)

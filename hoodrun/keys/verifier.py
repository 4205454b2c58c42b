"""Key verification on the hot path: an in-process cache in front of the store.

- A hit answers from memory (fresh for ``ttl`` seconds, 30-60 s).
- A miss asks the store once, however many requests wait for the same key (coalesced).
- Unknown keys are remembered as unknown for ``negative_ttl`` seconds and always denied.
- Changes (revoke, rotate, disable, ...) purge the entry at once through the key events bus.
- If the store is down, a key already verified keeps working from its stale entry until
  ``degrade_ttl`` seconds after it was last confirmed; a key never seen is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hoodrun.keys.record import KeyRecord
from hoodrun.keys.secret import hash_key, looks_like_key

__all__ = ["KeyDenied", "KeyStoreDown", "KeyVerifier"]

Lookup = Callable[[str], Awaitable[KeyRecord | None]]
_DEGRADED_RETRY = 5.0  # seconds between store retries for a key served stale


class KeyDenied(Exception):
    """The key is not valid now; ``reason`` is a stable code (key_invalid, key_revoked, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyStoreDown(Exception):
    """The key store cannot be reached and this key is not in the cache."""


@dataclass(slots=True)
class _Entry:
    record: KeyRecord | None
    fresh_until: float  # monotonic
    stale_until: float  # monotonic; after this the entry is useless even in degrade mode
    revoked_at: float | None  # epoch seconds
    expires_at: float | None  # epoch seconds


class KeyVerifier:
    def __init__(
        self,
        lookup: Lookup,
        *,
        ttl: float = 30.0,
        negative_ttl: float = 5.0,
        degrade_ttl: float = 600.0,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._degrade_ttl = degrade_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._wall = wall
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._hashes: dict[str, str] = {}
        # Called with the key hash on every purge (the gateway re-checks that key's sockets).
        self.on_purge: list[Callable[[str], None]] = []
        self._unknown: dict[str, _Entry] = {}
        self.degraded = False  # the last lookup failed: serving from stale entries
        self.hits = 0
        self.misses = 0

    def _hash(self, key: str) -> str:
        """The key's hash, remembered for keys of the right shape (hashing is the larger part
        of a cache hit). Junk is refused here, before any lookup."""
        key_hash = self._hashes.get(key)
        if key_hash is None:
            if not looks_like_key(key):
                raise KeyDenied("key_invalid")
            if len(self._hashes) >= self._max_entries:
                self._hashes.clear()
            key_hash = self._hashes[key] = hash_key(key)
        return key_hash

    def hash_of(self, key: str) -> str:
        """The stored form of ``key`` (memoized)."""
        return self._hash(key)

    def purge(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)
        self._unknown.pop(key_hash, None)
        for listener in self.on_purge:
            listener(key_hash)

    def clear(self) -> None:
        self._entries.clear()
        self._unknown.clear()
        self._hashes.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, key: str) -> KeyRecord | None:
        """Answer from a fresh cache entry, or ``None`` when the store must be asked.

        Raises ``KeyDenied`` for keys known to be unusable. Synchronous, for the hot path.
        """
        key_hash = self._hash(key)
        entry = self._entries.get(key_hash) or self._unknown.get(key_hash)
        if entry is None or entry.fresh_until <= self._clock():
            return None
        self.hits += 1
        return self._usable(entry)

    async def verify(self, key: str) -> KeyRecord:
        """The key's record if it may be used now; else ``KeyDenied`` or ``KeyStoreDown``."""
        record = self.check(key)
        if record is not None:
            return record
        key_hash = self._hash(key)
        self.misses += 1
        pending = self._inflight.get(key_hash)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[key_hash] = pending
            try:
                pending.set_result(await self._refresh(key_hash))
            except BaseException as exc:
                pending.set_exception(exc)
                # Retrieve it here so a lone caller does not leave it "never retrieved".
                pending.exception()
                raise
            finally:
                del self._inflight[key_hash]
        entry = await asyncio.shield(pending)
        return self._usable(entry)

    def _usable(self, entry: _Entry) -> KeyRecord:
        record = entry.record
        if record is None:
            raise KeyDenied("key_invalid")
        now = self._wall()
        if entry.revoked_at is not None and entry.revoked_at <= now:
            raise KeyDenied("key_revoked")
        if record.disabled:
            raise KeyDenied("key_disabled")
        if entry.expires_at is not None and entry.expires_at <= now:
            raise KeyDenied("key_expired")
        return record

    async def _refresh(self, key_hash: str) -> _Entry:
        now = self._clock()
        try:
            record = await self._lookup(key_hash)
        except Exception as exc:
            self.degraded = True
            stale = self._entries.get(key_hash)
            if stale is not None and stale.record is not None and stale.stale_until > now:
                # Serve it stale, and do not ask the broken store again for a while: every
                # request would otherwise wait for the store's timeout.
                stale.fresh_until = min(now + min(self._ttl, _DEGRADED_RETRY), stale.stale_until)
                return stale
            raise KeyStoreDown from exc
        self.degraded = False
        if record is None:
            entry = _Entry(None, now + self._negative_ttl, now + self._negative_ttl, None, None)
            # Unknown keys live in their own bounded table: a flood of made-up keys must not
            # push verified keys (and their degrade-mode safety net) out of the cache.
            if len(self._unknown) >= self._max_entries:
                self._unknown.clear()
            self._unknown[key_hash] = entry
            self._entries.pop(key_hash, None)
            return entry
        entry = _Entry(
            record,
            now + self._ttl,
            now + self._ttl + self._degrade_ttl,
            record.revoked_at.timestamp() if record.revoked_at else None,
            record.expires_at.timestamp() if record.expires_at else None,
        )
        if len(self._entries) >= self._max_entries:
            # Drop the oldest tenth: dicts keep insertion order, and refreshes re-insert.
            for old in list(self._entries)[: self._max_entries // 10 or 1]:
                del self._entries[old]
        self._unknown.pop(key_hash, None)
        self._entries.pop(key_hash, None)
        self._entries[key_hash] = entry
        return entry

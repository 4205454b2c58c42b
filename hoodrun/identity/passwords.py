"""Passwords: the policy a new one must meet, and argon2id hashes of them.

Hashing and verifying cost tens of milliseconds of CPU by design, so both run in a worker thread
(the event loop keeps serving). A login with an unknown email verifies against a dummy hash, so
it takes as long as one with a wrong password.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hoodrun.identity.config import AuthConfig
from hoodrun.identity.errors import WeakPassword

__all__ = ["MAX_PASSWORD_LENGTH", "Passwords"]

# Long enough for any passphrase or manager-made password; bounded so a megabyte "password"
# is refused before it is hashed.
MAX_PASSWORD_LENGTH = 256


class Passwords:
    """argon2id with the cost parameters of ``auth:``; a hash made with other parameters is
    reported by ``verify`` as needing a rehash."""

    def __init__(self, config: AuthConfig) -> None:
        self._min_length = config.password_min_length
        self._hasher = PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        # Made lazily, with the same parameters: verifying against it costs what a real one does.
        self._dummy: str | None = None

    def check(self, password: str, *, email: str) -> None:
        """Raise ``WeakPassword`` (400) with what to change, unless ``password`` is acceptable."""
        if len(password) < self._min_length:
            raise WeakPassword(f"password: use at least {self._min_length} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise WeakPassword(f"password: use at most {MAX_PASSWORD_LENGTH} characters")
        if password.strip().casefold() == email.strip().casefold():
            raise WeakPassword("password: must not be your email address")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> tuple[bool, bool]:
        """``(matches, needs_rehash)``. ``stored`` None (no password, or no such user) is
        verified against a dummy hash and never matches."""
        if stored is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            await asyncio.to_thread(self._verify, self._dummy, password)
            return False, False
        if not await asyncio.to_thread(self._verify, stored, password):
            return False, False
        return True, self._hasher.check_needs_rehash(stored)

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

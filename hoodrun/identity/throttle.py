"""The login throttle: failed logins counted per account and per client address.

Over ``auth.max_failures`` failures of one email address within ``auth.failure_window``, or four
times that from one address (one client guessing across many accounts), further logins are
refused with 429 until the oldest counted failures leave the window, whatever the password.
A successful login clears its account's failures (not its address's).

A login is counted *before* its password is checked (``attempt``: the count and the new rows in
one transaction, serialized per account by a PostgreSQL advisory lock, by SQLite's single
writer), and the count is taken back when the password was right: concurrent guesses cannot all
pass the check before any of them is recorded.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.identity.config import AuthConfig
from hoodrun.identity.errors import Throttled
from hoodrun.store.tables import login_failures

__all__ = ["IP_FACTOR", "LoginThrottle"]

IP_FACTOR = 4


def _subjects(email: str, ip: str | None) -> list[tuple[str, int]]:
    return [(f"email:{email}", 1)] + ([(f"ip:{ip}", IP_FACTOR)] if ip else [])


class LoginThrottle:
    def __init__(self, config: AuthConfig) -> None:
        self._limit = config.max_failures
        self._window = timedelta(seconds=config.failure_window)

    async def check(self, conn: AsyncConnection, email: str, ip: str | None, now: datetime) -> None:
        """Raise ``Throttled`` when the email or the address has used up its failures."""
        waits = []
        for subject, factor in _subjects(email, ip):
            limit = self._limit * factor
            stmt = (
                select(login_failures.c.at)
                .where(login_failures.c.subject == subject)
                .where(login_failures.c.at > now - self._window)
                .order_by(login_failures.c.at)
            )
            times = list((await conn.execute(stmt)).scalars())
            if len(times) >= limit:
                # Allowed again once enough of the oldest failures have left the window.
                freed = times[len(times) - limit] + self._window
                waits.append(max(1, math.ceil((freed - now).total_seconds())))
        if waits:
            raise Throttled(max(waits))

    async def attempt(
        self, conn: AsyncConnection, email: str, ip: str | None, now: datetime, *, postgres: bool
    ) -> list[int]:
        """Count a login about to be checked as a failure, unless the account or the address
        is over its limit (``Throttled``, nothing counted). Returns the rows to take back
        (``forgive``) if the password turns out right."""
        if postgres:  # one account's attempts one at a time, whatever the address
            await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"login:{email}"))))
        await self.check(conn, email, ip, now)
        ids = []
        for subject, _ in _subjects(email, ip):
            inserted = await conn.execute(
                insert(login_failures)
                .values(subject=subject, at=now)
                .returning(login_failures.c.id)
            )
            ids.append(int(inserted.scalar_one()))
        await conn.execute(delete(login_failures).where(login_failures.c.at <= now - self._window))
        return ids

    async def forgive(self, conn: AsyncConnection, email: str, ids: list[int]) -> None:
        """Take back an attempt that was right: the account's failures are cleared, the
        address's attempt no longer counts."""
        await self.clear(conn, email)
        if ids:
            await conn.execute(delete(login_failures).where(login_failures.c.id.in_(ids)))

    async def fail(self, conn: AsyncConnection, email: str, ip: str | None, now: datetime) -> None:
        rows = [{"subject": subject, "at": now} for subject, _ in _subjects(email, ip)]
        await conn.execute(insert(login_failures), rows)
        # Failures that left the window count for nothing: keep the table small.
        await conn.execute(delete(login_failures).where(login_failures.c.at <= now - self._window))

    async def clear(self, conn: AsyncConnection, email: str) -> None:
        await conn.execute(
            delete(login_failures).where(login_failures.c.subject == f"email:{email}")
        )

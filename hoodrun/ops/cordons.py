"""Cordons: upstreams an operator took out of rotation, shared by every gateway.

A cordon is a row of ``upstream_cordons`` (chain, upstream, reason, actor, at). Each gateway
reads the table every ``gateway.cordon_poll`` seconds and hands each chain's pool the names cordoned
(``ChainPool.set_cordoned``): a cordoned upstream gets no traffic and is still health-checked.
When every upstream of a chain is cordoned, the chain answers as when none is healthy (the
gateway's 503 ``no_healthy_upstream``): a cordon is never overridden.

Every change is one transaction with its audit row (``upstream.cordon`` / ``upstream.uncordon``,
with the cordon before and after). Cordoning names a chain and an upstream of the config;
uncordoning also clears a cordon whose upstream has left the config since.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import delete, select

from hoodrun.store import write_audit
from hoodrun.store.tables import upstream_cordons

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from hoodrun.config import Config
    from hoodrun.store import Store

__all__ = ["CORDON_POLL", "Cordon", "CordonBook", "CordonError", "UnknownUpstream"]

CORDON_POLL: Final = 2.0
"""Seconds between a gateway's reads of the cordons (``gateway.cordon_poll`` once configured)."""
MAX_REASON: Final = 500


class CordonError(Exception):
    """The cordon cannot be changed as asked."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)

    @property
    def message(self) -> str:
        return str(self)


class UnknownUpstream(CordonError):
    """No such chain or upstream in the config."""

    status = 404
    code = "not_found"


@dataclass(frozen=True, slots=True)
class Cordon:
    chain: str
    upstream: str
    reason: str
    actor: str
    at: datetime

    def fields(self) -> dict[str, Any]:
        """The cordon as the audit log's before/after."""
        return asdict(self)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class CordonBook:
    """The cordons table. ``config`` (a getter: it follows reloads) checks the names given to
    ``cordon``; without it any name is taken (the gateway only reads)."""

    def __init__(
        self,
        store: Store,
        config: Callable[[], Config] | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._config = config
        self._clock = clock

    def _check(self, chain: str, upstream: str) -> None:
        if self._config is None:
            return
        config = self._config()
        found = config.chain(chain)
        if found is None:
            known = ", ".join(c.name for c in config.chains) or "none"
            raise UnknownUpstream(f"no chain {chain!r} in the config (chains: {known})")
        names = [up.name for up in found.upstreams]
        if upstream not in names:
            raise UnknownUpstream(
                f"chain {chain!r} has no upstream {upstream!r} (upstreams: {', '.join(names)})"
            )

    async def cordon(self, chain: str, upstream: str, reason: str, actor: str) -> Cordon:
        """Take ``upstream`` of ``chain`` out of rotation (or change the reason of its cordon).
        Cordoning an upstream again with the same reason changes nothing."""
        reason = reason.strip()
        if not reason:
            raise CordonError("say why the upstream is cordoned (reason)")
        if len(reason) > MAX_REASON:
            raise CordonError(f"the reason is longer than {MAX_REASON} characters")
        self._check(chain, upstream)
        async with self._store.transaction() as conn:
            before = await self._get(conn, chain, upstream)
            if before is not None and before.reason == reason:
                return before
            after = Cordon(chain, upstream, reason, actor[:128], self._clock())
            values = after.fields()
            stmt = self._store.insert(upstream_cordons).values(values)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[upstream_cordons.c.chain, upstream_cordons.c.upstream],
                    set_={"reason": reason, "actor": after.actor, "at": after.at},
                )
            )
            await self._audit(conn, "upstream.cordon", after, before, after)
        return after

    async def uncordon(self, chain: str, upstream: str, actor: str) -> Cordon | None:
        """Put ``upstream`` back in rotation; the cordon removed (``None``: there was none)."""
        async with self._store.transaction() as conn:
            before = await self._get(conn, chain, upstream)
            if before is None:
                self._check(chain, upstream)  # 404 for a name that is nowhere
                return None
            await conn.execute(
                delete(upstream_cordons).where(
                    upstream_cordons.c.chain == chain, upstream_cordons.c.upstream == upstream
                )
            )
            audited = Cordon(chain, upstream, before.reason, actor[:128], self._clock())
            await self._audit(conn, "upstream.uncordon", audited, before, None)
        return before

    async def get(self, chain: str, upstream: str) -> Cordon | None:
        async with self._store.connect() as conn:
            return await self._get(conn, chain, upstream)

    async def by_chain(self) -> dict[str, frozenset[str]]:
        """The cordoned upstreams' names per chain (what a gateway applies)."""
        found: dict[str, set[str]] = {}
        for cordon in await self.list():
            found.setdefault(cordon.chain, set()).add(cordon.upstream)
        return {chain: frozenset(names) for chain, names in found.items()}

    async def _get(self, conn: AsyncConnection, chain: str, upstream: str) -> Cordon | None:
        row = (
            (
                await conn.execute(
                    select(upstream_cordons).where(
                        upstream_cordons.c.chain == chain,
                        upstream_cordons.c.upstream == upstream,
                    )
                )
            )
            .mappings()
            .first()
        )
        return Cordon(**row) if row is not None else None

    async def _audit(
        self,
        conn: AsyncConnection,
        action: str,
        cordon: Cordon,
        before: Cordon | None,
        after: Cordon | None,
    ) -> None:
        await write_audit(
            conn,
            at=cordon.at,
            actor=cordon.actor,
            action=action,
            target_type="upstream",
            target_id=f"{cordon.chain}/{cordon.upstream}"[:64],
            details={"chain": cordon.chain, "upstream": cordon.upstream},
            before=before.fields() if before is not None else None,
            after=after.fields() if after is not None else None,
        )

    # Last, so that ``list`` in the annotations above is the builtin.
    async def list(self, chain: str | None = None) -> builtins.list[Cordon]:
        """Every cordon (of ``chain``), by chain and upstream."""
        stmt = select(upstream_cordons).order_by(
            upstream_cordons.c.chain, upstream_cordons.c.upstream
        )
        if chain is not None:
            stmt = stmt.where(upstream_cordons.c.chain == chain)
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Cordon(**row) for row in rows]

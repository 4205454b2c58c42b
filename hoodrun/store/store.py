"""The business store: one async engine over SQLite or PostgreSQL, opened once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal

from sqlalchemy import Table, delete, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hoodrun.config import PlanConfig
from hoodrun.store.engine import WRITE_OPTIONS, async_url, create_engine, safe_url
from hoodrun.store.exceptions import StoreClosed, StoreError, StoreUnavailable
from hoodrun.store.tables import plans

__all__ = ["Store"]

# Errors that mean "the database is not there" when they happen on an open connection.
_LOST = (OperationalError, InterfaceError, OSError, TimeoutError)


class Store:
    """An async context manager around the engine; refuses use before open and after close.

    ``connect()`` gives a connection for reads and ``transaction()`` one for writes (committed on
    success). Both turn "cannot reach the database" into ``StoreUnavailable``.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.dialect: str = async_url(url).get_backend_name()
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    def __repr__(self) -> str:
        return f"<Store {safe_url(self._url)} {self._state}>"

    @property
    def url(self) -> str:
        """The database URL with its password hidden."""
        return safe_url(self._url)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreClosed()
        return self._engine

    async def open(self) -> Store:
        if self._state != "new":
            raise StoreClosed("a Store opens once; create a new one")
        self._engine = create_engine(self._url)
        # Same pool; its connections are marked as writers (BEGIN IMMEDIATE on SQLite).
        self._writer = self._engine.execution_options(**WRITE_OPTIONS)
        self._state = "open"
        return self

    async def aclose(self) -> None:
        engine, self._engine, self._writer, self._state = self._engine, None, None, "closed"
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> Store:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (rolled back at the end)."""
        async with self._connection(self.engine) as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block ends without an exception."""
        if self._writer is None:
            raise StoreClosed()
        async with self._connection(self._writer) as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def _connection(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        conn = engine.connect()
        try:
            await conn.start()
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot connect to {self.url}: {_reason(exc)}") from exc
        try:
            try:
                yield conn
            finally:
                await conn.close()  # inside the outer try: a failing close is translated too
        except StoreError:
            raise
        except _LOST as exc:
            raise StoreUnavailable(f"database {self.url} failed: {_reason(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(f"lost the connection to {self.url}") from exc
            raise

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ``on_conflict_do_nothing`` / ``_do_update`` on this backend."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers a trivial query."""
        async with self.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def sync_plans(self, configured: Sequence[PlanConfig]) -> None:
        """Make the ``plans`` table mirror the config: upsert every plan, drop the others."""
        now = datetime.now(UTC)
        names = [plan.name for plan in configured]
        async with self.transaction() as conn:
            if configured:
                stmt = self.insert(plans).values(
                    [
                        {"name": p.name, "spec": p.model_dump(mode="json"), "synced_at": now}
                        for p in configured
                    ]
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=[plans.c.name],
                    set_={"spec": stmt.excluded.spec, "synced_at": stmt.excluded.synced_at},
                )
                await conn.execute(stmt)
            await conn.execute(delete(plans).where(plans.c.name.not_in(names)))


def _reason(exc: BaseException) -> str:
    # The DBAPI's own message, without SQLAlchemy's statement dump.
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {message}" if message else type(orig).__name__

"""Async engines from the config's database URL, tuned so several processes share one database.

``sqlite:///path`` runs on aiosqlite, ``postgresql://`` / ``postgres://`` on asyncpg. SQLite runs in
WAL mode (readers never wait for the writer) with a busy timeout (a second writer waits instead of
failing), and write transactions start with ``BEGIN IMMEDIATE`` so they take the write lock up
front: a deferred transaction that reads and then writes can fail at once with SQLITE_BUSY when
another process committed in between, whatever the busy timeout.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["WRITE_OPTIONS", "async_url", "create_engine", "safe_url"]

BUSY_TIMEOUT_MS = 5_000
CONNECT_TIMEOUT_S = 5.0

# Execution option on connections that will write; read by the SQLite ``begin`` hook below.
_WRITE_OPTION = "hoodrun_write"
WRITE_OPTIONS: dict[str, Any] = {_WRITE_OPTION: True}

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
}


def async_url(url: str | URL) -> URL:
    """The URL with an async driver: ``sqlite+aiosqlite`` or ``postgresql+asyncpg``."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str | URL) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        engine = create_async_engine(
            target, hide_parameters=True, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}
        )
        _tune_sqlite(engine)
        return engine
    return create_async_engine(
        target,
        hide_parameters=True,  # errors and logs must never carry bound values such as key hashes
        pool_pre_ping=True,  # survive a PostgreSQL restart without failing the first queries
        connect_args={"timeout": CONNECT_TIMEOUT_S},
    )


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (the driver's own transaction handling skips DDL and
        # cannot start IMMEDIATE transactions).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            f"busy_timeout={BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
            "synchronous=NORMAL",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

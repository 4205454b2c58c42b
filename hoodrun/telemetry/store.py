"""The analytics store: chDB in process (the embedded default) or a ClickHouse server.

Both run the same SQL (``hoodrun.telemetry.schema``); this module only moves statements, rows and
results. Every call runs in a worker thread (a chDB query holds its thread for its whole run, a
ClickHouse call waits on the network), with one connection per role so reports never queue behind
a write (a chDB connection serializes its calls).

chDB allows one data directory per process and is unsafe across ``fork``: a process opens one
path, once; several ``ChdbStore`` objects (the gateway's writer and the api's reports in
``hoodrun up``, many test databases) share it and differ by database name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from hoodrun.config import Config, RetentionConfig
from hoodrun.telemetry.schema import ddl, quote_db

__all__ = ["AnalyticsStore", "ChdbStore", "ClickHouseStore", "StoreError", "open_analytics"]


# Inserts skip the ReplacingMergeTree's de-duplication pass (reads use FINAL anyway) and run on
# one thread, so they leave the CPU to the requests: half the CPU per row of the defaults
# (bench/README.md).
INSERT_SETTINGS = "optimize_on_insert = 0, max_insert_threads = 1, max_threads = 1"


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class StoreError(RuntimeError):
    """The analytics store refused or failed a statement."""


class AnalyticsStore(Protocol):
    database: str

    async def setup(self, retention: RetentionConfig) -> None:
        """Create the database and tables if missing."""

    async def insert(self, table: pa.Table) -> None:
        """Append rows to ``requests_raw``."""

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        """Append rows to another table of this store's database, columns matched by name."""

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (``{db}`` is this store's database)."""

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT; rows as dicts."""

    async def aclose(self) -> None: ...


# --- chDB --------------------------------------------------------------------------------------

_chdb_lock = threading.Lock()
_chdb_path: str | None = None


def _chdb_connect(path: Path) -> Any:
    """A new connection to this process's chDB directory (the first call picks it)."""
    global _chdb_path
    # A 250 MB engine: loaded only by processes that use it.
    import chdb

    resolved = str(path.resolve())
    with _chdb_lock:
        if _chdb_path is None:
            path.mkdir(parents=True, exist_ok=True)
            _chdb_path = resolved
        elif _chdb_path != resolved:
            raise StoreError(
                f"this process already uses the chDB directory {_chdb_path}; chDB allows one per "
                f"process, so {resolved} cannot be opened too (share one data_dir, or use a "
                "ClickHouse server through analytics_url)"
            )
        try:
            return chdb.connect(resolved)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise StoreError(
                f"cannot open the chDB directory {resolved}: {_first_line(exc)} (is another "
                "HoodRun process using the same data_dir? chDB allows one process per directory)"
            ) from exc


BACKGROUND_NICE = 10


def _lower_priority() -> None:
    """This thread (and the threads it starts) yield the CPU to the request path."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


# chDB reads a query parameter's value as ClickHouse's escaped text (as the HTTP interface
# does): sent as is, a backslash and an n would arrive as a newline, and a real tab or newline
# is refused. clickhouse-connect escapes its parameters itself; this does the same for chDB.
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def _escaped(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with their strings escaped, so chDB reads each back exactly as given."""
    return {
        name: value.translate(_ESCAPES) if isinstance(value, str) else value
        for name, value in params.items()
    }


class _Conn:
    """One chDB connection and the lock that serializes its calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.conn: Any = None

    def run(self, sql: str, fmt: str, params: dict[str, Any] | None) -> Any:
        with self.lock:
            if self.conn is None:
                self.conn = _chdb_connect(self.path)
            try:
                if params:
                    return self.conn.query(sql, fmt, params=_escaped(params))
                return self.conn.query(sql, fmt)
            except RuntimeError as exc:  # chdb's errors are RuntimeError subclasses
                raise StoreError(_first_line(exc)) from exc

    def insert(self, sql: str, table: pa.Table) -> None:
        with self.lock:
            if self.conn is None:
                self.conn = _chdb_connect(self.path)
            try:
                # chDB's Python() table function finds ``table`` among this frame's locals.
                self.conn.query(sql.replace("$table", "Python(table)"), "CSV")
            except RuntimeError as exc:
                raise StoreError(_first_line(exc)) from exc

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class ChdbStore:
    """ClickHouse in process, data under ``path`` (usually ``data_dir/analytics``)."""

    def __init__(self, path: Path, database: str = "hoodrun") -> None:
        self.path = path
        self.database = quote_db(database)
        self._writer = _Conn(path)
        self._reader = _Conn(path)
        # Writes, and the engine's own threads (merges), run below the request path's priority:
        # the engine starts in this thread, and Linux threads inherit their creator's nice value.
        self._background = ThreadPoolExecutor(
            1, thread_name_prefix="analytics-writer", initializer=_lower_priority
        )

    async def _in_background(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._background, function, *args)

    async def setup(self, retention: RetentionConfig) -> None:
        for statement in ddl(self.database, retention):
            await self._in_background(self._writer.run, statement, "CSV", None)

    async def insert(self, table: pa.Table) -> None:
        sql = (
            f"INSERT INTO {self.database}.requests_raw SETTINGS {INSERT_SETTINGS}"  # noqa: S608
            " SELECT * FROM $table"
        )
        await self._in_background(self._writer.insert, sql, table)

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        columns = ", ".join(_identifier(name) for name in table.column_names)
        sql = (
            f"INSERT INTO {self.database}.{_identifier(table_name)} ({columns})"  # noqa: S608
            f" SETTINGS {INSERT_SETTINGS} SELECT * FROM $table"
        )
        await self._in_background(self._writer.insert, sql, table)

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        statement = sql.replace("{db}", self.database)
        await self._in_background(self._writer.run, statement, "CSV", params)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        statement = sql.replace("{db}", self.database)
        result = await asyncio.to_thread(self._reader.run, statement, "JSONEachRow", params)
        return [orjson.loads(line) for line in result.bytes().splitlines() if line]

    async def drop(self) -> None:
        """Drop the database (tests)."""
        await self._in_background(
            self._writer.run, f"DROP DATABASE IF EXISTS {self.database} SYNC", "CSV", None
        )

    async def aclose(self) -> None:
        self._writer.close()
        self._reader.close()
        self._background.shutdown(wait=False)


# --- ClickHouse server -------------------------------------------------------------------------


class ClickHouseStore:
    """A ClickHouse server through clickhouse-connect (HTTP). Same SQL as chDB."""

    def __init__(self, url: str, database: str = "hoodrun", client_factory: Any = None) -> None:
        self.database = quote_db(database)
        self._url = url
        self._factory = client_factory
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, role: str) -> Any:
        with self._lock:
            client = self._clients.get(role)
            if client is None:
                factory = self._factory
                if factory is None:
                    import clickhouse_connect

                    factory = clickhouse_connect.get_client
                parts = urlsplit(self._url)
                client = factory(
                    host=parts.hostname or "127.0.0.1",
                    port=parts.port or (8443 if parts.scheme == "https" else 8123),
                    username=parts.username or "default",
                    password=parts.password or "",
                    secure=parts.scheme == "https",
                )
                self._clients[role] = client
            return client

    def _call(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client(role), method)(*args, **kwargs)
        except Exception as exc:  # driver and network errors alike
            raise StoreError(_first_line(exc)) from exc

    async def setup(self, retention: RetentionConfig) -> None:
        for statement in ddl(self.database, retention):
            await asyncio.to_thread(self._call, "writer", "command", statement)

    async def insert(self, table: pa.Table) -> None:
        await asyncio.to_thread(
            self._call, "writer", "insert_arrow", f"{self.database}.requests_raw", table,
            settings={"optimize_on_insert": 0},
        )  # fmt: skip

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        await asyncio.to_thread(
            self._call, "writer", "insert_arrow", f"{self.database}.{_identifier(table_name)}",
            table, settings={"optimize_on_insert": 0},
        )  # fmt: skip

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        statement = sql.replace("{db}", self.database)
        await asyncio.to_thread(self._call, "writer", "command", statement, parameters=params)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        statement = sql.replace("{db}", self.database)
        result = await asyncio.to_thread(
            self._call, "reader", "query", statement, parameters=params
        )
        return list(result.named_results())

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def open_analytics(config: Config) -> AnalyticsStore:
    if config.analytics_url:
        return ClickHouseStore(config.analytics_url, config.analytics_database)
    path = config.analytics_path or config.data_dir / "analytics"
    return ChdbStore(path, config.analytics_database)


def _identifier(name: str) -> str:
    """A table or column name, checked before it is formatted into a statement."""
    if not _IDENTIFIER.match(name):
        raise StoreError(f"{name!r} is not a valid table or column name (letters, digits, _)")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

"""The business store under test, on SQLite and PostgreSQL: one parametrized fixture, same tests.

Suites import these fixtures into their conftest by name (``from tests._stores import store``).
``database_url`` is a migrated, empty database; ``store`` an open ``Store`` on it. SQLite copies a
template migrated once per session; PostgreSQL migrates the session's database once
(``pg_database``) and empties the tables before each test.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from hoodrun.store import Store, upgrade
from hoodrun.store.tables import metadata
from tests.conftest import PG_ADMIN_URL, _pg_exec

__all__ = [
    "BACKENDS",
    "UNREACHABLE_URLS",
    "FakeClock",
    "clock",
    "database_url",
    "empty_database_url",
    "pg_admin",
    "pg_clean",
    "pg_migrated",
    "sqlite_template",
    "store",
]

BACKENDS = ["sqlite", "postgresql"]
# Children first. DELETE, not TRUNCATE: on a handful of rows it is many times faster.
_TABLES = tuple(table.name for table in reversed(metadata.sorted_tables))


@dataclass
class FakeClock:
    """An injectable UTC clock that only moves when told to."""

    now: datetime = field(default_factory=lambda: datetime(2030, 1, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        self.now += delta
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    await upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
async def pg_migrated(pg_database: str) -> str:
    await upgrade(pg_database)
    return pg_database


@pytest.fixture
async def pg_clean(pg_migrated: str) -> str:
    async with Store(pg_migrated) as store, store.transaction() as conn:
        # The ledger and closing snapshots refuse DELETE by trigger; replica mode skips triggers
        # for this transaction only (the tests connect as a superuser).
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        for table in _TABLES:
            await conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (constant names)
    return pg_migrated


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "hoodrun.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_clean")
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    async with Store(database_url) as opened:
        yield opened


async def pg_admin(sql: str) -> None:
    await _pg_exec(PG_ADMIN_URL, sql)


@pytest.fixture(params=BACKENDS)
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables at all (for migration tests); dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'new' / 'hoodrun.db'}"
        return
    name = f"hoodrun_test_{uuid.uuid4().hex[:12]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Databases that cannot be reached: a closed port, a directory that does not exist.
UNREACHABLE_URLS = [
    "postgresql://postgres@127.0.0.1:1/hoodrun",
    "sqlite:////nonexistent-hoodrun-dir/sub/hoodrun.db",
]

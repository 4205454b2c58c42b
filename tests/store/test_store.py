"""The business store on SQLite and PostgreSQL: lifecycle, migrations, times, plans, outages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import StatementError

from hoodrun.config import load_config
from hoodrun.store import Store, StoreClosed, StoreUnavailable, async_url, upgrade
from hoodrun.store.migrate import alembic_config
from hoodrun.store.tables import metadata, orgs, plans
from tests._stores import UNREACHABLE_URLS

ROOT = Path(__file__).resolve().parents[2]


def test_async_url_picks_async_drivers() -> None:
    assert async_url("sqlite:///data/h.db").drivername == "sqlite+aiosqlite"
    assert async_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert async_url("postgres://u:p@h:5433/db").drivername == "postgresql+asyncpg"
    assert async_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"


async def test_refuses_use_before_open_and_after_close(database_url: str) -> None:
    store = Store(database_url)
    with pytest.raises(StoreClosed):
        store.engine  # noqa: B018
    with pytest.raises(StoreClosed):
        await store.ping()
    async with store:
        await store.ping()
    with pytest.raises(StoreClosed):
        await store.ping()
    with pytest.raises(StoreClosed):
        await store.open()


async def test_upgrade_creates_schema_once(empty_database_url: str) -> None:
    # Two processes (here: two engines) starting at once must not both create the tables.
    await asyncio.gather(upgrade(empty_database_url), upgrade(empty_database_url))
    await upgrade(empty_database_url)
    async with Store(empty_database_url) as store, store.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert head is not None and head >= "0002"
        versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert versions == [(head,)]
        assert await conn.scalar(select(orgs.c.id)) is None


async def test_times_round_trip_as_aware_utc(store: Store) -> None:
    istanbul = timezone(timedelta(hours=3))
    at = datetime(2030, 5, 1, 15, 30, 0, 123456, tzinfo=istanbul)
    async with store.transaction() as conn:
        await conn.execute(insert(orgs).values(id="org_t", name="t", created_at=at))
    async with store.connect() as conn:
        got = await conn.scalar(select(orgs.c.created_at))
        later = await conn.scalar(
            select(orgs.c.id).where(orgs.c.created_at > at - timedelta(microseconds=1))
        )
    assert got == at
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert later == "org_t"


async def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with store.transaction() as conn:
            await conn.execute(
                insert(orgs).values(id="org_n", name="n", created_at=datetime(2030, 1, 1))  # noqa: DTZ001
            )


async def test_sync_plans_mirrors_the_config(store: Store) -> None:
    config = load_config(ROOT / "hoodrun.example.yaml", env={})
    await store.sync_plans(config.plans)
    await store.sync_plans(config.plans)  # again: an upsert, not a duplicate
    async with store.connect() as conn:
        rows = {r.name: r for r in (await conn.execute(select(plans))).all()}
    assert sorted(rows) == ["enterprise", "free", "pro"]
    assert rows["free"].spec["rate"]["rps"] == 10
    assert rows["free"].spec["methods"]["deny"] == ["eth_sendRawTransaction"]
    assert rows["pro"].synced_at.tzinfo is not None

    await store.sync_plans(config.plans[1:])
    async with store.connect() as conn:
        assert sorted((await conn.execute(select(plans.c.name))).scalars()) == [
            "enterprise",
            "pro",
        ]


@pytest.mark.parametrize("url", UNREACHABLE_URLS)
async def test_unreachable_database_is_store_unavailable(url: str) -> None:
    async with Store(url) as store:
        with pytest.raises(StoreUnavailable, match="cannot connect"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.sync_plans([])


async def test_sqlite_is_shared_by_processes(tmp_path: Path) -> None:
    """WAL: readers go on while another process writes; a second writer waits, then succeeds."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    await upgrade(url)
    now = datetime.now(UTC)
    async with Store(url) as gateway, Store(url) as cli:
        async with gateway.connect() as conn:
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(text("PRAGMA busy_timeout")) == 5000
        writing = cli.transaction()
        conn = await writing.__aenter__()
        await conn.execute(insert(orgs).values(id="org_a", name="a", created_at=now))
        # The reader is not blocked and does not see the uncommitted row.
        async with gateway.connect() as reader:
            assert await reader.scalar(select(orgs.c.id)) is None

        async def second_writer() -> None:
            async with gateway.transaction() as other:
                await other.execute(insert(orgs).values(id="org_b", name="b", created_at=now))

        # A second writer waits for the lock (busy timeout) rather than failing.
        waiting = asyncio.create_task(second_writer())
        await writing.__aexit__(None, None, None)
        await asyncio.wait_for(waiting, timeout=5)
        async with cli.connect() as reader:
            assert sorted((await reader.execute(select(orgs.c.id))).scalars()) == [
                "org_a",
                "org_b",
            ]


async def test_migrations_match_the_table_definitions(store: Store) -> None:
    """What ``upgrade`` builds is what ``hoodrun.store.tables`` describes, on both backends."""

    def compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    async with store.connect() as conn:
        assert await conn.run_sync(compare) == []

"""Shared fixtures: real PostgreSQL, Redis and anvil, each test run in its own namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hoodrun.devnet import Anvil, ensure_anvil
from tests._smtp import smtp_sink  # noqa: F401 (a fixture for every package: a real SMTP server)

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("HOODRUN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("HOODRUN_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def anvil_binary() -> Path:
    return ensure_anvil(ROOT)


@pytest.fixture
def anvil_factory(anvil_binary: Path) -> Iterator[type[Anvil]]:
    """``anvil_factory(chain_id=1)`` starts an anvil that is stopped after the test."""
    started: list[Anvil] = []

    def make(**kwargs: object) -> Anvil:
        node = Anvil(anvil_binary, **kwargs).start()  # type: ignore[arg-type]
        started.append(node)
        return node

    yield make  # type: ignore[misc]
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def eth_anvil(anvil_binary: Path) -> Iterator[Anvil]:
    """A shared chain-id-1 anvil for tests that do not stop or pause it."""
    node = Anvil(anvil_binary, chain_id=1).start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def base_anvil(anvil_binary: Path) -> Iterator[Anvil]:
    node = Anvil(anvil_binary, chain_id=8453).start()
    yield node
    node.stop()


async def _pg_exec(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_pg_database(prefix: str = "hoodrun_test") -> Iterator[str]:
    """Create a PostgreSQL database with a unique name; yield its URL; drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(PG_ADMIN_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_pg_exec(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (one per xdist worker), dropped after."""
    with scratch_pg_database() as url:
        yield url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test (or run) uses; keys under it are deleted after the test."""
    return f"hoodrun-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_prefix: str) -> AsyncIterator[object]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    yield client
    keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


# --- analytics (chDB) ----------------------------------------------------------------------------
# chDB allows one data directory per process: every test of a pytest process shares one, and each
# test gets its own database in it.


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "analytics"


@pytest.fixture
async def analytics_store(chdb_path: Path) -> AsyncIterator[object]:
    """A ``ChdbStore`` on a database of its own, with the tables created; dropped afterwards."""
    from hoodrun.config import RetentionConfig
    from hoodrun.telemetry.store import ChdbStore

    store = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    await store.setup(RetentionConfig())
    yield store
    await store.drop()
    await store.aclose()

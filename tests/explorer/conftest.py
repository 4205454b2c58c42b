"""Fixtures of the explorer's tests: a chDB database of its own per test, real keys on SQLite, and
the log ingestor and the API over them (``logs_api``)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgpack  # type: ignore[import-untyped]
import orjson
import pyarrow as pa
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config
from hoodrun.explorer.config import LogsConfig
from hoodrun.explorer.ingest import LogIngestor
from hoodrun.keys.events import LocalKeyEvents
from hoodrun.keys.service import KeyService
from hoodrun.keys.verifier import KeyVerifier
from hoodrun.limits import Limiter
from hoodrun.store import Store
from hoodrun.telemetry.store import AnalyticsStore, ChdbStore, StoreError
from tests._stores import FakeClock, sqlite_template  # noqa: F401 (a fixture)

TOKEN = "explorer-test-admin-token"
# Noon (UTC) today: lines keep for days after it, so chDB's TTL never drops a test's rows.
NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def logs_config(**logs: Any) -> Config:
    """The default config with ``logs`` options changed."""
    return Config(logs=LogsConfig(**logs))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def logs_store(chdb_path: Path) -> AsyncIterator[ChdbStore]:
    """A chDB database of this test's own (no tables yet), dropped afterwards."""
    store = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    yield store
    await store.drop()
    await store.aclose()


@pytest.fixture
async def key_store(
    sqlite_template: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> AsyncIterator[Store]:
    """The business store on a migrated SQLite file of this test's own."""
    path = tmp_path / "hoodrun.db"
    shutil.copyfile(sqlite_template, path)
    async with Store(f"sqlite:///{path}") as store:
        yield store


class GatedStore:
    """An analytics store whose inserts wait for ``gate`` (set: they run), and fail while
    ``down``; ``inserts`` counts the rows of each insert that got through."""

    def __init__(self, store: ChdbStore) -> None:
        self.store = store
        self.database = store.database
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()  # an insert waits at the gate
        self.down = False
        self.failed = asyncio.Event()  # an insert failed (while down)
        self.attempts = 0
        self.inserts: list[int] = []

    async def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        await self.store.execute(sql, params)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self.store.query(sql, params)

    async def insert_into(self, table_name: str, table: pa.Table) -> None:
        self.attempts += 1
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        if self.down:
            self.failed.set()
            raise StoreError("Connection refused")
        await self.store.insert_into(table_name, table)
        self.inserts.append(table.num_rows)


async def reached(event: asyncio.Event) -> None:
    """Wait for ``event``; a test that never gets there fails instead of hanging."""
    async with asyncio.timeout(60):
        await event.wait()


@dataclass
class LogsApi:
    """The logs API in process: its keys, ingestor and client."""

    store: ChdbStore
    keys: KeyService
    ingestor: LogIngestor
    client: httpx.AsyncClient
    verifier: KeyVerifier
    created: dict[str, str] = field(default_factory=dict)  # key -> key id

    async def key(
        self, project: str = "shop", *, org: str = "acme", plan: str | None = None
    ) -> str:
        created = await self.keys.create(org=org, project=project, plan=plan, actor="test")
        self.created[created.key] = created.id
        return created.key

    def post(
        self, key: str | None, body: Any, content_type: str = "application/json", **kwargs: Any
    ) -> Awaitable[httpx.Response]:
        if isinstance(body, bytes):
            raw = body
        elif "msgpack" in content_type:
            raw = msgpack.packb(body, datetime=True)
        else:
            raw = orjson.dumps(body)
        headers = {"content-type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.client.post("/logs/v1", content=raw, headers=headers, **kwargs)


MakeApi = Callable[..., Awaitable[LogsApi]]


@pytest.fixture
async def logs_api(
    logs_store: ChdbStore, key_store: Store, clock: FakeClock
) -> AsyncIterator[MakeApi]:
    """``await logs_api(config, store=..., limiter=..., write_timeout=...)``: a started ingestor
    on ``logs_store`` (or a wrapper of it) and the API over it; all closed after the test."""
    opened: list[tuple[httpx.AsyncClient, LogIngestor]] = []

    async def make(
        config: Config | None = None,
        *,
        store: AnalyticsStore | None = None,
        limiter: Limiter | None = None,
        write_timeout: float = 10.0,
    ) -> LogsApi:
        config = config or Config()
        events = LocalKeyEvents()
        keys = KeyService(key_store, config, events)
        verifier = KeyVerifier(keys.lookup, ttl=30, negative_ttl=5)
        events.subscribe(verifier.purge)
        ingestor = LogIngestor(
            store or logs_store, config, clock=clock, limiter=limiter, write_timeout=write_timeout
        )
        await ingestor.start()
        app = create_api_app(config, keys, token=TOKEN, logs=ingestor, verifier=verifier)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        opened.append((client, ingestor))
        return LogsApi(logs_store, keys, ingestor, client, verifier)

    yield make
    for client, ingestor in reversed(opened):
        await client.aclose()
        await ingestor.aclose()


async def stored(store: ChdbStore, project: str | None = None) -> list[dict[str, Any]]:
    """The lines as every read sees them (FINAL), oldest first."""
    return await store.query(
        "SELECT toUnixTimestamp64Micro(ts) AS ts_us, toUnixTimestamp64Micro(received_at) AS "
        "received_us, toUnixTimestamp(expires) AS expires_s, project_id, org_id, key_id, id, "
        "level, service, message, fingerprint, stack, attributes, trace_id, span_id "
        "FROM {db}.logs FINAL WHERE {project:String} IN ('', project_id) ORDER BY ts, id",
        {"project": project or ""},
    )


async def physical_rows(store: ChdbStore) -> int:
    rows = await store.query("SELECT count() AS n FROM {db}.logs")
    return int(rows[0]["n"])

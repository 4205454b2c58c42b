"""Fixtures of the client's tests: the platform's api role in this process (``PlatformThread``)
on a chDB database of its own, and reading what it stored."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hoodrun.config import Config
from hoodrun.devnet import free_port
from hoodrun.telemetry.store import ChdbStore
from tests._platform import PlatformThread

TOKEN = "client-test-admin-token"


@dataclass
class Api:
    """A running api role: its URL, a project's key, and its analytics database."""

    url: str
    key: str
    chdb_path: Path
    database: str

    def query(self, sql: str) -> list[dict[str, Any]]:
        """``sql`` on the platform's analytics database (``{db}``), from this thread."""

        async def run() -> list[dict[str, Any]]:
            store = ChdbStore(self.chdb_path, self.database)
            try:
                return await store.query(sql)
            finally:
                await store.aclose()

        return asyncio.run(run())

    def wait_for(self, sql: str, expected: Any, deadline: float = 20.0) -> Any:
        """The first row's ``n`` of ``sql`` once it equals ``expected`` (or at the deadline)."""
        value: Any = None
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            value = self.query(sql)[0]["n"]
            if value == expected:
                break
            time.sleep(0.2)
        return value


def platform_config(
    tmp_path: Path, chdb_path: Path, database: str, *, port: int | None = None, **extra: Any
) -> Config:
    return Config.model_validate(
        {
            "api_listen": f"127.0.0.1:{port or free_port()}",
            "data_dir": str(tmp_path / "data"),
            "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
            "admin_token": TOKEN,
            "analytics_path": str(chdb_path),  # this process's one chDB directory
            "analytics_database": database,
            **extra,
        }
    )


@contextmanager
def run_api(tmp_path: Path, chdb_path: Path, **extra: Any) -> Iterator[Api]:
    """``with run_api(tmp_path, chdb_path, logs={...}) as api:`` the api role (``extra`` is
    config) with a demo project's key, on a chDB database of its own, dropped afterwards."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    config = platform_config(tmp_path, chdb_path, database, **extra)
    try:
        with PlatformThread(config, gateway=False, demo=True) as running:
            assert running.key is not None
            yield Api(running.api_url, running.key, chdb_path, database)
    finally:
        _drop(chdb_path, database)


def _drop(chdb_path: Path, database: str) -> None:
    async def run() -> None:
        store = ChdbStore(chdb_path, database)
        await store.drop()
        await store.aclose()

    asyncio.run(run())


class CountingTransport(httpx.HTTPTransport):
    """httpx's transport, counting the answers by status."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[int, int] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        return response

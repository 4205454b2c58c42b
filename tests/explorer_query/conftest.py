"""A fresh analytics database per test (chDB, this process's directory) with the ``logs`` and
``requests_raw`` tables."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hoodrun.telemetry.store import ChdbStore
from tests._stores import sqlite_template  # noqa: F401 (fixture)
from tests.explorer_query.support import create_tables


@pytest.fixture
async def analytics(chdb_path: Path) -> AsyncIterator[ChdbStore]:
    opened = ChdbStore(chdb_path, f"t_{uuid.uuid4().hex[:12]}")
    await create_tables(opened)
    yield opened
    await opened.drop()
    await opened.aclose()

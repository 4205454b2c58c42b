"""The OpenAPI schema against the running api: property-based requests to every operation
(schemathesis) find no server error and no answer outside the schema (status, content type,
body). The platform runs for real (uvicorn, SQLite), called as the admin and with bad input.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hoodrun.config import Config
from hoodrun.devnet import free_port
from tests._platform import PlatformThread

TOKEN = "schema-admin-token"
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory, chdb_path: Path) -> Iterator[str]:
    data: Path = tmp_path_factory.mktemp("schema")
    config = Config.model_validate(
        {
            "api_listen": f"127.0.0.1:{free_port()}",
            "data_dir": str(data),
            "database_url": f"sqlite:///{data}/hoodrun.db",
            "admin_token": TOKEN,
            # chDB: one directory per process, shared with this process's other tests.
            "analytics_path": str(chdb_path),
            "analytics_database": f"schema_{uuid.uuid4().hex[:10]}",
            "log_level": "warning",
            "auth": {"jwt_secret": "schema-test-secret-of-32-bytes-at-least"},
        }
    )
    with PlatformThread(config, gateway=False, demo=False) as running:
        yield running.api_url


def test_the_api_keeps_to_its_schema(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    operations = 0
    for found in schema.get_all_operations():
        operation = found.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers=auth, checks=CHECKS)

        try:
            run()
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {exc}")
    assert operations > 40, operations
    assert not failures, "\n\n".join(failures)

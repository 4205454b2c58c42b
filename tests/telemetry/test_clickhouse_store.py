"""The ClickHouse server store is a thin layer over clickhouse-connect: no server runs here, so
its SQL is the chDB store's (tested there) and this checks only what it hands the driver."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from hoodrun.config import Config, RetentionConfig
from hoodrun.telemetry.schema import ROLLUP_HOURLY
from hoodrun.telemetry.store import ClickHouseStore, StoreError, open_analytics


class Driver:
    """Records the calls a clickhouse-connect client receives."""

    def __init__(self, **connect: Any) -> None:
        self.connect = connect
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.fail = False

    def _record(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise ConnectionError("Connection refused\nmore detail")
        self.calls.append((name, args, kwargs))
        return self

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return self._record("command", *args, **kwargs)

    def insert_arrow(self, *args: Any, **kwargs: Any) -> Any:
        return self._record("insert_arrow", *args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self._record("query", *args, **kwargs)

    def named_results(self) -> list[dict[str, Any]]:
        return [{"n": 1}]

    def close(self) -> None:
        self.calls.append(("close", (), {}))


async def test_statements_rows_and_errors_reach_the_driver() -> None:
    drivers: list[Driver] = []

    def factory(**connect: Any) -> Driver:
        drivers.append(Driver(**connect))
        return drivers[-1]

    store = ClickHouseStore("https://reader:s3cret@ch.example.com:8443", "metrics", factory)
    await store.setup(RetentionConfig(raw_days=7))
    writer = drivers[0]
    assert writer.connect == {
        "host": "ch.example.com", "port": 8443, "username": "reader", "password": "s3cret",
        "secure": True,
    }  # fmt: skip
    ddl = [args[0] for name, args, _ in writer.calls]
    assert ddl[0] == "CREATE DATABASE IF NOT EXISTS metrics"
    assert "metrics.requests_raw" in ddl[1] and "INTERVAL 7 DAY" in ddl[1]
    table = pa.table({"x": [1]})
    await store.insert(table)
    name, args, kwargs = writer.calls[-1]
    assert (name, args[0], args[1]) == ("insert_arrow", "metrics.requests_raw", table)
    assert kwargs["settings"] == {"optimize_on_insert": 0}
    await store.execute(ROLLUP_HOURLY, {"start": 0, "end": 3600_000})
    name, args, kwargs = writer.calls[-1]
    assert "INSERT INTO metrics.usage_hourly" in args[0] and "{db}" not in args[0]
    assert kwargs["parameters"] == {"start": 0, "end": 3600_000}
    assert await store.query("SELECT 1 AS n FROM {db}.requests_raw") == [{"n": 1}]
    reader = drivers[1]  # reports have a client of their own
    assert reader.calls[-1][1][0] == "SELECT 1 AS n FROM metrics.requests_raw"
    writer.fail = True
    with pytest.raises(StoreError, match=r"^Connection refused$"):
        await store.insert(table)
    await store.aclose()
    assert ("close", (), {}) in reader.calls


def test_the_config_picks_the_store() -> None:
    assert isinstance(
        open_analytics(Config(analytics_url="http://default:@127.0.0.1:8123")), ClickHouseStore
    )
    with pytest.raises(ValueError, match="ClickHouse server"):
        Config(analytics_url="ftp://x")

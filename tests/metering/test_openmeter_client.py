"""OpenMeter's official Python client (``openmeter`` 1.0.0b236, unchanged, constructed as its
docs show: endpoint and token) against a real HoodRun api role on a socket: it ingests single
events and batches, lists and gets meters, and queries with windows in a time zone, subjects,
groups and group filters (sent the client's way: a Python dict's text), by GET and by POST."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from openmeter import Client
from openmeter.models import Event, MeterQueryRequest

from hoodrun.config import Config
from hoodrun.devnet import free_port
from hoodrun.telemetry.store import ChdbStore
from tests._platform import PlatformThread
from tests.metering.test_meters import METERS, TOKEN_DUPLICATES, TOKEN_EVENTS

TOKEN = "openmeter-client-token"


@pytest.fixture
def api_url(tmp_path: Path, chdb_path: Path) -> Iterator[str]:
    database = f"t_{uuid.uuid4().hex[:12]}"
    config = Config.model_validate(
        {
            "api_listen": f"127.0.0.1:{free_port()}",
            "data_dir": str(tmp_path / "data"),
            "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
            "admin_token": TOKEN,
            "analytics_path": str(chdb_path),  # this process's one chDB directory
            "analytics_database": database,
            "meters": [meter.model_dump() for meter in METERS],
        }
    )
    with PlatformThread(config, gateway=False) as running:
        url = running.api_url
        yield url

    async def drop() -> None:
        store = ChdbStore(chdb_path, database)
        await store.drop()
        await store.aclose()

    asyncio.run(drop())


def as_event(raw: dict[str, Any]) -> Event:
    return Event(
        id=raw["id"],
        source=raw["source"],
        specversion=raw["specversion"],
        type=raw["type"],
        subject=raw["subject"],
        time=datetime.fromisoformat(raw["time"]),
        data=raw["data"],
    )


def rows(result: Any) -> list[tuple[datetime, datetime, str | None, str | None, float]]:
    return [
        (row.window_start, row.window_end, row.subject, row.group_by.get("model"), row.value)
        for row in result.data
    ]


def day(month_day: int, hour: int) -> datetime:
    return datetime(2026, 3, month_day, hour, tzinfo=UTC)


def test_the_official_client_ingests_and_queries(api_url: str) -> None:
    client = Client(endpoint=api_url, token=TOKEN)

    client.events.ingest_event(as_event(TOKEN_EVENTS[0]))  # application/cloudevents+json
    client.events.ingest_events([as_event(raw) for raw in TOKEN_EVENTS[1:]])  # a batch
    client.events.ingest_events([as_event(raw) for raw in TOKEN_DUPLICATES])  # counted once

    slugs = {meter.slug for meter in client.meters.list()}
    assert slugs == {"requests", "compute_units", *(m.slug for m in METERS)}
    tokens = client.meters.get("tokens")
    assert (tokens.aggregation, tokens.event_type, tokens.value_property) == (
        "SUM", "llm", "$.tokens",
    )  # fmt: skip
    assert tokens.group_by == {"model": "$.model", "region": "$.geo.region"}

    # Days in New York (the 8th has 23 hours), region us only, per subject and model.
    result = client.meters.query_json(
        "tokens",
        from_parameter=day(1, 0),
        to=day(11, 0),
        window_size="DAY",
        window_time_zone="America/New_York",
        subject=["acme", "globex"],
        group_by=["model"],
        filter_group_by={"region": "us"},
    )
    assert result.window_size == "DAY"
    assert (result.from_property, result.to) == (day(1, 0), day(11, 0))
    assert rows(result) == [
        (day(7, 5), day(8, 5), "acme", "gpt", 20.0),  # t2 once, not its duplicate's 999
        (day(8, 5), day(9, 4), "globex", "llama", 100.0),
        (day(9, 4), day(10, 4), "globex", "gpt", 1.0),
    ]

    # The same by POST, in Istanbul's days, every region.
    posted = client.meters.query(
        "tokens",
        MeterQueryRequest(
            from_property=day(1, 0),
            to=day(11, 0),
            window_size="DAY",
            window_time_zone="Europe/Istanbul",
            group_by=["model"],
            filter_group_by={"model": ["gpt", "llama"]},
        ),
    )
    assert rows(posted) == [
        (day(7, 21), day(8, 21), None, "gpt", 30.0),
        (day(7, 21), day(8, 21), None, "llama", 2.5),
        (day(8, 21), day(9, 21), None, "gpt", 8.0),
        (day(8, 21), day(9, 21), None, "llama", 100.0),
    ]

    total = client.meters.query_json("tokens")
    assert [row.value for row in total.data] == [140.5]
    assert client.meters.list_subjects("tokens") == ["acme", "globex"]


def test_the_official_client_sees_the_errors(api_url: str) -> None:
    client = Client(endpoint=api_url, token=TOKEN)
    bad = dict(TOKEN_EVENTS[0], subject="")
    with pytest.raises(HttpResponseError) as invalid:
        client.events.ingest_events([as_event(TOKEN_EVENTS[1]), as_event(bad)])
    assert invalid.value.status_code == 400
    assert "[1].subject: required" in invalid.value.response.json()["detail"]
    assert client.meters.query_json("tokens").data == []  # the batch was refused whole

    with pytest.raises(HttpResponseError) as unknown:
        client.meters.query_json("nope")
    assert unknown.value.status_code == 404

    with pytest.raises(ClientAuthenticationError):
        Client(endpoint=api_url, token="wrong").meters.list()

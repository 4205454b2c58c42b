"""Alertmanager's webhook into the alerts table and the list out, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config, load_config
from hoodrun.keys.service import KeyService
from hoodrun.ops.alerts import AlertBook
from hoodrun.store import Store

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    config: Config = load_config(ROOT / "hoodrun.example.yaml", env={})
    app = create_api_app(config, KeyService(store, config), token=TOKEN, alerts=AlertBook(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http


def notification(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """A webhook body as Alertmanager 0.25 sends it."""
    return {
        "receiver": "hoodrun", "status": status, "alerts": list(alerts),
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "version": "4",
        "groupKey": '{}:{alertname="UpstreamDown"}', "truncatedAlerts": 0,
    }  # fmt: skip


def alert(
    fingerprint: str,
    status: str = "firing",
    starts: str = "2026-11-22T01:18:35.283686585Z",
    ends: str = "0001-01-01T00:00:00Z",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "UpstreamDown", "severity": "critical", **labels},
        "annotations": {"summary": f"Upstream {labels.get('upstream', '?')} is down"},
        "startsAt": starts, "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint,
    }  # fmt: skip


async def firing(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/alerts", headers=AUTH)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["alerts"]
    return found


async def test_firing_then_resolved(client: httpx.AsyncClient) -> None:
    body = notification(alert("fb719eff0bd1f674", upstream="eth-0"), alert("aa01", upstream="b"))
    response = await client.post("/api/v1/alerts/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"received": 2, "changed": 2}
    listed = await firing(client)
    assert {a["fingerprint"] for a in listed} == {"fb719eff0bd1f674", "aa01"}
    one = next(a for a in listed if a["fingerprint"] == "fb719eff0bd1f674")
    assert one["name"] == "UpstreamDown" and one["severity"] == "critical"
    assert one["labels"]["upstream"] == "eth-0" and one["ends_at"] is None
    assert one["annotations"]["summary"] == "Upstream eth-0 is down"
    assert one["starts_at"].startswith("2026-11-22T01:18:35.283686")

    resolved = alert("fb719eff0bd1f674", "resolved", ends="2026-11-22T01:25:00Z", upstream="eth-0")
    await client.post(
        "/api/v1/alerts/alertmanager", json=notification(resolved, status="resolved"), headers=AUTH
    )
    assert [a["fingerprint"] for a in await firing(client)] == ["aa01"]
    everything = (await client.get("/api/v1/alerts?state=all", headers=AUTH)).json()["alerts"]
    gone = next(a for a in everything if a["fingerprint"] == "fb719eff0bd1f674")
    assert gone["status"] == "resolved" and gone["ends_at"].startswith("2026-11-22T01:25:00")


async def test_late_and_repeated_news_does_not_undo_later_news(client: httpx.AsyncClient) -> None:
    post = "/api/v1/alerts/alertmanager"
    first = alert("f1", starts="2026-11-22T01:00:00Z", upstream="a")
    done = alert("f1", "resolved", starts="2026-11-22T01:00:00Z", ends="2026-11-22T01:10:00Z")
    again = alert("f1", starts="2026-11-22T02:00:00Z", upstream="a")
    await client.post(post, json=notification(first), headers=AUTH)
    await client.post(post, json=notification(done, status="resolved"), headers=AUTH)
    # A retried "firing" of the episode that already resolved changes nothing.
    stale = await client.post(post, json=notification(first), headers=AUTH)
    assert stale.json() == {"received": 1, "changed": 0}
    assert await firing(client) == []
    # The same alert firing again later is a new episode.
    await client.post(post, json=notification(again), headers=AUTH)
    assert [a["starts_at"][:19] for a in await firing(client)] == ["2026-11-22T02:00:00"]
    # News of the earlier episode, arriving late, is ignored.
    late = await client.post(post, json=notification(done, status="resolved"), headers=AUTH)
    assert late.json()["changed"] == 0 and len(await firing(client)) == 1


async def test_most_severe_first(client: httpx.AsyncClient) -> None:
    warn = alert("w", starts="2026-11-22T01:00:00Z")
    warn["labels"]["severity"] = "warning"
    crit = alert("c", starts="2026-11-22T03:00:00Z")
    await client.post("/api/v1/alerts/alertmanager", json=notification(warn, crit), headers=AUTH)
    assert [a["fingerprint"] for a in await firing(client)] == ["c", "w"]


@pytest.mark.parametrize(
    ("mangle", "field"),
    [
        (lambda b: b["alerts"][0].pop("fingerprint"), "fingerprint"),
        (lambda b: b["alerts"][0].update(status="burning"), "status"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "startsAt"),
        (lambda b: b["alerts"][0].update(startsAt="2026-11-22T01:18:35"), "startsAt"),  # no offset
        (lambda b: b["alerts"][0].update(endsAt="2026-11-22T02:00:00"), "endsAt"),
        (lambda b: b.pop("alerts"), "alerts"),
    ],
)
async def test_a_body_that_is_not_a_webhook_is_refused_by_field(
    client: httpx.AsyncClient, mangle: Any, field: str
) -> None:
    body = notification(alert("x"))
    mangle(body)
    response = await client.post("/api/v1/alerts/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert field in response.json()["error"]["message"]
    assert await firing(client) == []


async def test_the_webhook_and_the_list_need_the_token(client: httpx.AsyncClient) -> None:
    body = notification(alert("x"))
    assert (await client.post("/api/v1/alerts/alertmanager", json=body)).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert (await client.get("/api/v1/alerts", headers=wrong)).status_code == 401
    assert await firing(client) == []


async def test_ready_and_metrics(client: httpx.AsyncClient) -> None:
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["store"]["ok"] is True
    metrics = (await client.get("/metrics")).text
    assert 'hoodrun_build_info{version="' in metrics and "process_start_time_seconds" in metrics

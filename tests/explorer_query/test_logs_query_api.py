"""The ``/logs/v1`` read routes in process (ASGI): real API keys on SQLite, real chDB rows.

A project's key reads its own project only; the admin token reads the one ``?project=`` names.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.api.logs_query import logs_query_router
from hoodrun.api.projects import project_scope
from hoodrun.config import Config
from hoodrun.explorer.query import iso
from hoodrun.explorer.requests import WITHHELD
from hoodrun.keys.service import KeyService
from hoodrun.keys.verifier import KeyVerifier
from hoodrun.store import Store
from hoodrun.telemetry.store import AnalyticsStore, ChdbStore, StoreError
from tests.explorer_query.support import at, insert_lines, insert_records, line, record

TOKEN = "logs-query-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DAY = {"from": iso(at(1)), "to": iso(at(2))}
ROUTES = (
    "/logs/v1/search",
    "/logs/v1/errors/top",
    "/logs/v1/stats/error-rate",
    "/logs/v1/stats/volume",
    "/logs/v1/stats/daily",
    "/logs/v1/requests",
    "/logs/v1/requests/ra1",
)


@dataclass
class Project:
    id: str
    org_id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    keys: KeyService
    analytics: ChdbStore
    a: Project
    b: Project
    browser: Project  # a key of A's project restricted to an origin
    browser_key_id: str

    @asynccontextmanager
    async def client(
        self, store: Callable[[], AnalyticsStore | None] | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        app = create_api_app(self.keys.config, self.keys, token=TOKEN)
        scope = project_scope(KeyVerifier(self.keys.lookup), TOKEN)
        app.include_router(logs_query_router(store or (lambda: self.analytics), scope))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            yield client


@pytest.fixture
async def world(
    analytics: ChdbStore,
    tmp_path: Path,
    sqlite_template: Path,
) -> AsyncIterator[World]:
    database = tmp_path / "hoodrun.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    async with Store(url) as store:
        keys = KeyService(store, Config(database_url=url))
        projects = []
        for org, name in (("acme", "web"), ("other", "app")):
            created = await keys.create(org=org, project=name, actor="test")
            record_ = created.record
            projects.append(Project(record_.project_id or "", record_.org_id, created.key))
        a, b = projects
        for p, tag in ((a, "a"), (b, "b")):
            where = {"project": p.id, "key_id": f"key_{tag}", "org_id": p.org_id}
            await insert_lines(
                analytics,
                [
                    line(at(1, 10), f"{tag}1", f"{tag} started", **where),
                    line(at(1, 10, 1), f"{tag}2", "Disk almost full", level="warn",
                         attributes={"env": "prod"}, **where),
                    line(at(1, 10, 2), f"{tag}3", "Connection refused by db-1", level="error",
                         fingerprint="f1", **where),
                    line(at(1, 10, 6), f"{tag}4", "connection refused by db-2", level="fatal",
                         fingerprint="f1", attributes={"env": "prod"}, **where),
                ],
            )  # fmt: skip
            ids = {"project_id": p.id, "org_id": p.org_id, "key_id": f"key_{tag}"}
            await insert_records(
                analytics,
                [
                    record(at(1, 10), f"r{tag}1", **ids),
                    record(at(1, 10, 1), f"r{tag}2", "eth_getLogs", error_code=-32000, **ids),
                ],
            )
        browser = await keys.create(
            org="acme", project="web", origins=["https://app.acme.test"], actor="test"
        )
        # A project captures payloads: one request made with the browser key, one server-side.
        ids = {"project_id": a.id, "org_id": a.org_id}
        await insert_records(
            analytics,
            [
                record(at(1, 11), "rbrowser", key_id=browser.id, excerpts=(("[1]", '"0x1"'),), **ids),
                record(at(1, 11, 1), "rserver", key_id="key_a",
                       excerpts=(('[{"to":"0xaa","data":"0xfeed"}]', '"0xbeef"'),), **ids),
            ],
        )  # fmt: skip
        yield World(keys, analytics, a, b, Project(a.id, a.org_id, browser.key), browser.id)


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


async def search_ids(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[str]:
    response = await client.get("/logs/v1/search", params={**DAY, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["rows"]]


# --- who sees what ------------------------------------------------------------------------------


async def test_a_key_reads_its_own_project_only(world: World) -> None:
    async with world.client() as client:
        assert await search_ids(client, world.a.auth) == ["a4", "a3", "a2", "a1"]
        assert await search_ids(client, world.b.auth) == ["b4", "b3", "b2", "b1"]
        assert await search_ids(client, {"X-Api-Key": world.a.key}) == ["a4", "a3", "a2", "a1"]
        # Naming its own project is allowed; naming another is refused on every route.
        assert await search_ids(client, world.a.auth, project=world.a.id) == [
            "a4",
            "a3",
            "a2",
            "a1",
        ]
        for route in ROUTES:
            refused = await client.get(route, params={"project": world.b.id}, headers=world.a.auth)
            assert "own project" in error(refused, 403, "forbidden"), route
        # B's request does not exist for A.
        other = await client.get("/logs/v1/requests/rb1", headers=world.a.auth, params=DAY)
        assert "no request 'rb1'" in error(other, 404, "not_found")
        mine = await client.get("/logs/v1/requests/ra1", headers=world.a.auth)
        assert mine.status_code == 200 and mine.json()["project"] == world.a.id


async def test_the_admin_token_names_the_project(world: World) -> None:
    async with world.client() as client:
        assert await search_ids(client, ADMIN, project=world.b.id) == ["b4", "b3", "b2", "b1"]
        detail = await client.get(
            "/logs/v1/requests/rb1", params={"project": world.b.id}, headers=ADMIN
        )
        assert detail.status_code == 200 and [c["method"] for c in detail.json()["calls"]] == [
            "eth_call"
        ]
        missing = await client.get("/logs/v1/search", headers=ADMIN)
        assert "?project=" in error(missing, 400, "project_required")


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_needs_a_key(world: World, route: str) -> None:
    async with world.client() as client:
        error(await client.get(route), 401, "unauthorized")
        bad = await client.get(route, headers={"Authorization": "Bearer hr_live_nope"})
        assert bad.status_code == 401
        ok = await client.get(route, headers=world.a.auth)
        assert ok.status_code == 200, ok.text


# --- the routes ---------------------------------------------------------------------------------


async def test_log_routes(world: World) -> None:
    auth = world.a.auth
    async with world.client() as client:
        top = (await client.get("/logs/v1/errors/top", params=DAY, headers=auth)).json()
        assert [(r["fingerprint"], r["count"], r["fatal"]) for r in top["rows"]] == [("f1", 2, 1)]
        assert top["rows"][0]["first_seen"] == iso(at(1, 10, 2))
        assert top["rows"][0]["last_seen"] == iso(at(1, 10, 6))
        assert top["rows"][0]["sample"] == "connection refused by db-2"

        span = {"from": iso(at(1, 10)), "to": iso(at(1, 10, 10))}
        rate = (await client.get("/logs/v1/stats/error-rate", params=span, headers=auth)).json()
        assert [(r["window"], r["total"], r["errors"], r["rate"]) for r in rate["rows"]] == [
            (iso(at(1, 10)), 3, 1, 1 / 3),
            (iso(at(1, 10, 5)), 1, 1, 1.0),
        ]
        volume = (await client.get("/logs/v1/stats/volume", params=DAY, headers=auth)).json()
        assert {r["level"]: r["lines"] for r in volume["rows"]} == {
            "trace": 0, "debug": 0, "info": 1, "warn": 1, "error": 1, "fatal": 1,
        }  # fmt: skip
        daily = await client.get(
            "/logs/v1/stats/daily", params={"from": iso(at(0)), "to": iso(at(2))}, headers=auth
        )
        assert [r["lines"] for r in daily.json()["rows"]] == [0, 4]
        assert daily.json()["rows"][1]["day"] == at(1).date().isoformat()


async def test_log_filters_through_the_api(world: World) -> None:
    auth = world.a.auth
    async with world.client() as client:
        assert await search_ids(client, auth, level="warn,fatal") == ["a4", "a2"]
        assert await search_ids(client, auth, level=">=error") == ["a4", "a3"]
        literal = await client.get(
            f"/logs/v1/search?level>=error&from={DAY['from']}&to={DAY['to']}", headers=auth
        )
        assert [row["id"] for row in literal.json()["rows"]] == ["a4", "a3"]
        assert await search_ids(client, auth, **{"attr.env": "prod"}) == ["a4", "a2"]
        assert await search_ids(client, auth, **{"attr.env": "prod", "level": "warn"}) == ["a2"]
        assert await search_ids(client, auth, q="REFUSED") == ["a4", "a3"]
        assert await search_ids(client, auth, q='"refused by db-1"') == ["a3"]
        assert await search_ids(client, auth, q="b") == []  # b's words stay in b
        top = await client.get(
            "/logs/v1/errors/top", params={**DAY, "attr.env": "prod"}, headers=auth
        )
        assert [(r["fingerprint"], r["count"]) for r in top.json()["rows"]] == [("f1", 1)]


async def test_paging_through_the_api(world: World) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {**DAY, "limit": 3}
    async with world.client() as client:
        while True:
            page = (await client.get("/logs/v1/search", params=params, headers=world.a.auth)).json()
            seen += [row["id"] for row in page["rows"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert seen == ["a4", "a3", "a2", "a1"]
        first = await client.get(
            "/logs/v1/requests", params={**DAY, "limit": 1}, headers=world.a.auth
        )
        cursor = first.json()["next_cursor"]
        rest = await client.get(
            "/logs/v1/requests", params={**DAY, "cursor": cursor}, headers=world.a.auth
        )
        ids = [r["request_id"] for r in first.json()["rows"] + rest.json()["rows"]]
        assert ids == ["rserver", "rbrowser", "ra2", "ra1"] and rest.json()["next_cursor"] is None


async def test_request_routes(world: World) -> None:
    async with world.client() as client:
        found = await client.get(
            "/logs/v1/requests",
            params={**DAY, "outcome": "rpc_error", "error_code": -32000},
            headers=world.a.auth,
        )
        rows = found.json()["rows"]
        assert [(r["request_id"], r["method"], r["key_id"]) for r in rows] == [
            ("ra2", "eth_getLogs", "key_a")
        ]
        detail = (await client.get("/logs/v1/requests/ra2", headers=world.a.auth)).json()
        assert detail["request_id"] == "ra2" and detail["ts"] == iso(at(1, 10, 1))
        assert [c["outcome"] for c in detail["calls"]] == ["rpc_error"]
        assert not {"params", "response", "result"} & {*detail, *detail["calls"][0]}
        narrowed = await client.get(
            "/logs/v1/requests/ra2", params={"from": iso(at(2))}, headers=world.a.auth
        )
        error(narrowed, 404, "not_found")


async def test_a_browser_key_sees_no_payloads_no_request_list_and_no_logs(world: World) -> None:
    """A key with origins is in public JavaScript: whoever loads the page holds it."""
    async with world.client() as client:
        # The list would show every call of the project, server-side ones too.
        listed = await client.get("/logs/v1/requests", params=DAY, headers=world.browser.auth)
        message = error(listed, 403, "browser_key")
        assert "browser keys (keys with origins)" in message and "server key" in message
        # Its own request: the record, without the payloads, and why.
        own = await client.get("/logs/v1/requests/rbrowser", headers=world.browser.auth)
        assert own.status_code == 200, own.text
        detail = own.json()
        assert detail["key_id"] == world.browser_key_id
        assert detail["payloads_note"] == WITHHELD
        assert WITHHELD == (
            "payloads are not shown to browser keys (keys with origins); use a server key or "
            "the portal"
        )
        [call] = detail["calls"]
        assert call["params_excerpt"] is None and call["response_excerpt"] is None
        # A request made with another key of the project (a server's): not found.
        server = await client.get("/logs/v1/requests/rserver", headers=world.browser.auth)
        assert "no request 'rserver'" in error(server, 404, "not_found")
        assert "0xfeed" not in server.text
        # The project's server key, and the admin token, see both with their payloads.
        for headers, params in ((world.a.auth, {}), (ADMIN, {"project": world.a.id})):
            full = await client.get("/logs/v1/requests/rserver", params=params, headers=headers)
            assert full.json()["payloads_note"] is None
            assert full.json()["calls"][0]["params_excerpt"] == '[{"to":"0xaa","data":"0xfeed"}]'
            theirs = await client.get("/logs/v1/requests/rbrowser", params=params, headers=headers)
            assert theirs.json()["calls"][0]["response_excerpt"] == '"0x1"'
            rows = await client.get("/logs/v1/requests", params={**DAY, **params}, headers=headers)
            assert {"rbrowser", "rserver"} <= {r["request_id"] for r in rows.json()["rows"]}
        # Nor the project's logs: every query refuses it (a page may still send its logs).
        for route in ("search", "errors/top", "stats/error-rate", "stats/volume", "stats/daily"):
            refused = await client.get(f"/logs/v1/{route}", params=DAY, headers=world.browser.auth)
            assert "browser keys" in error(refused, 403, "browser_key"), route
        assert await search_ids(client, world.a.auth) == ["a4", "a3", "a2", "a1"]


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "params", "says"),
    [
        ("/logs/v1/search", {"level": "loud"}, "'loud' is not a level"),
        ("/logs/v1/search", {"limit": 5000}, "limit must be between 1 and 1000"),
        ("/logs/v1/search", {"cursor": "garbage"}, "cursor"),
        ("/logs/v1/search", {"from": "yesterday"}, "from: 'yesterday' is not a time"),
        ("/logs/v1/search", {"from": "1h", "to": "2h"}, "must be before"),
        ("/logs/v1/search", {"q": '"open'}, "closing quote"),
        ("/logs/v1/search", {"attr.": "x"}, "attr.KEY=VALUE"),
        ("/logs/v1/errors/top", {"level": "info"}, "error and fatal"),
        ("/logs/v1/stats/error-rate", {"level": "error"}, "every level"),
        ("/logs/v1/stats/error-rate", {"from": "60d"}, "at most 10000"),
        ("/logs/v1/requests", {"limit": 0}, "limit must be between"),
        ("/logs/v1/requests", {"cursor": "e30"}, "cursor"),
        ("/logs/v1/requests", {"latency_above": -5}, "latency_above"),
    ],
)
async def test_bad_parameters_are_400(
    world: World, route: str, params: dict[str, Any], says: str
) -> None:
    async with world.client() as client:
        response = await client.get(route, params=params, headers=world.a.auth)
        assert says in error(response, 400, "invalid_request")


async def test_malformed_numbers_are_422(world: World) -> None:
    async with world.client() as client:
        response = await client.get("/logs/v1/search?limit=ten", headers=world.a.auth)
        error(response, 422, "invalid_request")


class BrokenStore:
    database = "broken"

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        raise StoreError("connection refused")


async def test_without_the_analytics_store_every_route_is_503(world: World) -> None:
    async with world.client(lambda: None) as client:
        for route in ROUTES:
            response = await client.get(route, headers=world.a.auth)
            assert (
                error(response, 503, "analytics_unavailable") == "the analytics store is not open"
            )
    broken: Any = BrokenStore()
    async with world.client(lambda: broken) as client:
        for route in ROUTES:
            response = await client.get(route, headers=world.a.auth)
            assert "connection refused" in error(response, 503, "analytics_unavailable"), route


async def test_the_schema_lists_the_routes(world: World) -> None:
    async with world.client() as client:
        spec = (await client.get("/admin/openapi.json")).json()
    assert {route.replace("ra1", "{request_id}") for route in ROUTES} <= set(spec["paths"])
    search = spec["paths"]["/logs/v1/search"]["get"]
    assert {p["name"] for p in search["parameters"]} >= {"from", "to", "level", "q", "cursor"}
    assert {"LogSearchOut", "TopErrorsOut", "RequestDetailOut"} <= set(
        spec["components"]["schemas"]
    )

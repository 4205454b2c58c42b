"""``PATCH /admin/v1/orgs/{org}/projects/{project_id}``: a project's payload capture, in process
(ASGI) over the real store on SQLite and PostgreSQL. Who may call it: tests/api/test_roles.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from hoodrun.api.app import create_api_app
from hoodrun.config import Config, load_config
from hoodrun.keys.events import LocalKeyEvents
from hoodrun.keys.secret import hash_key
from hoodrun.keys.service import KeyService
from hoodrun.store import Store

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "project-settings-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "hoodrun.example.yaml", env={})


@pytest.fixture
async def setup(
    store: Store, config: Config
) -> AsyncIterator[tuple[httpx.AsyncClient, KeyService, list[str]]]:
    bus, announced = LocalKeyEvents(), list[str]()
    bus.subscribe(announced.append)
    keys = KeyService(store, config, bus)
    app = create_api_app(config, keys, token=TOKEN)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield http, keys, announced


async def test_patch_turns_capture_on_and_tells_the_gateways(
    setup: tuple[httpx.AsyncClient, KeyService, list[str]],
) -> None:
    http, keys, announced = setup
    created = await keys.create(org="acme", project="web", actor="test")
    org, project = created.record.org_id, created.record.project_id
    path = f"/admin/v1/orgs/{org}/projects/{project}"
    announced.clear()
    listed = (await http.get(f"/admin/v1/orgs/{org}/projects", headers=AUTH)).json()
    assert listed["projects"][0] | {"created_at": None} == {
        "id": project,
        "org_id": org,
        "name": "web",
        "created_at": None,
        "capture_payloads": False,
        "capture_bytes": 2048,
    }
    answer = await http.patch(path, json={"capture_payloads": True}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["capture_payloads"], answer.json()["capture_bytes"]) == (True, 2048)
    assert announced == [hash_key(created.key)]  # the gateways read the key again
    found = await keys.lookup(hash_key(created.key))
    assert found is not None and found.capture_bytes == 2048
    answer = await http.patch(path, json={"capture_bytes": 16384}, headers=AUTH)
    assert answer.json()["capture_bytes"] == 16384 and answer.json()["capture_payloads"] is True
    audit = (await http.get("/admin/v1/audit", params={"target_id": project}, headers=AUTH)).json()
    assert [e["action"] for e in audit["entries"]].count("project.update") == 2


async def test_patch_refuses_bad_bodies_and_other_orgs_projects(
    setup: tuple[httpx.AsyncClient, KeyService, list[str]],
) -> None:
    http, keys, _ = setup
    mine = await keys.create(org="acme", project="web", actor="test")
    theirs = await keys.create(org="other", project="web", actor="test")
    org = mine.record.org_id
    path = f"/admin/v1/orgs/{org}/projects/{mine.record.project_id}"
    for body in (
        {"capture_bytes": 16385},
        {"capture_bytes": 10},
        {"capture_payloads": True, "name": "x"},
    ):
        answer = await http.patch(path, json=body, headers=AUTH)
        assert answer.status_code == 422, (body, answer.text)
    empty = await http.patch(path, json={}, headers=AUTH)
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "nothing_to_change"
    # Another org's project, named under this org: not found (and not changed).
    other = f"/admin/v1/orgs/{org}/projects/{theirs.record.project_id}"
    answer = await http.patch(other, json={"capture_payloads": True}, headers=AUTH)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "project_not_found"
    found = await keys.lookup(hash_key(theirs.key))
    assert found is not None and found.capture_bytes is None

"""The platform's routes of the admin API: fleet, chains, cordons, jobs and their permissions;
the OpenAPI schema names every route's models."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from hoodrun.ops.fleet import FleetReporter
from hoodrun.store.tables import audit_log
from tests.control.support import Control

GATEWAY_STATUS: dict[str, Any] = {
    "chains": {
        "eth": {
            "best_head": 120,
            "cordoned": ["eth-1"],
            "upstreams": [
                {"name": "eth-0", "healthy": True, "reason": None, "cordoned": False, "head": 120,
                 "lag": 0, "peers": 12, "breaker_state": "closed", "latency_ms": 3.5,
                 "error_rate": 0.0, "inflight": 1, "url": "http://127.0.0.1:9/…"},
                {"name": "eth-1", "healthy": True, "reason": None, "cordoned": True, "head": 118,
                 "lag": 2, "peers": 9, "breaker_state": "closed", "latency_ms": 4.0,
                 "error_rate": 0.01, "inflight": 0, "url": "http://127.0.0.1:9"},
            ],
        }
    }
}  # fmt: skip


async def test_fleet_and_chains(control: Control) -> None:
    admin = control.admin()
    async with (
        FleetReporter(control.store, "gateway", lambda: GATEWAY_STATUS, interval=60.0) as gw,
        FleetReporter(control.store, "api", dict, interval=60.0),
    ):
        fleet = (await admin.get("/admin/v1/fleet")).json()
        assert [(i["role"], i["state"]) for i in fleet["instances"]] == [
            ("api", "up"), ("gateway", "up"),
        ]  # fmt: skip
        gateway = next(i for i in fleet["instances"] if i["role"] == "gateway")
        assert gateway["id"] == gw.id and gateway["interval_seconds"] == 60.0
        assert gateway["status"] == GATEWAY_STATUS

        cordoned = await admin.post(
            "/admin/v1/chains/eth/upstreams/eth-1/cordon", json={"reason": "noisy neighbour"}
        )
        assert cordoned.status_code == 200, cordoned.text
        body = cordoned.json()
        assert body["cordoned"] and body["changed"] and body["cordon"]["actor"] == "admin-token"
        chains = (await admin.get("/admin/v1/chains")).json()["chains"]
    assert [c["name"] for c in chains] == ["eth", "base"]
    eth = chains[0]
    assert eth["chain_id"] == 1 and eth["best_head"] == 120
    e0, e1 = eth["upstreams"]
    assert e0["url"] == "http://127.0.0.1:9/…"  # the provider key is never shown
    assert (e0["cordoned"], e0["status"]["healthy"], e0["status"]["head"]) == (False, True, 120)
    assert e1["cordoned"] and e1["cordon"]["reason"] == "noisy neighbour"
    assert e1["status"]["cordoned"] and (e1["gateways"], e1["gateways_applied"]) == (1, 1)
    assert e1["observed_by"] == gw.id
    base = chains[1]["upstreams"][0]
    assert base["status"] is None and base["gateways"] == 0


async def test_cordon_routes(control: Control) -> None:
    admin = control.admin()
    path = "/admin/v1/chains/eth/upstreams/eth-0"
    first = await admin.post(f"{path}/cordon", json={"reason": "disk"})
    again = await admin.post(f"{path}/cordon", json={"reason": "disk"})
    assert first.json()["changed"] and not again.json()["changed"]
    lifted = await admin.post(f"{path}/uncordon")
    assert lifted.json() == {
        "chain": "eth", "upstream": "eth-0", "cordoned": False, "cordon": None, "changed": True,
    }  # fmt: skip
    assert not (await admin.post(f"{path}/uncordon")).json()["changed"]

    unknown = await admin.post("/admin/v1/chains/eth/upstreams/nope/cordon", json={"reason": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "code": "not_found", "message": "chain 'eth' has no upstream 'nope' (upstreams: eth-0, eth-1)",
    }  # fmt: skip
    assert (await admin.post("/admin/v1/chains/sol/upstreams/x/uncordon")).status_code == 404
    for body in ({}, {"reason": ""}, {"reason": "x", "extra": 1}, {"reason": "x" * 501}):
        answer = await admin.post(f"{path}/cordon", json=body)
        assert answer.status_code == 422, body
    blank = await admin.post(f"{path}/cordon", json={"reason": "   "})
    assert blank.status_code == 400 and blank.json()["error"]["code"] == "invalid_request"

    async with control.store.connect() as conn:
        rows = (
            (
                await conn.execute(
                    select(
                        audit_log.c.action, audit_log.c.ip, audit_log.c.before, audit_log.c.after
                    )
                    .where(audit_log.c.target_type == "upstream")
                    .order_by(audit_log.c.id)
                )
            )
            .mappings()
            .all()
        )
    # One row per change (none for the no-ops), with the client's address.
    assert [(r["action"], r["ip"]) for r in rows] == [
        ("upstream.cordon", "203.0.113.7"), ("upstream.uncordon", "203.0.113.7"),
    ]  # fmt: skip
    assert rows[0]["before"] is None and rows[0]["after"]["reason"] == "disk"
    assert rows[1]["before"]["reason"] == "disk" and rows[1]["after"] is None


async def test_job_routes(control: Control) -> None:
    queue = control.ctx.jobs
    assert queue is not None
    done = await queue.enqueue("fx-fetch", {"day": "2030-01-01"})
    dead = await queue.enqueue("invoice-generate", {"invoice_id": "inv_1"})
    [claimed] = await queue.claim("w1", kinds=["invoice-generate"])
    await queue.fail(claimed, "w1", "boom", permanent=True)
    admin = control.admin()

    listed = (await admin.get("/admin/v1/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == [dead.id, done.id]
    only = (await admin.get("/admin/v1/jobs", params={"status": "dead"})).json()["jobs"]
    assert [(j["id"], j["last_error"]) for j in only] == [(dead.id, "boom")]
    kind = (await admin.get("/admin/v1/jobs", params={"kind": "fx-fetch", "limit": 1})).json()
    assert [j["id"] for j in kind["jobs"]] == [done.id]
    assert (await admin.get("/admin/v1/jobs", params={"status": "lost"})).status_code == 422
    stats = (await admin.get("/admin/v1/jobs/stats")).json()["kinds"]
    assert stats["invoice-generate"]["dead"] == 1 and stats["fx-fetch"]["queued"] == 1

    one = (await admin.get(f"/admin/v1/jobs/{dead.id}")).json()
    assert one["payload"] == {"invoice_id": "inv_1"} and one["status"] == "dead"
    assert (await admin.get("/admin/v1/jobs/job_nope")).status_code == 404

    retried = await admin.post(f"/admin/v1/jobs/{dead.id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    conflict = await admin.post(f"/admin/v1/jobs/{dead.id}/retry")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "job_state"
    cancelled = await admin.post(f"/admin/v1/jobs/{dead.id}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert (await admin.post("/admin/v1/jobs/job_nope/cancel")).status_code == 404

    async with control.store.connect() as conn:
        actions = (
            await conn.execute(
                select(audit_log.c.action, audit_log.c.actor)
                .where(audit_log.c.target_id == dead.id)
                .order_by(audit_log.c.id)
            )
        ).all()
    assert [tuple(a) for a in actions] == [
        ("job.retry", "admin-token"), ("job.cancel", "admin-token"),
    ]  # fmt: skip


ROUTES: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/admin/v1/fleet", "platform:read", None),
    ("GET", "/admin/v1/chains", "upstreams:read", None),
    ("POST", "/admin/v1/chains/eth/upstreams/eth-0/cordon", "upstreams:write", {"reason": "x"}),
    ("POST", "/admin/v1/chains/eth/upstreams/eth-0/uncordon", "upstreams:write", None),
    ("GET", "/admin/v1/jobs", "jobs:read", None),
    ("GET", "/admin/v1/jobs/stats", "jobs:read", None),
    ("GET", "/admin/v1/jobs/job_nope", "jobs:read", None),
    ("POST", "/admin/v1/jobs/job_nope/retry", "jobs:write", None),
    ("POST", "/admin/v1/jobs/job_nope/cancel", "jobs:write", None),
    ("GET", "/admin/v1/slo", "platform:read", None),
]


async def test_permissions_of_every_route(control: Control) -> None:
    from hoodrun.identity.roles import ROLE_PERMISSIONS

    people = {role: await control.bearer(f"{role}@example.com", role) for role in ROLE_PERMISSIONS}
    customer = await control.bearer("customer@example.com", None)
    nobody = control.client()
    for method, path, permission, body in ROUTES:
        answer = await nobody.request(method, path, json=body)
        assert answer.status_code == 401, (method, path)
        answer = await customer.request(method, path, json=body)
        assert answer.status_code == 403, (method, path)
        for role, client in people.items():
            answer = await client.request(method, path, json=body)
            allowed = permission in ROLE_PERMISSIONS[role]
            # Allowed: anything but 401/403 (404 for the job that is not there, 503 without
            # an analytics store).
            assert (answer.status_code not in (401, 403)) == allowed, (
                role,
                method,
                path,
                answer.text,
            )


def test_every_route_declares_its_permission(control: Control) -> None:
    from fastapi.routing import APIRoute

    def walk(routes: list[Any]) -> list[APIRoute]:
        found: list[APIRoute] = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            inner = getattr(route, "original_router", None)  # an included router
            if inner is not None:
                found += walk(inner.routes)
        return found

    prefixes = ("/admin/v1/fleet", "/admin/v1/chains", "/admin/v1/jobs", "/admin/v1/slo")
    mine = [r for r in walk(control.app.routes) if r.path.startswith(prefixes)]
    assert len(mine) == len(ROUTES)
    for route in mine:
        permissions = [
            getattr(dep.call, "permission", None) for dep in route.dependant.dependencies
        ]
        assert any(permissions), route.path


def test_openapi_names_the_models(control: Control) -> None:
    schema = control.app.openapi()
    paths = schema["paths"]
    ok = paths["/admin/v1/chains"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/ChainsOut"}
    cordon = paths["/admin/v1/chains/{chain}/upstreams/{upstream}/cordon"]["post"]
    assert cordon["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CordonIn"
    }
    assert schema["components"]["schemas"]["CordonIn"]["additionalProperties"] is False
    for path in ("/admin/v1/fleet", "/admin/v1/jobs", "/admin/v1/slo"):
        assert "403" in paths[path]["get"]["responses"]


async def test_slo_without_analytics_is_503(control: Control) -> None:
    answer = await control.admin().get("/admin/v1/slo")
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "analytics_unavailable"
    for window in ("0h", "31d", "1y", "abc"):
        bad = await control.admin().get("/admin/v1/slo", params={"window": window})
        assert bad.status_code in (400, 422), window


@pytest.mark.parametrize("window", ["1m", "90m", "30d"])
def test_windows(window: str) -> None:
    from hoodrun.ops.slo import parse_window

    assert parse_window(window).total_seconds() > 0

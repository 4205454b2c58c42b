"""Least privilege: every route of the API, called by every kind of caller, is allowed or denied
as the table below says, and every change an allowed caller makes is in the audit log.

The table is written out by hand (it is the specification, not a copy of
``hoodrun.identity.roles``). Callers: the admin token; an operator with each platform role
(``p:viewer`` ...); a member of the org the route is about with each role (``o:viewer`` ...);
and ``stranger``, the admin of another org. A route that is in the app and not in the table
fails the test, so no route is added without deciding who may call it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from hoodrun.api.app import create_api_app
from hoodrun.billing.invoices import InvoiceBook
from hoodrun.billing.ledger import Ledger
from hoodrun.config import Config
from hoodrun.identity import IdentityService
from hoodrun.jobs import JobQueue
from hoodrun.keys.service import KeyService
from hoodrun.metering.entitlements import OrgEntitlements
from hoodrun.metering.meters import MeterService
from hoodrun.metering.store import ContractBook, CreditBook
from hoodrun.ops.alerts import AlertBook
from hoodrun.platform import _plan_named
from hoodrun.store import Store
from hoodrun.store.tables import audit_log
from hoodrun.telemetry.reporting import Reports
from hoodrun.telemetry.service import compute_units
from hoodrun.webhooks import WebhookBook
from tests._stores import FakeClock
from tests.billing.test_invoices import make_snapshot

TOKEN = "roles-admin-token"
PASSWORD = "a long enough password"
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
CONFIG = Config.model_validate(
    {
        "auth": {
            "jwt_secret": "roles-test-secret-of-32-bytes-at-least!",
            # Cheap hashes: this test logs in many people and is about permissions.
            "argon2_time_cost": 1,
            "argon2_memory_kib": 8192,
            "argon2_parallelism": 1,
        },
        "chains": [
            {
                "name": "eth",
                "chain_id": 1,
                "upstreams": [{"name": "node-a", "url": "http://127.0.0.1:9"}],
            }
        ],
    }
)

PLATFORM = ("p:viewer", "p:ops", "p:billing", "p:admin")
MEMBERS = ("o:viewer", "o:ops", "o:billing", "o:admin")
CALLERS = ("token", *PLATFORM, *MEMBERS, "stranger")


def allowed(spec: str) -> frozenset[str]:
    """``"token p:admin o:ops"`` → those callers; the admin token is always among them."""
    found = frozenset(spec.split()) | {"token"}
    unknown = found - set(CALLERS)
    assert not unknown, unknown
    return found


ADMINS = "p:admin"
EVERYONE = " ".join(CALLERS)
PLATFORM_READ = "p:viewer p:ops p:billing p:admin"
ORG_READ = f"{PLATFORM_READ} o:viewer o:ops o:billing o:admin"
MONEY_READ = "p:billing p:admin o:billing o:admin"
MONEY_WRITE = MONEY_READ  # a plan change within the org's contract
OPERATOR_MONEY = "p:billing p:admin"  # terms, credits, refunds, a plan without a contract
OPS_WRITE_ORG = "p:ops p:admin o:ops o:admin"
ORG_ADMIN = "p:admin o:admin"


@dataclass
class World:
    http: httpx.AsyncClient
    store: Store
    tokens: dict[str, str]
    ids: dict[str, str]


# (method, route) -> (who may call it, how to call it: path and JSON body from the ids).
Call = Callable[[dict[str, str]], tuple[str, Any]]
TABLE: dict[tuple[str, str], tuple[str, Call]] = {
    # keys
    ("POST", "/admin/v1/keys"): (
        OPS_WRITE_ORG,
        lambda i: ("/admin/v1/keys", {"org": i["org_name"], "name": "k"}),
    ),
    ("GET", "/admin/v1/keys"): (ORG_READ, lambda i: (f"/admin/v1/keys?org={i['org']}", None)),
    ("GET", "/admin/v1/keys/{key_id}"): (ORG_READ, lambda i: (f"/admin/v1/keys/{i['key']}", None)),
    ("PATCH", "/admin/v1/keys/{key_id}"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/keys/{i['key']}", {"rps": 7}),
    ),
    ("POST", "/admin/v1/keys/{key_id}/disable"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/keys/{i['key']}/disable", None),
    ),
    ("POST", "/admin/v1/keys/{key_id}/enable"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/keys/{i['key']}/enable", None),
    ),
    ("POST", "/admin/v1/keys/{key_id}/rotate"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/keys/{i['spare_key']}/rotate", {"grace_seconds": 60}),
    ),
    ("POST", "/admin/v1/keys/{key_id}/revoke"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/keys/{i['spare_key']}/revoke", None),
    ),
    ("GET", "/admin/v1/audit"): (ADMINS, lambda i: ("/admin/v1/audit?limit=5", None)),
    # orgs, projects, members, users, plans
    ("GET", "/admin/v1/orgs"): (EVERYONE, lambda i: ("/admin/v1/orgs", None)),
    ("POST", "/admin/v1/orgs"): (ADMINS, lambda i: ("/admin/v1/orgs", {"name": f"n-{i['n']}"})),
    ("GET", "/admin/v1/orgs/{org}"): (ORG_READ, lambda i: (f"/admin/v1/orgs/{i['org']}", None)),
    ("PUT", "/admin/v1/orgs/{org}/plan"): (
        OPERATOR_MONEY,
        lambda i: (f"/admin/v1/orgs/{i['org']}/plan", {"plan": "pro"}),
    ),
    ("GET", "/admin/v1/orgs/{org}/projects"): (
        ORG_READ,
        lambda i: (f"/admin/v1/orgs/{i['org']}/projects", None),
    ),
    ("POST", "/admin/v1/orgs/{org}/projects"): (
        ORG_ADMIN,
        lambda i: (f"/admin/v1/orgs/{i['org']}/projects", {"name": f"p-{i['n']}"}),
    ),
    ("PATCH", "/admin/v1/orgs/{org}/projects/{project_id}"): (
        ORG_ADMIN,
        lambda i: (
            f"/admin/v1/orgs/{i['org']}/projects/{i['project']}",
            {"capture_payloads": i["n"] != "", "capture_bytes": 1000 + int(i["n"] or 0)},
        ),
    ),
    ("GET", "/admin/v1/orgs/{org}/members"): (
        ORG_READ,
        lambda i: (f"/admin/v1/orgs/{i['org']}/members", None),
    ),
    ("POST", "/admin/v1/orgs/{org}/members"): (
        ORG_ADMIN,
        lambda i: (
            f"/admin/v1/orgs/{i['org']}/members",
            {"email": f"new-{i['n']}@example.com", "role": "viewer"},
        ),
    ),
    ("PUT", "/admin/v1/orgs/{org}/members/{user_id}"): (
        ORG_ADMIN,
        lambda i: (f"/admin/v1/orgs/{i['org']}/members/{i['spare_user']}", {"role": "ops"}),
    ),
    ("DELETE", "/admin/v1/orgs/{org}/members/{user_id}"): (
        ORG_ADMIN,
        lambda i: (f"/admin/v1/orgs/{i['org']}/members/{i['spare_user']}", None),
    ),
    ("GET", "/admin/v1/users"): (PLATFORM_READ, lambda i: ("/admin/v1/users", None)),
    ("GET", "/admin/v1/users/{user_id}"): (
        PLATFORM_READ,
        lambda i: (f"/admin/v1/users/{i['spare_user']}", None),
    ),
    ("PUT", "/admin/v1/users/{user_id}/platform-role"): (
        ADMINS,
        lambda i: (f"/admin/v1/users/{i['spare_user']}/platform-role", {"role": "viewer"}),
    ),
    ("GET", "/admin/v1/plans"): (EVERYONE, lambda i: ("/admin/v1/plans", None)),
    # contracts and credits
    ("POST", "/admin/v1/orgs/{org}/contract"): (
        OPERATOR_MONEY,
        lambda i: (f"/admin/v1/orgs/{i['org']}/contract", {"plan": "pro", "currency": "USD"}),
    ),
    ("POST", "/admin/v1/orgs/{org}/contract/plan"): (
        MONEY_WRITE,
        lambda i: (f"/admin/v1/orgs/{i['org']}/contract/plan", {"plan": "enterprise"}),
    ),
    ("GET", "/admin/v1/orgs/{org}/contracts"): (
        MONEY_READ,
        lambda i: (f"/admin/v1/orgs/{i['org']}/contracts", None),
    ),
    ("POST", "/admin/v1/orgs/{org}/credits"): (
        OPERATOR_MONEY,
        lambda i: (
            f"/admin/v1/orgs/{i['org']}/credits",
            {"kind": "promotional", "amount": "5", "currency": "USD"},
        ),
    ),
    ("GET", "/admin/v1/orgs/{org}/credits"): (
        MONEY_READ,
        lambda i: (f"/admin/v1/orgs/{i['org']}/credits", None),
    ),
    # invoices and the period close
    ("GET", "/admin/v1/invoices"): (
        MONEY_READ,
        lambda i: (f"/admin/v1/invoices?org={i['org']}", None),
    ),
    ("GET", "/admin/v1/invoices/{invoice_id}"): (
        MONEY_READ,
        lambda i: (f"/admin/v1/invoices/{i['invoice']}", None),
    ),
    ("GET", "/admin/v1/invoices/{invoice_id}/document.html"): (
        MONEY_READ,
        lambda i: (f"/admin/v1/invoices/{i['invoice']}/document.html", None),
    ),
    ("GET", "/admin/v1/invoices/{invoice_id}/document.pdf"): (
        MONEY_READ,
        lambda i: (f"/admin/v1/invoices/{i['invoice']}/document.pdf", None),
    ),
    ("POST", "/admin/v1/invoices/{invoice_id}/refunds"): (
        OPERATOR_MONEY,
        lambda i: (
            f"/admin/v1/invoices/{i['invoice']}/refunds",
            {"amount": "1.00", "reason": "requested_by_customer"},
        ),
    ),
    ("POST", "/admin/v1/billing/close"): (
        "p:billing p:admin",
        lambda i: ("/admin/v1/billing/close", {"period": "2026-10"}),
    ),
    # webhooks
    ("POST", "/admin/v1/orgs/{org}/webhooks"): (
        OPS_WRITE_ORG,
        lambda i: (
            f"/admin/v1/orgs/{i['org']}/webhooks",
            # A public address written out: members' endpoints must be public, and no DNS here.
            {"url": "https://1.1.1.1/hook", "events": ["key.created"]},
        ),
    ),
    ("GET", "/admin/v1/orgs/{org}/webhooks"): (
        ORG_READ,
        lambda i: (f"/admin/v1/orgs/{i['org']}/webhooks", None),
    ),
    ("DELETE", "/admin/v1/orgs/{org}/webhooks/{endpoint_id}"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/orgs/{i['org']}/webhooks/{i['spare_endpoint']}", None),
    ),
    ("GET", "/admin/v1/webhooks/{endpoint_id}/deliveries"): (
        ORG_READ,
        lambda i: (f"/admin/v1/webhooks/{i['endpoint']}/deliveries", None),
    ),
    ("POST", "/admin/v1/webhook-deliveries/{delivery_id}/replay"): (
        OPS_WRITE_ORG,
        lambda i: (f"/admin/v1/webhook-deliveries/{i['delivery']}/replay", None),
    ),
    # alerts
    ("POST", "/api/v1/alerts/alertmanager"): (
        "p:ops p:admin",
        lambda i: ("/api/v1/alerts/alertmanager", {"version": "4", "alerts": []}),
    ),
    ("GET", "/api/v1/alerts"): (PLATFORM_READ, lambda i: ("/api/v1/alerts", None)),
    # usage, entitlements, meters
    ("GET", "/api/v1/usage"): (ORG_READ, lambda i: (f"/api/v1/usage?org={i['org']}", None)),
    ("GET", "/api/v1/usage/forecast"): (
        ORG_READ,
        lambda i: (f"/api/v1/usage/forecast?org={i['org']}", None),
    ),
    ("GET", "/api/v1/usage/top-methods"): (
        ORG_READ,
        lambda i: (f"/api/v1/usage/top-methods?org={i['org']}", None),
    ),
    ("GET", "/api/v1/usage/top-errors"): (
        ORG_READ,
        lambda i: (f"/api/v1/usage/top-errors?org={i['org']}", None),
    ),
    ("GET", "/api/v1/entitlements/{org}"): (
        ORG_READ,
        lambda i: (f"/api/v1/entitlements/{i['org']}", None),
    ),
    ("POST", "/api/v1/entitlements/check"): (
        ORG_READ,
        lambda i: ("/api/v1/entitlements/check", {"subject": i["org"], "feature": "trace"}),
    ),
    ("POST", "/api/v1/events"): (
        ADMINS,
        lambda i: (
            "/api/v1/events",
            {
                "specversion": "1.0",
                "id": f"e{i['n']}",
                "source": "test",
                "type": "request",
                "subject": i["org"],
                "time": "2026-11-30T00:00:00Z",
            },
        ),
    ),
    ("GET", "/api/v1/meters"): (PLATFORM_READ, lambda i: ("/api/v1/meters", None)),
    ("GET", "/api/v1/meters/{meterIdOrSlug}"): (
        PLATFORM_READ,
        lambda i: ("/api/v1/meters/requests", None),
    ),
    ("GET", "/api/v1/meters/{meterIdOrSlug}/query"): (
        ORG_READ,
        lambda i: (f"/api/v1/meters/requests/query?subject={i['org']}", None),
    ),
    ("POST", "/api/v1/meters/{meterIdOrSlug}/query"): (
        ORG_READ,
        lambda i: ("/api/v1/meters/requests/query", {"subject": [i["org"]]}),
    ),
    ("GET", "/api/v1/meters/{meterIdOrSlug}/subjects"): (
        PLATFORM_READ,
        lambda i: ("/api/v1/meters/requests/subjects", None),
    ),
    # the fleet, upstreams, service levels, the job queue (operators)
    ("GET", "/admin/v1/fleet"): (PLATFORM_READ, lambda i: ("/admin/v1/fleet", None)),
    ("GET", "/admin/v1/chains"): (PLATFORM_READ, lambda i: ("/admin/v1/chains", None)),
    ("POST", "/admin/v1/chains/{chain}/upstreams/{upstream}/cordon"): (
        "p:ops p:admin",
        lambda i: ("/admin/v1/chains/eth/upstreams/node-a/cordon", {"reason": f"r{i['n']}"}),
    ),
    ("POST", "/admin/v1/chains/{chain}/upstreams/{upstream}/uncordon"): (
        "p:ops p:admin",
        lambda i: ("/admin/v1/chains/eth/upstreams/node-a/uncordon", None),
    ),
    ("GET", "/admin/v1/slo"): (PLATFORM_READ, lambda i: ("/admin/v1/slo", None)),
    ("GET", "/admin/v1/jobs"): (PLATFORM_READ, lambda i: ("/admin/v1/jobs", None)),
    ("GET", "/admin/v1/jobs/stats"): (PLATFORM_READ, lambda i: ("/admin/v1/jobs/stats", None)),
    ("GET", "/admin/v1/jobs/{job_id}"): (
        PLATFORM_READ,
        lambda i: (f"/admin/v1/jobs/{i['job']}", None),
    ),
    ("POST", "/admin/v1/jobs/{job_id}/retry"): (
        "p:ops p:admin",
        lambda i: (f"/admin/v1/jobs/{i['job']}/retry", None),
    ),
    ("POST", "/admin/v1/jobs/{job_id}/cancel"): (
        "p:ops p:admin",
        lambda i: (f"/admin/v1/jobs/{i['job']}/cancel", None),
    ),
}

# Routes with their own callers: public, or checked by other means (a project's API key, the
# session cookie and a form token, Stripe's signature), tested where they are built.
OWN_AUTH = (
    "/health/",
    "/metrics",
    "/auth/v1/",
    "/portal",
    "/control",
    "/logs/v1",
    "/billing/v1/stripe/webhook",
)


@pytest.fixture
async def world(store: Store, analytics_store: Any) -> AsyncIterator[World]:
    clock = FakeClock(NOW)
    keys = KeyService(store, CONFIG)
    identity = IdentityService(store, CONFIG, None)
    ledger = Ledger(store, clock=clock)
    invoices = InvoiceBook(store, CONFIG, clock=clock, ledger=ledger)
    webhooks = WebhookBook(store)
    queue = JobQueue(store, clock=clock)
    app = create_api_app(
        CONFIG,
        keys,
        token=TOKEN,
        reports=lambda: Reports(analytics_store),
        alerts=AlertBook(store),
        meters=MeterService(analytics_store, CONFIG.meters),
        entitlements=OrgEntitlements(
            lambda name: _plan_named(keys.config, name),
            keys.org_plan,
            analytics=analytics_store,
            units=compute_units(CONFIG),
        ),
        accounts=(ContractBook(store, CONFIG), CreditBook(store)),
        billing=(invoices, queue),
        webhooks=webhooks,
        identity=identity,
    )
    ids: dict[str, str] = {"org_name": "acme", "n": "0"}
    created = await keys.create(org="acme", project="web", actor="test")
    ids["org"] = org = created.record.org_id
    ids["key"] = created.id
    ids["project"] = created.record.project_id
    other = await keys.create(org="other", project="web", actor="test")
    tokens: dict[str, str] = {}
    for caller in CALLERS[1:]:
        email = f"{caller.replace(':', '-')}@example.com"
        if caller.startswith("p:"):
            await identity.create_user(
                email, password=PASSWORD, platform_role=caller[2:], actor="test"
            )
        else:
            await identity.create_user(email, password=PASSWORD, actor="test")
            target = org if caller.startswith("o:") else other.record.org_id
            role = caller[2:] if caller.startswith("o:") else "admin"
            await identity.add_member(target, email, role, actor="test")
        tokens[caller] = (await identity.login(email, PASSWORD)).access_token
    invoice = await invoices.create_from_snapshot(
        await make_snapshot(store, org), provider="stripe"
    )
    invoice = await invoices.mark_sent(invoice.id, f"in_{invoice.id[4:]}", "open", invoice.total)
    ids["invoice"] = (await invoices.mark_paid(invoice.id)).id
    endpoint = await webhooks.create_endpoint(
        org, "https://example.com/a", ["key.created"], actor="test"
    )
    ids["endpoint"] = endpoint.id
    async with store.transaction() as conn:
        await webhooks.emit(conn, "key.created", org, {"key_id": created.id})
    delivery = (await webhooks.deliveries(endpoint.id))[0]
    ids["delivery"] = delivery.id
    ids["job"] = (await queue.enqueue("report-generate", {"period": "2026-11"}, actor="test")).id
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        yield World(http, store, tokens, ids)


async def _fresh(world: World, n: int) -> None:
    """Objects a call may use up (a key to revoke, a member to remove), new for each call."""
    ids, token = world.ids, {"Authorization": f"Bearer {TOKEN}"}
    made = await world.http.post(
        "/admin/v1/keys", json={"org": ids["org_name"], "name": f"spare-{n}"}, headers=token
    )
    ids["spare_key"] = made.json()["id"]
    member = await world.http.post(
        f"/admin/v1/orgs/{ids['org']}/members",
        json={"email": f"spare-{n}@example.com", "role": "viewer"},
        headers=token,
    )
    ids["spare_user"] = member.json()["user_id"]
    hook = await world.http.post(
        f"/admin/v1/orgs/{ids['org']}/webhooks",
        json={"url": "https://example.com/spare", "events": ["key.revoked"]},
        headers=token,
    )
    ids["spare_endpoint"] = hook.json()["id"]


class _Reads(dict[str, str]):
    """The ids a call reads: whether it needs spares (``n`` too: a new name each time)."""

    spares = False

    def __getitem__(self, name: str) -> str:
        if name.startswith("spare_") or name == "n":
            self.spares = True
        return super().get(name, "")


async def _audit_rows(store: Store) -> int:
    async with store.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(audit_log)) or 0)


def _routes(app: Any) -> list[tuple[str, str]]:
    """Every route of the OpenAPI schema (the app's routers are included lazily: the schema
    is the one complete list)."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        if path.startswith(OWN_AUTH):
            continue
        found.extend((method.upper(), path) for method in operations)
    return found


async def test_every_route_is_in_the_table(world: World) -> None:
    app = world.http._transport.app  # type: ignore[attr-defined]
    routes = set(_routes(app))
    missing = sorted(routes - set(TABLE))
    assert not missing, f"decide who may call these (add them to TABLE): {missing}"
    stale = sorted(set(TABLE) - routes)
    assert not stale, f"TABLE names routes the app does not have: {stale}"


async def test_every_route_with_every_role(world: World) -> None:
    wrong: list[str] = []
    unaudited: list[str] = []
    n = 0
    for (method, route), (spec, call) in sorted(TABLE.items()):
        may = allowed(spec)
        used = _Reads(world.ids)
        call(used)
        for caller in CALLERS:
            n += 1
            if used.spares:  # only calls that use something up get it new
                await _fresh(world, n)
            world.ids["n"] = str(n)
            path, body = call(world.ids)
            secret = TOKEN if caller == "token" else world.tokens[caller]
            before = await _audit_rows(world.store)
            answer = await world.http.request(
                method, path, json=body, headers={"Authorization": f"Bearer {secret}"}
            )
            denied = answer.status_code == 403
            if answer.status_code == 401 or denied == (caller in may):
                wrong.append(f"{method} {route} as {caller}: {answer.status_code} {answer.text}")
                continue
            if denied:  # the admin API's error, or a problem on OpenMeter's routes
                said = answer.json()
                assert said.get("error", {}).get("code") == "forbidden" or said["status"] == 403
            if method != "GET" and answer.is_success and await _audit_rows(world.store) == before:
                unaudited.append(f"{method} {route} as {caller}")
    assert not wrong, "\n".join(wrong)
    assert not unaudited, f"changes missing from the audit log: {unaudited}"


async def test_the_audit_log_says_who_from_where_before_and_after(world: World) -> None:
    ids = world.ids
    answer = await world.http.patch(
        f"/admin/v1/keys/{ids['key']}",
        json={"rps": 3},
        headers={"Authorization": f"Bearer {world.tokens['o:ops']}"},
    )
    assert answer.status_code == 200, answer.text
    async with world.store.connect() as conn:
        row = (
            (await conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(1)))
            .mappings()
            .one()
        )
    assert row["action"] == "key.policy" and row["target_id"] == ids["key"]
    assert row["actor"].startswith("user:") and row["ip"] == "203.0.113.7"
    assert row["before"] == {"rps": None} and row["after"] == {"rps": 3.0}


async def test_a_member_is_refused_another_orgs_objects(world: World) -> None:
    stranger = {"Authorization": f"Bearer {world.tokens['stranger']}"}
    for path in (
        f"/admin/v1/keys/{world.ids['key']}",
        f"/admin/v1/invoices/{world.ids['invoice']}",
        f"/admin/v1/webhooks/{world.ids['endpoint']}/deliveries",
        f"/api/v1/usage?org={world.ids['org']}",
        "/api/v1/usage",  # no org named: every org's, an operator's
    ):
        answer = await world.http.get(path, headers=stranger)
        assert answer.status_code == 403, (path, answer.text)
    # A query naming two subjects, one of them not theirs, is refused too.
    mine = next(iter(world.tokens))
    assert mine
    answer = await world.http.get(
        f"/api/v1/meters/requests/query?subject={world.ids['org']}&subject=org_other",
        headers={"Authorization": f"Bearer {world.tokens['o:admin']}"},
    )
    assert answer.status_code == 403


async def test_bad_credentials_are_401(world: World) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Bearer a.b.c"}):
        answer = await world.http.get("/admin/v1/orgs", headers=headers)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"


async def test_members_narrow_a_keys_rate_but_never_widen_it(world: World) -> None:
    ops = {"Authorization": f"Bearer {world.tokens['o:admin']}"}
    key = f"/admin/v1/keys/{world.ids['key']}"
    # The org's plan is the default (free: its rate is the config's); narrowing is fine.
    assert (await world.http.patch(key, json={"rps": 1}, headers=ops)).status_code == 200
    wide = await world.http.patch(key, json={"rps": 1e9}, headers=ops)
    assert wide.status_code == 403 and "at most the plan's" in wide.json()["error"]["message"]
    for body in ({"org": "acme", "plan": "enterprise"}, {"org": "acme", "burst": 10**9}):
        made = await world.http.post("/admin/v1/keys", json=body, headers=ops)
        assert made.status_code == 403, made.text
    # An operator may.
    admin = {"Authorization": f"Bearer {TOKEN}"}
    assert (await world.http.patch(key, json={"rps": 1e9}, headers=admin)).status_code == 200


async def test_an_org_name_cannot_pass_for_another_orgs_id(world: World) -> None:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    named = await world.http.post("/admin/v1/orgs", json={"name": world.ids["org"]}, headers=admin)
    assert named.status_code == 400 and "org_" in named.json()["error"]["message"]
    made = await world.http.post("/admin/v1/keys", json={"org": "Org_x"}, headers=admin)
    assert made.status_code == 400
    # A key list by id is that org's only.
    listed = await world.http.get(f"/admin/v1/keys?org={world.ids['org']}", headers=admin)
    assert {k["org_id"] for k in listed.json()["keys"]} == {world.ids["org"]}

"""The control center's pages over httpx: an operator sees them, a customer gets 403, nobody
logged in goes to the portal's login; buttons follow the role; forms need the CSRF token."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import insert, select

from hoodrun.ops.alerts import IncomingAlert
from hoodrun.ops.fleet import FleetReporter
from hoodrun.store import new_id
from hoodrun.store.tables import audit_log, invoices, orgs, reconciliations
from tests.control.support import Control

PAGES = ["/control", "/control/slo", "/control/upstreams", "/control/alerts", "/control/jobs"]


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:3000]
    return found.group(1)


def row_of(page: httpx.Response, attribute: str, value: str) -> str:
    found = re.search(rf'<tr {attribute}="{re.escape(value)}">(.*?)</tr>', page.text, re.S)
    assert found is not None, page.text[:5000]
    return found.group(1)


async def test_pages_render_for_an_operator(control: Control) -> None:
    async with FleetReporter(control.store, "api", lambda: {}, interval=5.0):
        ops = await control.person("ops@example.com", "ops")
        for path in PAGES:
            page = await ops.get(path)
            assert page.status_code == 200, (path, page.text[:2000])
            assert "text/html" in page.headers["content-type"]
            assert "script-src 'self' 'nonce-" in page.headers["content-security-policy"]
            assert 'id="operator"' in page.text and "ops@example.com" in page.text
        overview = await ops.get("/control")
        api = row_of(overview, "data-role", "api")
        assert '<span class="pill good">1</span>' in api
        assert "database" in overview.text and "analytics store" in overview.text
        # The panels refresh themselves: the partial alone.
        panel = await ops.get("/control?panel=1", headers={"HX-Request": "true"})
        assert panel.status_code == 200 and "<html" not in panel.text
        assert 'id="catalog"' in panel.text
    slo = await ops.get("/control/slo")
    assert "The analytics store is not available" in slo.text


async def test_nobody_goes_to_the_login_and_a_customer_gets_403(control: Control) -> None:
    anonymous = control.client()
    answer = await anonymous.get("/control/upstreams")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/login?next=/control/upstreams"
    htmx = await anonymous.get("/control/jobs?panel=1", headers={"HX-Request": "true"})
    assert htmx.status_code == 401
    assert htmx.headers["hx-redirect"] == "/portal/login?next=/control/jobs%3Fpanel%3D1"
    expired = control.client(cookie="not.a.token")
    assert (await expired.get("/control")).status_code == 303

    customer = await control.person("customer@example.com", None)
    for path in PAGES:
        page = await customer.get(path)
        assert page.status_code == 403, path
        assert "for the platform&#39;s operators" in page.text
    # Nor can a customer change anything (the CSRF token is right, the role is not).
    page = await customer.get("/control")
    refused = await customer.post(
        "/control/upstreams/eth/eth-0/cordon",
        data={"csrf": csrf_of_cookie(customer), "reason": "x"},
    )
    assert refused.status_code == 403
    assert page.status_code == 403


def csrf_of_cookie(client: httpx.AsyncClient) -> str:
    value = client.cookies.get("hoodrun_csrf")
    assert value
    return value


async def test_roles_decide_pages_and_buttons(control: Control) -> None:
    viewer = await control.person("viewer@example.com", "viewer")
    page = await viewer.get("/control/upstreams")
    assert page.status_code == 200
    assert 'data-upstream="eth/eth-0"' in page.text
    assert "Cordon</button>" not in page.text  # viewers do not get the buttons
    billing = await viewer.get("/control/billing")
    assert billing.status_code == 403
    assert "billing:read" in billing.text
    assert ">Billing<" not in page.text  # nor the link
    # A viewer's POST is refused even with a valid CSRF token.
    refused = await viewer.post(
        "/control/upstreams/eth/eth-0/cordon",
        data={
            "csrf": csrf_of(await viewer.get("/control"))
            if False
            else viewer.cookies["hoodrun_csrf"],
            "reason": "x",
        },
    )
    assert refused.status_code == 403 and "upstreams:write" in refused.text

    ops = await control.person("ops@example.com", "ops")
    page = await ops.get("/control/upstreams")
    assert "Cordon</button>" in page.text
    assert (await ops.get("/control/billing")).status_code == 403  # ops see no money
    admin = await control.person("admin@example.com", "admin")
    assert (await admin.get("/control/billing")).status_code == 200


async def test_cordon_form_needs_its_token_and_is_audited(control: Control) -> None:
    ops = await control.person("ops@example.com", "ops")
    page = await ops.get("/control/upstreams")
    token = csrf_of(page)
    # No token, or another one: refused before anything changes.
    for data in ({"reason": "disk"}, {"reason": "disk", "csrf": "forged"}):
        refused = await ops.post("/control/upstreams/eth/eth-0/cordon", data=data)
        assert refused.status_code == 403
        assert "security token" in refused.text
    assert await control_cordons(control) == []

    # A plain form: a redirect to the page, which shows the cordon.
    done = await ops.post(
        "/control/upstreams/eth/eth-0/cordon", data={"csrf": token, "reason": "disk swap"}
    )
    assert done.status_code == 303 and done.headers["location"] == "/control/upstreams"
    page = await ops.get("/control/upstreams")
    row = row_of(page, "data-upstream", "eth/eth-0")
    assert "cordoned" in row and "disk swap" in row and "Uncordon</button>" in row
    # The upstream's URL is shown without the provider's key.
    assert "secret-provider-key" not in page.text
    assert "http://127.0.0.1:9/…" in page.text

    # htmx: the panel comes back with a notice; the header carries the token.
    answer = await ops.post(
        "/control/upstreams/eth/eth-0/uncordon",
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert answer.status_code == 200
    assert "back in rotation" in answer.text and "<html" not in answer.text
    # A bad request shows in the panel too: an unknown upstream, an empty reason.
    unknown = await ops.post(
        "/control/upstreams/eth/nope/cordon",
        data={"reason": "x"},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert unknown.status_code == 404 and "has no upstream" in unknown.text
    empty = await ops.post(
        "/control/upstreams/eth/eth-1/cordon",
        data={"reason": " "},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert empty.status_code == 400 and "reason" in empty.text

    async with control.store.connect() as conn:
        rows = (
            (
                await conn.execute(
                    select(audit_log)
                    .where(audit_log.c.target_type == "upstream")
                    .order_by(audit_log.c.id)
                )
            )
            .mappings()
            .all()
        )
    claims = control.identity.decode(ops.cookies["hoodrun_session"])
    assert [r["action"] for r in rows] == ["upstream.cordon", "upstream.uncordon"]
    assert all(r["actor"] == f"user:{claims.user_id}" for r in rows)
    assert rows[0]["before"] is None and rows[0]["after"]["reason"] == "disk swap"
    assert rows[1]["before"]["reason"] == "disk swap" and rows[1]["after"] is None


async def control_cordons(control: Control) -> list[object]:
    from hoodrun.ops.cordons import CordonBook

    return list(await CordonBook(control.store).list())


async def test_alerts_billing_and_jobs_pages(control: Control) -> None:
    now = datetime.now(UTC)
    await control.ctx.alerts.receive(  # type: ignore[union-attr]
        [
            IncomingAlert(
                fingerprint="f1",
                status="firing",
                labels={"alertname": "HoodRunNodeDown", "severity": "critical", "chain": "eth"},
                annotations={"summary": "eth-0 is down <script>"},
                starts_at=now - timedelta(minutes=5),
                ends_at=None,
            )
        ]
    )
    queue = control.ctx.jobs
    assert queue is not None
    job = await queue.enqueue("reconcile", {})
    [claimed] = await queue.claim("w1")
    assert claimed.id == job.id
    await queue.fail(claimed, "w1", "provider down", permanent=True)
    org = new_id("org")
    async with control.store.transaction() as conn:
        await conn.execute(insert(orgs).values(id=org, name="acme", created_at=now))
        invoice = new_id("inv")
        await conn.execute(insert(invoices).values(**invoice_row(invoice, org, now)))
        await conn.execute(
            insert(reconciliations).values(
                id=new_id("rec"), invoice_id=invoice, at=now, expected=Decimal("10.00"),
                reported=Decimal("12.50"), matched=False, detail="stripe says 12.50 USD",
            )
        )  # fmt: skip

    admin = await control.person("admin@example.com", "admin")
    alerts = await admin.get("/control/alerts")
    row = row_of(alerts, "data-alert", "f1")
    assert "HoodRunNodeDown" in row and "critical" in row
    assert "&lt;script&gt;" in row  # escaped

    billing = await admin.get("/control/billing")
    row = row_of(billing, "data-invoice", "HR-0001")
    assert "10.00 USD" in row and "12.50 USD" in row
    assert "The last reconciliation failed: provider down" in billing.text

    jobs = await admin.get("/control/jobs")
    counts = row_of(jobs, "data-kind", "reconcile")
    assert '<td class="num bad" data-status="dead">1</td>' in counts
    assert "Retry</button>" in row_of(jobs, "data-job", job.id)
    retried = await admin.post(
        f"/control/jobs/{job.id}/retry",
        headers={"HX-Request": "true", "X-CSRF-Token": admin.cookies["hoodrun_csrf"]},
    )
    assert retried.status_code == 200 and "is queued again" in retried.text
    assert (await queue.get(job.id)).status == "queued"  # type: ignore[union-attr]
    again = await admin.post(
        f"/control/jobs/{job.id}/retry",
        headers={"HX-Request": "true", "X-CSRF-Token": admin.cookies["hoodrun_csrf"]},
    )
    assert again.status_code == 409 and "only dead or cancelled" in again.text


def invoice_row(invoice_id: str, org_id: str, now: datetime) -> dict[str, object]:
    return {
        "id": invoice_id,
        "number": "HR-0001",
        "org_id": org_id,
        "period": "2030-01",
        "status": "open",
        "currency": "USD",
        "lines": [],
        "subtotal": Decimal("10.00"),
        "tax": Decimal("0"),
        "credits": Decimal("0"),
        "total": Decimal("10.00"),
        "issue_date": now.date(),
        "due_date": now.date(),
        "provider": "stripe",
        "created_at": now,
        "updated_at": now,
    }


@pytest.mark.parametrize("path", ["/control/slo?window=0m", "/control/slo?window=99d"])
async def test_bad_window_is_a_400_page(control: Control, path: str) -> None:
    ops = await control.person("ops@example.com", "ops")
    page = await ops.get(path)
    assert page.status_code == 400

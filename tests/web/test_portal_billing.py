"""The portal's billing over httpx: a plan change previewed (prorated) then made through the
contract book and the keys; credits; an invoice closed from real usage, its lines against the
usage behind them, and its documents."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import select

from hoodrun.billing.close import PeriodCloser
from hoodrun.metering.entitlements import month_bounds
from hoodrun.metering.money import Money
from hoodrun.store.tables import audit_log
from hoodrun.telemetry.rollup import Rollups
from tests._stores import FakeClock
from tests.web.support import Portal, csrf_of, org_of

HTMX = {"HX-Request": "true"}


def amount(page: str, element: str) -> Decimal:
    found = re.search(rf'id="{element}">([\d,.]+) USD<', page)
    assert found is not None, page[:3000]
    return Decimal(found.group(1).replace(",", ""))


async def on_starter(portal: Portal, org_id: str) -> None:
    """The org on the metered plan since the month began (its contract, its keys' plan)."""
    start, _ = month_bounds(portal.ctx.keys.now())
    assert portal.ctx.contracts is not None
    await portal.ctx.contracts.create(org_id, "starter", starts_at=start, actor="test")
    await portal.ctx.keys.change_org_plan(org_id, "starter", actor="test")


async def a_key(portal: Portal, browser: object, token: str) -> str:
    made = await browser.post(  # type: ignore[attr-defined]
        "/portal/keys", data={"csrf": token, "name": "app"}, headers=HTMX
    )
    assert made.status_code == 201
    return str(re.search(r'data-key-id="([^"]+)"', made.text).group(1))  # type: ignore[union-attr]


async def test_a_plan_change_is_previewed_then_made(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    await on_starter(portal, org_id)
    token = csrf_of(await browser.get("/portal/keys"))
    key_id = await a_key(portal, browser, token)
    await portal.calls(org_id, key_id, 200)
    page = await browser.get("/portal/billing")
    assert page.status_code == 200
    assert '<span id="plan-name">starter</span>' in page.text
    assert '<option value="growth">' in page.text and '<option value="starter">' not in page.text

    preview = await browser.post(
        "/portal/billing/preview", data={"csrf": token, "plan": "growth"}, headers=HTMX
    )
    assert preview.status_code == 200, preview.text
    stay, change = amount(preview.text, "stay-total"), amount(preview.text, "change-total")
    assert stay >= Decimal("2.00")  # 200 calls at 0.01 so far, and as many to come at that pace
    assert change > Decimal(0) and stay != change
    assert 'id="confirm-plan"' in preview.text and 'name="plan" value="growth"' in preview.text
    assert "starter until" in preview.text and "growth from" in preview.text  # prorated lines
    # Nothing changed yet.
    assert portal.ctx.contracts is not None
    assert (await portal.ctx.contracts.in_force(org_id)).plan == "starter"  # type: ignore[union-attr]

    changed = await browser.post("/portal/billing/plan", data={"csrf": token, "plan": "growth"})
    assert changed.status_code == 303
    page = await browser.get(changed.headers["location"])
    assert '<span id="plan-name">growth</span>' in page.text and "Your plan is changed" in page.text
    history = await portal.ctx.contracts.history(org_id)
    assert [c.plan for c in history] == ["starter", "growth"]
    assert history[0].ends_at == history[1].starts_at
    assert await portal.ctx.keys.org_plan(org_id) == "growth"
    assert (await portal.ctx.keys.get(key_id)).plan == "growth"
    user_id = portal.ctx.identity.decode(browser.cookies["hoodrun_session"]).user_id
    async with portal.store.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_log.c.action, audit_log.c.actor).where(
                    audit_log.c.action.in_(["contract.change", "org.plan"])
                    & (audit_log.c.actor != "test")
                )
            )
        ).all()
    assert sorted(rows) == [("contract.change", f"user:{user_id}"), ("org.plan", f"user:{user_id}")]
    # An unknown plan is refused.
    bad = await browser.post("/portal/billing/plan", data={"csrf": token, "plan": "platinum"})
    assert bad.status_code == 400 and "No plan" in bad.text


async def test_an_org_without_a_contract_gets_one_from_now(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "bob@example.com")
    org_id = org_of(portal, browser)
    token = csrf_of(await browser.get("/portal/billing"))
    preview = await browser.post(
        "/portal/billing/preview", data={"csrf": token, "plan": "growth"}, headers=HTMX
    )
    assert preview.status_code == 200 and 'id="change-total"' in preview.text
    assert amount(preview.text, "stay-total") == Decimal("0.00")  # free costs nothing
    changed = await browser.post("/portal/billing/plan", data={"csrf": token, "plan": "growth"})
    assert changed.status_code == 303
    assert portal.ctx.contracts is not None
    (contract,) = await portal.ctx.contracts.history(org_id)
    assert contract.plan == "growth" and contract.currency == "USD"


async def test_an_invoice_matches_its_usage_line_by_line(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    await on_starter(portal, org_id)
    token = csrf_of(await browser.get("/portal/keys"))
    key_id = await a_key(portal, browser, token)
    await portal.calls(org_id, key_id, 120)
    await portal.calls(org_id, key_id, 30, method="eth_getBalance", chain="base")
    await portal.calls(org_id, key_id, 7, reason="rate_limited", status=429)  # not billable
    await Rollups(portal.analytics).catch_up()
    # The month closed as the billing worker does, a little after it ends.
    start, end = month_bounds(portal.ctx.keys.now())
    closer = PeriodCloser(
        portal.store, portal.analytics, portal.ctx.config, clock=FakeClock(end + timedelta(hours=1))
    )
    result = await closer.close(f"{start:%Y-%m}", orgs=[org_id], actor="test")
    (snapshot,) = result.closed
    assert portal.ctx.invoices is not None and portal.ctx.credits is not None
    invoice = await portal.ctx.invoices.create_from_snapshot(snapshot.id, provider="none")
    assert invoice.total == Money(Decimal("1.50"), "USD")
    await portal.ctx.credits.grant(
        org_id, "promotional", Money(Decimal("25"), "USD"), note="welcome", actor="test"
    )

    billing = await browser.get("/portal/billing")
    assert invoice.number in billing.text and "25.00 USD" in billing.text
    page = await browser.get(f"/portal/invoices/{invoice.id}")
    assert page.status_code == 200
    assert f'<span id="invoice-number">{invoice.number}</span>' in page.text
    assert '<th class="num" id="invoice-total">1.50 USD</th>' in page.text
    assert '<strong id="billed-usage">150</strong>' in page.text
    assert '<strong id="line-usage">150</strong>' in page.text and "they match" in page.text
    usage = re.search(r'<table id="invoice-usage">.*?</table>', page.text, re.S)
    assert usage is not None
    assert usage.group(0).count("matches") == 2 and "differs" not in usage.group(0)

    html = await browser.get(f"/portal/invoices/{invoice.id}/document.html")
    assert html.status_code == 200 and invoice.number in html.text
    assert "default-src 'none'" in html.headers["content-security-policy"]
    pdf = await browser.get(f"/portal/invoices/{invoice.id}/document.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-disposition"] == f'attachment; filename="{invoice.number}.pdf"'

    eve = portal.client()
    await portal.sign_up(eve, "eve@example.com")
    for path in ("", "/document.html", "/document.pdf"):
        assert (await eve.get(f"/portal/invoices/{invoice.id}{path}")).status_code == 404

"""The portal's webhooks over httpx (the secret shown once, the delivery log, replaying a failed
delivery) and the notification preferences."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest
from sqlalchemy import select

from hoodrun.store.tables import audit_log, notification_prefs
from hoodrun.webhooks import address
from tests.web.support import Portal, csrf_of, org_of

HTMX = {"HX-Request": "true"}


async def test_an_endpoint_its_deliveries_and_a_replay(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def public(host: str) -> Iterable[str]:
        return ["93.184.215.14"]  # hooks.example, without DNS (the portal checks the address)

    monkeypatch.setattr(address, "_getaddrinfo", public)
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    token = csrf_of(await browser.get("/portal/webhooks"))
    bad = await browser.post(
        "/portal/webhooks", data={"csrf": token, "url": "ftp://x", "events": ["key.created"]}
    )
    assert bad.status_code == 400 and "http(s) URL" in bad.text
    made = await browser.post(
        "/portal/webhooks",
        data={"csrf": token, "url": "https://hooks.example/in", "events": ["key.created"]},
    )
    assert made.status_code == 201
    secret = re.search(r'id="webhook-secret">(whsec_[^<]+)<', made.text)
    assert secret is not None
    assert portal.ctx.webhooks is not None
    (endpoint,) = await portal.ctx.webhooks.endpoints(org_id)
    assert endpoint.secret == secret.group(1) and endpoint.events == ("key.created",)
    listing = await browser.get("/portal/webhooks")
    assert "https://hooks.example/in" in listing.text and secret.group(1) not in listing.text

    # A key made in the portal is an event; its delivery failed (the receiver was down).
    await browser.post("/portal/keys", data={"csrf": token, "name": "k"}, headers=HTMX)
    (delivery,) = await portal.ctx.webhooks.deliveries(endpoint.id)
    await portal.ctx.webhooks.record(
        delivery.id, status="failed", status_code=503, error="HTTP 503"
    )
    log = await browser.get(f"/portal/webhooks/{endpoint.id}")
    assert log.status_code == 200
    row = re.search(rf'<tr id="delivery-{delivery.id}">.*?</tr>', log.text, re.S)
    assert row is not None
    assert "key.created" in row.group(0) and "failed" in row.group(0) and "HTTP 503" in row.group(0)
    assert "Replay" in row.group(0)
    replayed = await browser.post(
        f"/portal/webhooks/deliveries/{delivery.id}/replay", data={"csrf": token}, headers=HTMX
    )
    assert replayed.status_code == 200
    assert replayed.text.startswith(f'<tr id="delivery-{delivery.id}">')
    assert "pending" in replayed.text and "Replay" not in replayed.text
    assert (await portal.ctx.webhooks.delivery(delivery.id)).status == "pending"
    again = await browser.post(
        f"/portal/webhooks/deliveries/{delivery.id}/replay", data={"csrf": token}, headers=HTMX
    )
    assert again.status_code == 409 and "not failed" in again.text

    # Another org sees none of it.
    eve = portal.client()
    await portal.sign_up(eve, "eve@example.com")
    eve_token = csrf_of(await eve.get("/portal/webhooks"))
    assert (await eve.get(f"/portal/webhooks/{endpoint.id}")).status_code == 404
    answer = await eve.post(
        f"/portal/webhooks/deliveries/{delivery.id}/replay", data={"csrf": eve_token}
    )
    assert answer.status_code == 404
    answer = await eve.post(f"/portal/webhooks/{endpoint.id}/disable", data={"csrf": eve_token})
    assert answer.status_code == 404
    disabled = await browser.post(f"/portal/webhooks/{endpoint.id}/disable", data={"csrf": token})
    assert disabled.status_code == 303
    assert not (await portal.ctx.webhooks.endpoint(endpoint.id)).enabled


async def test_notification_preferences_are_per_user_and_org(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    user_id = portal.ctx.identity.decode(browser.cookies["hoodrun_session"]).user_id
    page = await browser.get("/portal/notifications")
    assert page.status_code == 200
    assert page.text.count(" checked aria-label=") == 6  # every event is mailed by default
    saved = await browser.post(
        "/portal/notifications",
        data={"csrf": csrf_of(page), "email": ["invoice.created", "quota.exhausted"]},
    )
    assert saved.status_code == 303
    page = await browser.get(saved.headers["location"])
    assert "Saved." in page.text and page.text.count(" checked aria-label=") == 2
    async with portal.store.connect() as conn:
        rows = (
            await conn.execute(
                select(notification_prefs.c.event, notification_prefs.c.email).where(
                    (notification_prefs.c.user_id == user_id)
                    & (notification_prefs.c.org_id == org_id)
                )
            )
        ).all()
        audit = (
            await conn.execute(
                select(audit_log).where(audit_log.c.action == "notifications.update")
            )
        ).mappings().all()  # fmt: skip
    assert dict(rows) == {
        "usage.threshold": False, "quota.exhausted": True, "error_rate.spike": False,
        "invoice.created": True, "invoice.paid": False, "credits.low": False,
    }  # fmt: skip
    (entry,) = audit
    assert entry["actor"] == f"user:{user_id}" and entry["target_id"] == user_id
    assert entry["details"]["after"]["invoice.created"] is True
    # Saving again changes the rows, not their number.
    await browser.post("/portal/notifications", data={"csrf": csrf_of(page), "email": []})
    async with portal.store.connect() as conn:
        emails = (
            await conn.execute(
                select(notification_prefs.c.email).where(notification_prefs.c.user_id == user_id)
            )
        ).scalars().all()  # fmt: skip
    assert emails == [False] * 6

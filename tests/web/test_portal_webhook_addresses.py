"""A webhook made in the portal is a customer's: its URL must name a public address, since the
worker POSTs from inside the platform's network (``hoodrun.webhooks.check_public_url``)."""

from __future__ import annotations

import html

import pytest

from tests.web.support import Portal, csrf_of, org_of


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
        ("http://localhost:8001/admin/v1/keys", "localhost (127.0.0.1) is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "is a link-local address"),
        ("http://10.0.0.5/hook", "10.0.0.5 is a private address"),
        ("http://[::ffff:192.168.1.1]/", "is a private address"),
        ("http://nowhere.invalid/", "'nowhere.invalid' does not resolve"),
    ],
)
async def test_an_internal_address_is_refused(portal: Portal, url: str, said: str) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")  # the org's admin
    token = csrf_of(await browser.get("/portal/webhooks"))
    refused = await browser.post(
        "/portal/webhooks", data={"csrf": token, "url": url, "events": ["key.created"]}
    )
    assert refused.status_code == 400
    assert said in html.unescape(refused.text)
    assert portal.ctx.webhooks is not None
    assert await portal.ctx.webhooks.endpoints(org_of(portal, browser)) == []


async def test_a_public_address_is_taken(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    token = csrf_of(await browser.get("/portal/webhooks"))
    made = await browser.post(
        "/portal/webhooks",
        data={"csrf": token, "url": "https://93.184.215.14/in", "events": ["key.created"]},
    )
    assert made.status_code == 201
    assert portal.ctx.webhooks is not None
    [endpoint] = await portal.ctx.webhooks.endpoints(org_of(portal, browser))
    assert endpoint.url == "https://93.184.215.14/in"

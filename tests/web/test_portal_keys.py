"""The portal's keys over httpx: a key is shown once; rotate and revoke; scopes; what a viewer may
not do; per key the rate against its limit, the quota left and the month's usage; usage charts
with their series in the page; endpoints with snippets; the scripts from npm."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from fastapi import FastAPI

from hoodrun.keys.secret import hash_key
from hoodrun.telemetry.rollup import Rollups
from hoodrun.web.assets import assets_router
from tests.web.support import PASSWORD, Portal, csrf_of, org_of

HTMX = {"HX-Request": "true"}


def shown_key(page: httpx.Response) -> str:
    found = re.search(r'<code class="secret" id="new-key">([^<]+)</code>', page.text)
    assert found is not None, page.text[:3000]
    return found.group(1)


async def test_a_new_key_is_shown_once_and_works(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    page = await browser.get("/portal/keys")
    token = csrf_of(page)
    made = await browser.post(
        "/portal/keys",
        data={"csrf": token, "name": "backend", "project": "web", "chains": ["eth"],
              "methods_allow": "eth_blockNumber, eth_call", "methods_deny": ""},
        headers={**HTMX, "X-CSRF-Token": token},
    )  # fmt: skip
    assert made.status_code == 201
    key = shown_key(made)
    assert 'data-copy="new-key"' in made.text  # the copy button
    assert f"http://127.0.0.1:8545/eth/v1/{key}" in made.text
    assert 'hx-swap-oob="true"' in made.text  # the table is refreshed alongside
    record = await portal.ctx.keys.lookup(hash_key(key))
    assert record is not None and record.org_id == org_id and record.name == "backend"
    assert record.project == "web" and record.chains == frozenset({"eth"})
    assert record.methods_allow == frozenset({"eth_blockNumber", "eth_call"})
    # Never again: not on the keys page, not on the key's page.
    listing = await browser.get("/portal/keys")
    assert key not in listing.text and record.start in listing.text
    detail = await browser.get(f"/portal/keys/{record.id}")
    assert detail.status_code == 200 and key not in detail.text
    assert "eth_blockNumber, eth_call" in detail.text
    assert detail.headers["cache-control"] == "no-store"

    rotated = await browser.post(
        f"/portal/keys/{record.id}/rotate", data={"csrf": token, "grace": "0"}, headers=HTMX
    )
    assert rotated.status_code == 201
    new_key = shown_key(rotated)
    assert new_key != key
    assert (await portal.ctx.keys.get(record.id)).status_at(portal.ctx.keys.now()) == "revoked"
    fresh = await portal.ctx.keys.lookup(hash_key(new_key))
    assert fresh is not None and fresh.chains == frozenset({"eth"})  # settings carried over
    revoked = await browser.post(
        f"/portal/keys/{fresh.id}/revoke", data={"csrf": token}, headers=HTMX
    )
    assert revoked.status_code == 200 and 'id="keys-table"' in revoked.text
    assert (await portal.ctx.keys.get(fresh.id)).status_at(portal.ctx.keys.now()) == "revoked"
    # Without htmx the same forms work as plain pages.
    plain = await browser.post("/portal/keys", data={"csrf": token, "name": "plain"})
    assert plain.status_code == 201 and shown_key(plain) and "<html" in plain.text


async def test_bad_key_options_are_explained(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    token = csrf_of(await browser.get("/portal/keys"))
    answer = await browser.post(
        "/portal/keys", data={"csrf": token, "chains": ["solana"]}, headers=HTMX
    )
    assert answer.status_code == 400 and "unknown chain &#39;solana&#39;" in answer.text
    answer = await browser.post("/portal/keys", data={"csrf": token, "origins": "not an origin"})
    assert answer.status_code == 400 and "is not an origin" in answer.text
    assert await portal.ctx.keys.list(org=org_of(portal, browser)) == []


async def test_a_viewer_cannot_create_or_change_keys(portal: Portal) -> None:
    admin = portal.client()
    await portal.sign_up(admin, "ada@example.com")
    org_id = org_of(portal, admin)
    token = csrf_of(await admin.get("/portal/keys"))
    made = await admin.post("/portal/keys", data={"csrf": token, "name": "ops"}, headers=HTMX)
    key_id = (await portal.ctx.keys.list(org=org_id))[0].id
    assert made.status_code == 201
    await portal.ctx.identity.create_user(
        "vic@example.com", password=PASSWORD, actor="test", verified=True
    )
    await portal.ctx.identity.add_member(org_id, "vic@example.com", "viewer", actor="test")
    viewer = portal.client()
    page = await portal.log_in(viewer, "vic@example.com")
    assert page.status_code == 200 and 'id="no-key-write"' in page.text
    assert 'id="create-key"' not in page.text and "Revoke" not in page.text
    token = csrf_of(page)
    refused = await viewer.post("/portal/keys", data={"csrf": token, "name": "mine"})
    assert refused.status_code == 403
    assert "(viewer) cannot create, rotate or revoke keys" in refused.text
    assert "keys:write" in refused.text
    for action in ("revoke", "rotate"):
        answer = await viewer.post(f"/portal/keys/{key_id}/{action}", data={"csrf": token})
        assert answer.status_code == 403
    assert len(await portal.ctx.keys.list(org=org_id)) == 1
    assert (await portal.ctx.keys.get(key_id)).revoked_at is None
    # Money is not a viewer's business either.
    assert (await viewer.get("/portal/billing")).status_code == 403
    # An htmx call gets the message in place.
    inline = await viewer.post("/portal/keys", data={"csrf": token}, headers=HTMX)
    assert inline.status_code == 403 and inline.text.startswith('<div class="error"')


async def test_another_orgs_key_is_not_found(portal: Portal) -> None:
    ada = portal.client()
    await portal.sign_up(ada, "ada@example.com")
    token = csrf_of(await ada.get("/portal/keys"))
    await ada.post("/portal/keys", data={"csrf": token, "name": "ada"}, headers=HTMX)
    (ada_key,) = await portal.ctx.keys.list(org=org_of(portal, ada))
    eve = portal.client()
    await portal.sign_up(eve, "eve@example.com")
    token = csrf_of(await eve.get("/portal/keys"))
    assert (await eve.get(f"/portal/keys/{ada_key.id}")).status_code == 404
    answer = await eve.post(f"/portal/keys/{ada_key.id}/revoke", data={"csrf": token})
    assert answer.status_code == 404
    assert (await portal.ctx.keys.get(ada_key.id)).revoked_at is None
    usage = await eve.get("/portal/usage", params={"key": ada_key.id})
    assert usage.status_code == 200 and ada_key.id not in usage.text


async def test_each_key_shows_its_rate_quota_and_month(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    token = csrf_of(await browser.get("/portal/keys"))
    for name in ("busy", "quiet"):
        await browser.post("/portal/keys", data={"csrf": token, "name": name}, headers=HTMX)
    busy, quiet = await portal.ctx.keys.list(org=org_id)
    await portal.calls(org_id, busy.id, 30)
    await portal.calls(org_id, busy.id, 4, reason="rate_limited", status=429)
    await portal.calls(org_id, quiet.id, 6, method="eth_call")
    page = await browser.get("/portal/keys")
    row = re.search(rf'<tr id="key-{busy.id}".*?</tr>', page.text, re.S)
    assert row is not None
    # The free plan: 5 requests/s, 1,000 requests a month for the org (36 billable so far).
    assert "0.57/s of 5.0/s" in row.group(0)  # 34 calls in the last minute
    assert "4 refused (429) in 24 h" in row.group(0)
    assert "<strong>964</strong> of 1,000" in row.group(0)
    assert '<td class="num">34</td>' in row.group(0)
    detail = await browser.get(f"/portal/keys/{busy.id}")
    assert '<strong id="key-requests">34</strong>' in detail.text
    assert "eth_blockNumber" in detail.text and "eth_call" not in detail.text
    projects = await browser.get("/portal/projects")
    assert projects.status_code == 200 and "default" in projects.text


async def test_usage_charts_carry_their_series(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    token = csrf_of(await browser.get("/portal/keys"))
    await browser.post("/portal/keys", data={"csrf": token, "name": "k"}, headers=HTMX)
    (key,) = await portal.ctx.keys.list(org=org_id)
    await portal.calls(org_id, key.id, 5)
    await portal.calls(org_id, key.id, 3, method="eth_getBalance", chain="base")
    await portal.calls(org_id, key.id, 2, reason="rate_limited", status=429)
    await portal.calls("org_someone_else", "key_x", 50)
    page = await browser.get("/portal/usage")
    assert page.status_code == 200
    found = re.search(
        r'<script type="application/json" id="usage-data">(.*?)</script>', page.text, re.S
    )
    assert found is not None
    series = json.loads(found.group(1))
    assert len(series["days"]) == 7
    today = -1
    assert series["totals"] == {"requests": 10, "errors": 2, "compute_units": 5 * 10 + 3 * 19}
    assert series["requests_by_chain"]["eth"][today] == 7
    assert series["requests_by_chain"]["base"][today] == 3
    assert series["requests_by_method"]["eth_getBalance"][today] == 3
    assert series["units_by_method"]["eth_blockNumber"][today] == 50
    assert series["error_rate"][today] == 0.2
    assert series["latency_p95_ms"][today] is not None
    assert '<strong id="usage-total-requests">10</strong>' in page.text
    assert "/portal/assets/chart.umd.min.js" in page.text
    nonce = re.search(r'<script nonce="([^"]+)">', page.text)
    assert nonce is not None
    assert f"'nonce-{nonce.group(1)}'" in page.headers["content-security-policy"]
    # Beyond the raw rows' days, the daily rollup answers.
    await Rollups(portal.analytics).catch_up()
    base_only = await browser.get("/portal/usage", params={"chain": "base", "days": 30})
    malformed = await browser.get("/portal/usage", params={"days": "a week"})
    assert malformed.status_code == 400 and "days" in malformed.text
    found = re.search(r'id="usage-data">(.*?)</script>', base_only.text, re.S)
    assert found is not None and json.loads(found.group(1))["totals"]["requests"] == 3


async def test_endpoints_show_each_chain_with_snippets(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    page = await browser.get("/portal/endpoints")
    assert page.status_code == 200
    for chain in ("eth", "base"):
        assert f"http://127.0.0.1:8545/{chain}/v1/YOUR_API_KEY" in page.text
    assert "curl -s" in page.text and "JsonRpcProvider" in page.text
    assert "Web3.HTTPProvider" in page.text


async def test_assets_come_from_npm_and_say_when_missing(portal: Portal, tmp_path: Path) -> None:
    browser = portal.client()
    for name in ("htmx.min.js", "chart.umd.min.js"):
        answer = await browser.get(f"/portal/assets/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(
            "text/javascript"
        )
        assert len(answer.content) > 10_000
    assert (await browser.get("/portal/assets/..%2Fpackage.json")).status_code == 404
    bare = FastAPI()
    bare.include_router(assets_router(tmp_path / "node_modules", "/portal"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=bare), base_url="http://portal.test"
    ) as client:
        missing = await client.get("/portal/assets/htmx.min.js")
    assert missing.status_code == 404 and "Run `npm ci`" in missing.text


async def test_pages_say_so_when_the_usage_reports_are_down(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    token = csrf_of(await browser.get("/portal/keys"))
    await browser.post("/portal/keys", data={"csrf": token, "name": "k"}, headers=HTMX)
    portal.ctx.reports = lambda: None  # the analytics store is not open
    keys = await browser.get("/portal/keys")
    assert keys.status_code == 200 and "Usage is not available" in keys.text
    usage = await browser.get("/portal/usage")
    assert usage.status_code == 200 and 'id="usage-error"' in usage.text
    preview = await browser.post(
        "/portal/billing/preview", data={"csrf": token, "plan": "starter"}, headers=HTMX
    )
    assert preview.status_code == 503 and "usage reports" in preview.text


async def test_payload_capture_is_set_per_project(portal: Portal) -> None:
    ada = portal.client()
    await portal.sign_up(ada, "ada@example.com")
    org_id = org_of(portal, ada)
    token = csrf_of(await ada.get("/portal/keys"))
    await ada.post("/portal/keys", data={"csrf": token, "name": "k", "project": "web"})
    record = (await portal.ctx.keys.list(org=org_id))[0]
    assert record.capture_bytes is None  # off by default
    page = await ada.get("/portal/projects")
    assert f'id="capture-{record.project_id}"' in page.text
    saved = await ada.post(
        f"/portal/projects/{record.project_id}/capture",
        data={"csrf": token, "capture_payloads": "on", "capture_bytes": "512"},
    )
    assert saved.status_code == 303
    assert (await portal.ctx.keys.get(record.id)).capture_bytes == 512
    bad = await ada.post(
        f"/portal/projects/{record.project_id}/capture",
        data={"csrf": token, "capture_payloads": "on", "capture_bytes": "9"},
    )
    assert bad.status_code == 400 and "capture_bytes" in bad.text
    # Without the form's token nothing changes; another org's project is not found.
    forged = await ada.post(
        f"/portal/projects/{record.project_id}/capture", data={"capture_bytes": "2048"}
    )
    assert forged.status_code == 403
    bob = portal.client()
    await portal.sign_up(bob, "bob@example.com")
    bob_token = csrf_of(await bob.get("/portal/keys"))
    other = await bob.post(
        f"/portal/projects/{record.project_id}/capture",
        data={"csrf": bob_token, "capture_payloads": "on"},
    )
    assert other.status_code == 404
    off = await ada.post(
        f"/portal/projects/{record.project_id}/capture",
        data={"csrf": token, "capture_bytes": "512"},
    )
    assert off.status_code == 303
    assert (await portal.ctx.keys.get(record.id)).capture_bytes is None

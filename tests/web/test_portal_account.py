"""The portal's account pages over httpx: sign up, verify by the mailed link, log in and out, a
transparent refresh, the org switcher, forgotten passwords; CSRF on every form; where a login
may send you."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from hoodrun.identity import InvalidToken
from hoodrun.keys.service import KeyService
from hoodrun.store.tables import audit_log
from tests.web.support import PASSWORD, Portal, csrf_of, org_of, token_of


async def test_sign_up_verify_log_in_and_out(portal: Portal) -> None:
    browser = portal.client()
    page = await portal.sign_up(browser, "ada@example.com", org_name="Analytical Engines")
    assert page.status_code == 200, page.text
    assert "Analytical Engines" in page.text and "ada@example.com" in page.text
    session = browser.cookies["hoodrun_session"]
    refresh = browser.cookies["hoodrun_refresh"]
    claims = portal.ctx.identity.decode(session)
    assert claims.roles == ("admin",) and claims.email == "ada@example.com"
    # The session cookie is HttpOnly and SameSite=Lax; the refresh token only goes to /portal.
    login = await browser.get("/portal/login")
    answer = await browser.post(
        "/portal/login",
        data={"csrf": csrf_of(login), "email": "ada@example.com", "password": PASSWORD},
    )
    # Logging in again ends the browser's earlier session.
    with pytest.raises(InvalidToken):
        await portal.ctx.identity.refresh(refresh)
    set_cookies = answer.headers.get_list("set-cookie")
    (access,) = [c for c in set_cookies if c.startswith("hoodrun_session=")]
    (refreshed,) = [c for c in set_cookies if c.startswith("hoodrun_refresh=")]
    assert "HttpOnly" in access and "SameSite=lax" in access and "Path=/;" in access
    assert "HttpOnly" in refreshed and "Path=/portal" in refreshed
    assert "Secure" not in access  # web.secure_cookies is off here

    page = await browser.get("/portal/keys")
    session, refresh = browser.cookies["hoodrun_session"], browser.cookies["hoodrun_refresh"]
    out = await browser.post("/portal/logout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/portal/login?notice=logged_out"
    assert "hoodrun_session" not in browser.cookies
    again = await browser.get("/portal/keys")
    assert again.status_code == 303
    assert again.headers["location"] == "/portal/login?next=/portal/keys"
    # The session is over: neither its refresh token nor its access token opens a page.
    stale = portal.client()
    stale.cookies.set("hoodrun_refresh", refresh, domain="portal.test", path="/portal")
    stale.cookies.set("hoodrun_session", session, domain="portal.test", path="/")
    assert (await stale.get("/portal/keys")).status_code == 303


async def test_an_unverified_address_cannot_log_in(portal: Portal) -> None:
    browser = portal.client()
    page = await browser.get("/portal/signup")
    form = {"csrf": csrf_of(page), "email": "bob@example.com", "password": PASSWORD}
    assert (await browser.post("/portal/signup", data=form)).status_code == 200
    login = await browser.get("/portal/login")
    answer = await browser.post(
        "/portal/login",
        data={"csrf": csrf_of(login), "email": "bob@example.com", "password": PASSWORD},
    )
    assert answer.status_code == 403
    assert "Verify your email address first" in answer.text
    # A wrong password says so, without telling whether the address exists.
    wrong = await browser.post(
        "/portal/login",
        data={"csrf": csrf_of(login), "email": "nobody@example.com", "password": "x" * 12},
    )
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
    # A used or unknown verification token is refused with a page, not an error.
    bad = await browser.post(
        "/portal/verify", data={"csrf": csrf_of(login), "token": "not-a-token"}
    )
    assert bad.status_code == 400 and "link is invalid" in bad.text


async def test_a_post_without_the_csrf_token_is_refused(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    org_id = org_of(portal, browser)
    keys: KeyService = portal.ctx.keys
    # No token, a wrong one, and one from another browser: refused before anything happens.
    for data in ({}, {"csrf": "forged"}):
        answer = await browser.post("/portal/keys", data={"name": "x", **data})
        assert answer.status_code == 403
        assert "security token does not match" in answer.text
    other = portal.client()
    other_token = csrf_of(await other.get("/portal/login"))
    answer = await browser.post("/portal/keys", data={"name": "x", "csrf": other_token})
    assert answer.status_code == 403
    assert await keys.list(org=org_id) == []
    # Also the forms before a login (a login forged by another site).
    fresh = portal.client()
    forged = await fresh.post(
        "/portal/login", data={"email": "ada@example.com", "password": PASSWORD}
    )
    assert forged.status_code == 403 and "hoodrun_session" not in fresh.cookies
    # htmx sends the token as a header.
    token = csrf_of(await browser.get("/portal/keys"))
    made = await browser.post(
        "/portal/keys",
        data={"name": "via-htmx"},
        headers={"HX-Request": "true", "X-CSRF-Token": token},
    )
    assert made.status_code == 201
    assert [k.name for k in await keys.list(org=org_id)] == ["via-htmx"]


async def test_an_expired_access_token_is_refreshed_on_the_way(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    first = browser.cookies["hoodrun_session"]
    portal.clock.advance(timedelta(seconds=portal.ctx.config.auth.access_ttl + 5))
    page = await browser.get("/portal/keys")
    assert page.status_code == 200 and "ada@example.com" in page.text
    renewed = browser.cookies["hoodrun_session"]
    assert renewed != first
    assert portal.ctx.identity.decode(renewed).expires_at > portal.clock.now
    # Two requests with the same spent refresh token at once are one refresh, not a theft.
    portal.clock.advance(timedelta(seconds=portal.ctx.config.auth.access_ttl + 5))
    stale = {"hoodrun_refresh": browser.cookies["hoodrun_refresh"]}
    twin = portal.client()
    for client in (browser, twin):
        client.cookies.clear()
        client.cookies.set(
            "hoodrun_refresh", stale["hoodrun_refresh"], domain="portal.test", path="/portal"
        )
    import asyncio

    pages = await asyncio.gather(browser.get("/portal/keys"), twin.get("/portal/keys"))
    assert [p.status_code for p in pages] == [200, 200]
    assert (await browser.get("/portal/keys")).status_code == 200


async def test_the_org_switcher_moves_the_session(portal: Portal) -> None:
    ada = portal.client()
    await portal.sign_up(ada, "ada@example.com", org_name="first")
    first = org_of(portal, ada)
    bob = portal.client()
    await portal.sign_up(bob, "bob@example.com", org_name="second")
    second = org_of(portal, bob)
    await portal.ctx.identity.add_member(second, "ada@example.com", "viewer", actor="test")
    page = await ada.get("/portal/keys")
    assert "hoodrun_session" in ada.cookies
    # Ada's current token predates the membership: log in again to see both orgs.
    page = await portal.log_in(ada, "ada@example.com")
    assert 'id="org-switcher"' in page.text and "second (viewer)" in page.text
    moved = await ada.post("/portal/org", data={"csrf": csrf_of(page), "org_id": second})
    assert moved.status_code == 303
    assert org_of(portal, ada) == second
    assert portal.ctx.identity.decode(ada.cookies["hoodrun_session"]).roles == ("viewer",)
    page = await ada.get("/portal/keys")
    assert "no-key-write" in page.text  # a viewer there
    # An org the user is not in is refused.
    refused = await ada.post("/portal/org", data={"csrf": csrf_of(page), "org_id": "org_nope"})
    assert refused.status_code == 403
    assert org_of(portal, ada) in (first, second)


async def test_forgotten_password(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    other = portal.client()
    page = await other.get("/portal/forgot")
    for email in ("ada@example.com", "nobody@example.com"):  # the same answer for both
        sent = await other.post("/portal/forgot", data={"csrf": csrf_of(page), "email": email})
        assert sent.status_code == 200 and "If an account has that address" in sent.text
    message = await portal.sink.wait_for("ada@example.com", count=2)
    import re

    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    link = re.search(r"https?://\S+/portal/reset\?token=[A-Za-z0-9_\-]+", body)
    assert link is not None, body
    form = await other.get(link.group(0))
    new_password = "an entirely new passphrase"
    mismatch = await other.post(
        "/portal/reset",
        data={"csrf": csrf_of(form), "token": token_of(form), "password": new_password,
              "password_again": "something else"},
    )  # fmt: skip
    assert mismatch.status_code == 400 and "differ" in mismatch.text
    done = await other.post(
        "/portal/reset",
        data={"csrf": csrf_of(form), "token": token_of(form), "password": new_password,
              "password_again": new_password},
    )  # fmt: skip
    assert done.status_code == 303 and "password_reset" in done.headers["location"]
    # Every session ended: the first browser is sent to the login page.
    assert (await browser.get("/portal/keys")).status_code == 303


async def test_a_login_only_sends_you_within_the_portal(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    for target, expected in (
        ("/portal/usage?days=30", "/portal/usage?days=30"),
        ("https://evil.example/portal/x", "/portal/keys"),
        ("//evil.example/portal/", "/portal/keys"),
        ("/portal\\@evil.example", "/portal/keys"),
    ):
        page = await browser.get("/portal/login")
        answer = await browser.post(
            "/portal/login",
            data={"csrf": csrf_of(page), "email": "ada@example.com", "password": PASSWORD,
                  "next": target},
        )  # fmt: skip
        assert answer.headers["location"] == expected


async def test_changes_are_audited_with_the_user_and_address(portal: Portal) -> None:
    browser = portal.client()
    await portal.sign_up(browser, "ada@example.com")
    user_id = portal.ctx.identity.decode(browser.cookies["hoodrun_session"]).user_id
    page = await browser.get("/portal/keys")
    made = await browser.post("/portal/keys", data={"csrf": csrf_of(page), "name": "audited"})
    assert made.status_code == 201
    async with portal.store.connect() as conn:
        rows = (
            await conn.execute(select(audit_log).where(audit_log.c.action == "key.create"))
        ).mappings().all()  # fmt: skip
    assert [(r["actor"], r["ip"]) for r in rows] == [(f"user:{user_id}", "203.0.113.9")]

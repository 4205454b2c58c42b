"""The customer portal end to end, in headless Chromium (Debian's ``chromium`` through
Playwright) against the real platform (``run_platform``: gateway and api in one process, an
anvil devnet, SQLite, embedded chDB) with mail going to a real SMTP server in the test.

A person signs up, follows the verification link from the mail, logs in, creates a key (read
once from the page), calls the gateway with it, sees the usage chart show those calls, changes
plan after a proration preview, and opens an invoice closed from that usage, and its document.
Screenshots of each step go to the test's tmp path and to ``test-artifacts/portal/``.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from hoodrun.billing.close import PeriodCloser
from hoodrun.billing.invoices import Invoice, InvoiceBook
from hoodrun.config import Config
from hoodrun.devnet import Anvil, free_port
from hoodrun.keys.service import KeyService
from hoodrun.metering.entitlements import month_bounds
from hoodrun.metering.store import ContractBook
from hoodrun.store import Store
from hoodrun.store.tables import orgs
from hoodrun.telemetry.rollup import Rollups
from hoodrun.telemetry.store import ChdbStore
from tests._platform import PlatformThread
from tests._smtp import SmtpSink
from tests._stores import FakeClock
from tests.web.support import PASSWORD, PLANS, ROOT, SECRET

ARTIFACTS = ROOT / "test-artifacts" / "portal"
EMAIL = "grace@example.com"
ORG = "Hopper Labs"
CALLS = 5
DEADLINE = 60.0
T = TypeVar("T")


class Shots:
    """Screenshots, numbered in the order taken, in the tmp path and the repo's artifacts."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        self.count += 1
        path = self.directory / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        shutil.copyfile(path, ARTIFACTS / path.name)


@pytest.fixture
def devnet(anvil_factory: Any) -> Iterator[Anvil]:
    yield anvil_factory(chain_id=1)


def _config(tmp_path: Path, chdb_path: Path, node: Anvil, sink: SmtpSink) -> Config:
    api_port = free_port()
    return Config.model_validate(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "api_listen": f"127.0.0.1:{api_port}",
            "data_dir": str(tmp_path / "data"),
            "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
            "admin_token": "portal-e2e-admin-token",
            "analytics_path": str(chdb_path),
            "analytics_database": f"t_{uuid.uuid4().hex[:12]}",
            "log_format": "text",
            "telemetry": {"flush_interval": 0.2, "rollup_interval": 0.5},
            "default_plan": "free",
            "plans": PLANS,
            "chains": [
                {"name": "eth", "chain_id": 1, "upstreams": [{"name": "eth-anvil", "url": node.url}]}
            ],
            "auth": {"jwt_secret": SECRET, "argon2_time_cost": 1, "argon2_memory_kib": 64,
                     "argon2_parallelism": 1},
            "smtp": sink.config().model_dump(),
            "web": {"public_url": f"http://127.0.0.1:{api_port}",
                    "assets_dir": str(ROOT / "node_modules")},
        }
    )  # fmt: skip


def _mail_link(sink: SmtpSink, address: str) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for message in sink.to(address):
            body = message.get_body(("plain",))
            assert body is not None
            found = re.search(
                r"https?://\S+/portal/verify\?token=[A-Za-z0-9_\-]+", body.get_content()
            )
            if found:
                return found.group(0)
        time.sleep(0.05)
    raise AssertionError(f"no verification mail for {address}")


async def _sign_contract(config: Config) -> str:
    """The org's contract on the metered plan from the month's start (as an operator signs a
    customer up); returns the org's id."""
    async with Store(config.database_url) as store:
        async with store.connect() as conn:
            org_id = str(await conn.scalar(select(orgs.c.id).where(orgs.c.name == ORG)))
        book = ContractBook(store, config)
        start, _ = month_bounds(datetime.now(UTC))
        await book.create(org_id, "starter", starts_at=start, actor="operator")
        await KeyService(store, config).change_org_plan(org_id, "starter", actor="operator")
    return org_id


async def _invoice(config: Config, org_id: str) -> Invoice:
    """Close this month for the org as the billing worker does once it has ended, and make its
    invoice."""
    analytics = ChdbStore(config.analytics_path, config.analytics_database)  # type: ignore[arg-type]
    try:
        await Rollups(analytics).catch_up()  # the calls' hour in the hourly rollup
        async with Store(config.database_url) as store:
            start, end = month_bounds(datetime.now(UTC))
            closer = PeriodCloser(
                store, analytics, config, clock=FakeClock(end + timedelta(hours=1))
            )
            result = await closer.close(f"{start:%Y-%m}", orgs=[org_id], actor="operator")
            assert result.ok and len(result.closed) == 1, result
            book = InvoiceBook(store, config)
            return await book.create_from_snapshot(result.closed[0].id, provider="none")
    finally:
        await analytics.aclose()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """A coroutine on a loop of its own, in a thread: Playwright's sync API runs a loop here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _chart_total(page: Page, chart: str) -> float:
    total: float = page.evaluate(
        """(id) => { const c = Chart.getChart(id); if (!c) return -1;
             return c.data.datasets.reduce((s, d) => s + d.data.reduce((a, b) => a + (b || 0), 0), 0); }""",
        chart,
    )
    return total


def test_sign_up_key_call_usage_plan_change_and_invoice_in_chromium(
    page: Page,
    tmp_path: Path,
    chdb_path: Path,
    devnet: Anvil,
    smtp_sink: SmtpSink,
) -> None:
    config = _config(tmp_path, chdb_path, devnet, smtp_sink)
    shots = Shots(page, tmp_path / "screenshots")
    page.set_default_timeout(15_000)
    with PlatformThread(config) as running:
        portal = f"{running.api_url}/portal"
        # Sign up.
        page.goto(f"{portal}/signup")
        page.fill("#email", EMAIL)
        page.fill("#name", "Grace")
        page.fill("#org_name", ORG)
        page.fill("#password", PASSWORD)
        shots("signup")
        page.click("button[type=submit]")
        expect(page.locator("#signup-done")).to_contain_text(EMAIL)
        # Follow the link from the mail.
        link = _mail_link(smtp_sink, EMAIL)
        assert link.startswith(f"{portal}/verify?token=")
        page.goto(link)
        page.click("#verify")
        expect(page.locator("#notice")).to_contain_text("verified")
        # Log in.
        page.fill("#email", EMAIL)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{portal}/keys")
        expect(page.locator("#org-name")).to_contain_text(ORG)
        org_id = _run(_sign_contract(config))

        # Create a key: shown once, with a copy button.
        page.fill("#key-name", "e2e")
        page.check("input[name=chains][value=eth]")
        page.click("#create-key-button")
        expect(page.locator("#new-key")).to_be_visible()
        key = page.locator("#new-key").inner_text().strip()
        assert key.startswith("hr_")
        expect(page.locator("#copy-key")).to_be_visible()
        expect(page.locator("#keys-table")).to_contain_text("e2e")
        shots("key-created")
        page.reload()
        assert key not in page.content()  # never shown again

        # Call the gateway with it.
        with httpx.Client(timeout=10) as client:
            for n in range(CALLS):
                answer = client.post(
                    f"{running.gateway_url}/eth/v1/{key}",
                    json={"jsonrpc": "2.0", "id": n, "method": "eth_blockNumber", "params": []},
                )
                assert answer.status_code == 200 and "result" in answer.json(), answer.text

        # The usage chart shows those calls (reloaded until the analytics store has them).
        page.goto(f"{portal}/usage")
        deadline = time.monotonic() + DEADLINE
        while int(page.locator("#usage-total-requests").inner_text()) < CALLS:
            assert time.monotonic() < deadline, "the calls never reached the usage page"
            time.sleep(0.5)
            page.reload()
        assert int(page.locator("#usage-total-requests").inner_text()) == CALLS
        page.wait_for_function("() => window.Chart && Chart.getChart('chart-requests-chain')")
        assert _chart_total(page, "chart-requests-chain") == CALLS
        assert _chart_total(page, "chart-requests-method") == CALLS
        assert _chart_total(page, "chart-units-chain") == CALLS * 10  # eth_blockNumber: 10 CU
        shots("usage")
        page.goto(f"{portal}/keys")
        expect(page.locator("#keys-table")).to_contain_text("of 25.0/s")  # the rate and its limit
        shots("keys-headroom")

        # Change plan: the proration preview, then the change.
        page.goto(f"{portal}/billing")
        expect(page.locator("#plan-name")).to_have_text("starter")
        page.select_option("#plan-select", "growth")
        page.click("#preview-plan")
        expect(page.locator("#proration")).to_be_visible()
        expect(page.locator("#stay-total")).to_contain_text("USD")
        expect(page.locator("#change-total")).to_contain_text("USD")
        expect(page.locator("#proration-difference")).to_be_visible()
        shots("plan-preview")
        page.click("#confirm-plan-button")
        expect(page.locator("#plan-name")).to_have_text("growth")
        expect(page.locator("#notice")).to_contain_text("plan is changed")
        shots("plan-changed")

        # An invoice for the month, closed from those calls; opened in the portal.
        invoice = _run(_invoice(config, org_id))
        page.reload()
        page.click(f"text={invoice.number}")
        expect(page.locator("#invoice-number")).to_have_text(invoice.number)
        expect(page.locator("#billed-usage")).to_have_text(str(CALLS))
        expect(page.locator("#usage-reconciliation")).to_contain_text("they match")
        expect(page.locator("#invoice-usage")).to_contain_text("matches")
        shots("invoice")
        pdf = page.request.get(f"{portal}/invoices/{invoice.id}/document.pdf")
        assert pdf.ok and pdf.body().startswith(b"%PDF")
        page.click("#invoice-html")
        expect(page.locator("body")).to_contain_text(invoice.number)
        shots("invoice-document")

        # Logging out ends the session.
        page.goto(f"{portal}/keys")
        page.click("#logout")
        expect(page.locator("#notice")).to_contain_text("logged out")
        page.goto(f"{portal}/billing")
        expect(page).to_have_url(re.compile(r"/portal/login\?next=/portal/billing$"))

"""The portal's tests: pages over httpx (both store backends), and the whole platform in headless
Chromium (Debian's ``chromium`` through Playwright; see ../shared/reference/tooling.md)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests._smtp import smtp_sink  # noqa: F401 (fixture)
from tests._stores import (  # noqa: F401 (fixtures)
    clock,
    database_url,
    pg_clean,
    pg_migrated,
    sqlite_template,
    store,
)
from tests.web.support import portal  # noqa: F401 (fixture)

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch, with Debian's chromium (``playwright install`` is never run);
    its --headed and --slowmo still apply."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture
def page(browser_type_launch_args: dict[str, Any]) -> Iterator[Page]:
    """A page in a Playwright and a browser of the test's own, both stopped with it.

    pytest-playwright's ``page`` lives on a session-wide Playwright, whose event loop stays
    marked as running in the main thread after the test: every pytest-asyncio test after it in
    the session then fails ("Runner.run() cannot be called from a running event loop")."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(**browser_type_launch_args)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            yield context.new_page()
        finally:
            browser.close()


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """No base URL: the end-to-end test starts its own platform and uses absolute URLs."""
    return None

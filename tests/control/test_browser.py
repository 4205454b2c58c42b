"""The control center in headless Chromium (Debian's ``chromium`` through Playwright): an
operator, logged in with the portal's session cookie, cordons an upstream on the upstreams page
of a running platform (a gateway on two anvil nodes reporting to the fleet, the api role on a
real socket); the gateway takes it out of rotation and the page shows it applied. Screenshots
go to test-artifacts/control/."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from playwright.sync_api import Page, expect, sync_playwright

from hoodrun.config import Config
from hoodrun.devnet import free_port
from hoodrun.ops.fleet import FleetReporter, gateway_status
from hoodrun.store import Store
from tests.control.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.control.support import PASSWORD, control_app
from tests.gateway.conftest import ThreadedGateway, make_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "control"
T = TypeVar("T")


class ApiThread:
    """The api role's app (admin API, fleet routes, control center, the pages' assets) under
    uvicorn on its own event loop in a thread, with its own store."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ctx: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            async with Store(self.config.database_url) as store:
                app, self.ctx = control_app(self.config, store, assets=True)
                self._server = uvicorn.Server(
                    uvicorn.Config(
                        app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning"
                    )
                )
                task = asyncio.get_running_loop().create_task(self._server.serve())
                while not self._server.started and not task.done():
                    await asyncio.sleep(0.02)
                self._ready.set()
                await task
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> ApiThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(30)


@pytest.fixture
def platform(tmp_path: Path, anvil_factory: Any) -> Any:
    url = f"sqlite:///{tmp_path}/hoodrun.db"  # migrated by the gateway as it starts
    nodes = [anvil_factory(chain_id=1), anvil_factory(chain_id=1)]
    config = make_config(
        url,
        {"eth": (1, nodes)},
        data_dir=str(tmp_path / "data"),
        auth={"jwt_secret": "b" * 40, "argon2_time_cost": 1, "argon2_memory_kib": 64,
              "argon2_parallelism": 1},
        web={"assets_dir": str(ROOT / "node_modules")},
    )  # fmt: skip
    gw = ThreadedGateway(config, cordon_poll_interval=0.2).start()
    runtime = gw.runtime
    assert runtime is not None and runtime.keys is not None
    reporter = FleetReporter(
        runtime.keys.store, "gateway", lambda: gateway_status(runtime.gateway), interval=0.3
    )
    gw.run(reporter.__aenter__())
    api = ApiThread(config).start()
    try:
        yield gw, api
    finally:
        api.stop()
        gw.run(reporter.__aexit__(None, None, None))
        gw.stop()


@pytest.fixture
def page() -> Any:
    """A page of headless Chromium, closed (with Playwright's loop) when the test ends.

    Not pytest-playwright's session-long fixtures: their event loop would stay current in this
    thread and the async tests that run after this one could not start theirs."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            browser.close()


def test_operator_cordons_an_upstream_in_the_browser(platform: Any, page: Page) -> None:
    gw, api = platform
    identity = api.ctx.identity
    api.run(identity.create_user("ops@example.com", password=PASSWORD, platform_role="ops",
                                 actor="test"))  # fmt: skip
    session = api.run(identity.login("ops@example.com", PASSWORD))
    page.context.add_cookies(
        [{"name": "hoodrun_session", "value": session.access_token, "url": api.url}]
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{api.url}/control/upstreams")
    expect(page.locator("h1")).to_have_text("Upstream nodes")
    row = page.locator('tr[data-upstream="eth/eth-0"]')
    expect(row.locator("td.state")).to_contain_text("serving", timeout=15_000)

    row.locator('input[name="reason"]').fill("kernel upgrade")
    row.get_by_role("button", name="Cordon").click()
    expect(page.locator("#notice")).to_contain_text("eth / eth-0 is cordoned")
    # The gateway applies it within its poll; its next fleet report, the panel's next refresh.
    expect(row.locator("td.state")).to_have_text("cordoned", timeout=20_000)
    expect(row).to_contain_text("kernel upgrade")
    expect(row.get_by_role("button", name="Uncordon")).to_be_visible()
    assert gw.runtime.gateway.chains["eth"].pool.cordoned() == frozenset({"eth-0"})
    page.screenshot(path=str(ARTIFACTS / "upstreams-cordoned.png"), full_page=True)

    row.get_by_role("button", name="Uncordon").click()
    expect(page.locator("#notice")).to_contain_text("back in rotation")
    expect(row.locator("td.state")).to_have_text("serving", timeout=20_000)
    assert gw.runtime.gateway.chains["eth"].pool.cordoned() == frozenset()
    page.goto(f"{api.url}/control")
    expect(page.locator('tr[data-role="gateway"]')).to_contain_text("1")
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

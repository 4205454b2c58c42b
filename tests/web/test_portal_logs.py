"""The portal's logs pages over httpx (both store backends; chDB for the analytics store): a
member sees their project's log lines, top errors, charts' series and request records; filters,
paging and a request's detail; another org's project is never shown; 503 without the analytics
store. Then the logs page in headless Chromium: its charts are drawn and "More" loads the next
lines; a screenshot goes to ``test-artifacts/portal/logs.png``."""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Page, expect

from hoodrun.config import Config, RetentionConfig
from hoodrun.devnet import free_port
from hoodrun.explorer.requests import RequestExplorer
from hoodrun.explorer.schema import create_logs_table
from hoodrun.identity import IdentityService
from hoodrun.keys.service import KeyService
from hoodrun.store import Store, upgrade
from hoodrun.telemetry.reporting import Reports
from hoodrun.telemetry.store import ChdbStore
from hoodrun.web.context import WebContext
from hoodrun.web.portal import portal_router
from hoodrun.web.portal_logs import CALLS_PER_PAGE, LINES_PER_PAGE, payloads
from tests._smtp import SmtpSink
from tests.explorer_query.support import insert_lines, insert_records, line, record
from tests.web.support import PASSWORD, ROOT, Portal, org_of, portal_config

HTMX = {"HX-Request": "true"}
ARTIFACTS = ROOT / "test-artifacts" / "portal"
T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------------


@dataclass
class Member:
    """A signed-up person with a session, their org and a project (made with a key)."""

    client: httpx.AsyncClient
    org_id: str
    project_id: str
    key_id: str

    def at(self, **changes: Any) -> dict[str, Any]:
        """A log line's ownership fields for ``line(...)``."""
        return {"project": self.project_id, "org_id": self.org_id, "key_id": self.key_id, **changes}

    def owns(self) -> dict[str, Any]:
        """A request record's ownership fields for ``record(...)``."""
        return {"project_id": self.project_id, "org_id": self.org_id, "key_id": self.key_id}


async def member(portal: Portal, email: str, org: str, project: str = "web") -> Member:
    client = portal.client()
    await portal.sign_up(client, email, org_name=org)
    created = await portal.ctx.keys.create(org=org, project=project, actor="test")
    record_ = created.record
    assert record_.org_id == org_of(portal, client)
    return Member(client, record_.org_id, record_.project_id, record_.id)


def ago(minutes: float) -> datetime:
    # The analytics rows' TTL and the pages' default range run on the real clock.
    return datetime.now(UTC) - timedelta(minutes=minutes)


def shown_lines(page: httpx.Response) -> list[tuple[str, str]]:
    """(level, id) of each log line in a page or a fragment."""
    return re.findall(r'<tr class="log-line" data-level="(\w+)" data-id="([^"]+)">', page.text)


def top_errors(page: httpx.Response) -> dict[str, tuple[int, int, str]]:
    """fingerprint: (count, fatal, sample) of the top errors table."""
    rows = re.findall(
        r'<tr data-fingerprint="([^"]+)">\s*<td class="num">([\d,]+)</td>\s*'
        r'<td class="num">([\d,]+)</td>\s*<td[^>]*>[^<]*</td>\s*<td[^>]*>[^<]*</td>\s*'
        r'<td class="message">([^<]*)<',
        page.text,
    )
    return {fp: (int(n), int(fatal), html.unescape(sample)) for fp, n, fatal, sample in rows}


def series(page: httpx.Response) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="logs-data">(.*?)</script>', page.text)
    assert found is not None, page.text[:3000]
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def more_url(page: httpx.Response) -> str | None:
    found = re.search(r'id="(?:logs|calls)-more-button" href="[^"]*" hx-get="([^"]+)"', page.text)
    return html.unescape(found.group(1)) if found else None


def shown_calls(page: httpx.Response) -> list[str]:
    return re.findall(r'<tr class="request-call" data-request="([^"]+)"', page.text)


async def ada_and_bob(portal: Portal) -> tuple[Member, Member]:
    """Two orgs with a project each, and log lines for both at the same times."""
    await create_logs_table(portal.analytics)
    ada = await member(portal, "ada@example.com", "Ada Labs")
    bob = await member(portal, "bob@example.com", "Bob Corp")
    refused = "database connection refused"
    lines = [
        line(ago(50), "a1", refused, level="error", fingerprint="f1", **ada.at()),
        line(ago(40), "a2", refused, level="error", fingerprint="f1", service="worker", **ada.at()),
        line(ago(30), "a3", refused, level="error", fingerprint="f1", **ada.at()),
        line(ago(29), "a4", "out of memory", level="fatal", fingerprint="f2", **ada.at()),
        line(ago(20), "a5", "disk almost full", level="warn", **ada.at()),
        line(ago(10), "a6", "cache miss for user 7", level="debug", service="worker", **ada.at()),
        line(ago(5), "a7", "payment 4711 accepted", attributes={"region": "eu"}, **ada.at()),
        # Bob's: the same fingerprint and words, at the same times.
        line(ago(40), "b1", refused, level="error", fingerprint="f1", **bob.at()),
        line(ago(6), "b2", "bob's own payment line", **bob.at()),
    ]  # fmt: skip
    await insert_lines(portal.analytics, lines)
    return ada, bob


# --- application logs ---------------------------------------------------------------------------


async def test_a_member_sees_the_projects_lines_top_errors_and_charts(portal: Portal) -> None:
    ada, _ = await ada_and_bob(portal)
    page = await ada.client.get("/portal/logs")  # the first (only) project by default
    assert page.status_code == 200, page.text
    assert 'href="/portal/logs" class="active"' in page.text  # the nav link
    assert f'<option value="{ada.project_id}" selected>web</option>' in page.text
    # Newest first, only Ada's.
    assert [i for _, i in shown_lines(page)] == ["a7", "a6", "a5", "a4", "a3", "a2", "a1"]
    assert "own payment line" not in page.text
    assert "region=eu" in page.text
    # Top errors by fingerprint: Bob's line of the same fingerprint is not counted.
    top = top_errors(page)
    assert top == {
        "f1": (3, 0, "database connection refused"),
        "f2": (1, 1, "out of memory"),
    }
    assert list(top) == ["f1", "f2"]  # the most frequent first
    # The charts' series: every 5 minutes of the last 24 hours, and the lines per level.
    data = series(page)
    assert len(data["windows"]) in (288, 289)
    assert sum(data["total"]) == 7 and sum(data["errors"]) == 4
    assert max(data["rate"]) == 100.0
    assert dict(zip(data["levels"], data["lines"], strict=True)) == {
        "trace": 0, "debug": 1, "info": 1, "warn": 1, "error": 3, "fatal": 1,
    }  # fmt: skip
    assert "chart.umd.min.js" in page.text and 'id="chart-error-rate"' in page.text
    assert 'id="chart-volume"' in page.text
    assert "logs-more-button" not in page.text  # one page

    # A member with the viewer role sees them too.
    await portal.ctx.identity.create_user(
        "vic@example.com", password=PASSWORD, actor="test", verified=True
    )
    await portal.ctx.identity.add_member(ada.org_id, "vic@example.com", "viewer", actor="test")
    viewer = portal.client()
    await portal.log_in(viewer, "vic@example.com")
    seen = await viewer.get(f"/portal/logs?project={ada.project_id}")
    assert seen.status_code == 200 and len(shown_lines(seen)) == 7


async def test_filters_narrow_the_lines(portal: Portal) -> None:
    ada, _ = await ada_and_bob(portal)

    async def ids(**params: Any) -> list[str]:
        page = await ada.client.get("/portal/logs", params={"project": ada.project_id, **params})
        assert page.status_code == 200, page.text
        return [i for _, i in shown_lines(page)]

    page = await ada.client.get("/portal/logs", params={"level": "error"})
    assert {level for level, _ in shown_lines(page)} == {"error"}
    assert [i for _, i in shown_lines(page)] == ["a3", "a2", "a1"]
    assert '<option value="error" selected>' in page.text  # the form keeps the filter
    # Top errors and charts count every level, whatever the level filter.
    assert top_errors(page)["f2"] == (1, 1, "out of memory")
    assert sum(series(page)["total"]) == 7
    assert await ids(level=">=warn") == ["a5", "a4", "a3", "a2", "a1"]
    assert await ids(q="refused") == ["a3", "a2", "a1"]  # a whole word
    assert await ids(q="REFUSED connection") == ["a3", "a2", "a1"]  # every word, any case
    assert await ids(q="refuse") == []  # not a whole word
    assert await ids(q='"almost full"') == ["a5"]
    assert await ids(q="payment") == ["a7"]  # Bob's payment line is not Ada's
    assert await ids(service="worker") == ["a6", "a2"]
    assert await ids(attr="region=eu") == ["a7"]
    assert await ids(attr="region=us") == []
    assert await ids(**{"from": "35m"}) == ["a7", "a6", "a5", "a4", "a3"]
    assert await ids(**{"from": "35m", "to": "15m"}) == ["a5", "a4", "a3"]
    # Top errors follow the other filters.
    narrowed = await ada.client.get("/portal/logs", params={"service": "worker"})
    assert top_errors(narrowed) == {"f1": (1, 0, "database connection refused")}
    # A bad filter is explained in the page.
    bad = await ada.client.get("/portal/logs", params={"level": "loud"})
    assert bad.status_code == 400 and "&#39;loud&#39; is not a level" in bad.text
    assert 'id="logs-filters"' in bad.text
    bad = await ada.client.get("/portal/logs", params={"attr": "region"})
    assert bad.status_code == 400 and "use key=value" in bad.text
    bad = await ada.client.get("/portal/logs", params={"from": "yesterday"})
    assert bad.status_code == 400 and "is not a time" in bad.text


async def test_more_loads_the_next_lines_with_htmx(portal: Portal) -> None:
    await create_logs_table(portal.analytics)
    ada = await member(portal, "ada@example.com", "Ada Labs")
    total = 2 * LINES_PER_PAGE + 7
    await insert_lines(
        portal.analytics,
        [
            line(ago(100 - i * 0.5), f"n{i:03d}", f"line {i}", level="warn" if i % 2 else "info",
                 **ada.at())
            for i in range(total)
        ],
    )  # fmt: skip
    page = await ada.client.get("/portal/logs", params={"q": "line"})
    seen = [i for _, i in shown_lines(page)]
    assert len(seen) == LINES_PER_PAGE
    url = more_url(page)
    assert url is not None and url.startswith("/portal/logs/lines?") and "q=line" in url
    while url is not None:
        fragment = await ada.client.get(url, headers=HTMX)
        assert fragment.status_code == 200 and "<html" not in fragment.text
        assert fragment.text.lstrip().startswith("<tr") or not fragment.text.strip()
        seen += [i for _, i in shown_lines(fragment)]
        url = more_url(fragment)
    assert seen == [f"n{i:03d}" for i in reversed(range(total))]  # no gaps, no repeats
    # Without htmx the link is a page starting after the first.
    plain = re.search(r'id="logs-more-button" href="([^"]+)"', page.text)
    assert plain is not None
    second = await ada.client.get(html.unescape(plain.group(1)))
    assert second.status_code == 200 and "<html" in second.text
    assert [i for _, i in shown_lines(second)] == seen[LINES_PER_PAGE : 2 * LINES_PER_PAGE]
    # The filters go along: level warn only.
    warn = await ada.client.get("/portal/logs", params={"level": "warn"})
    follow = more_url(warn)
    assert follow is not None and "level=warn" in follow
    nxt = await ada.client.get(follow, headers=HTMX)
    assert {level for level, _ in shown_lines(nxt)} == {"warn"}
    bad = await ada.client.get(
        f"/portal/logs/lines?project={ada.project_id}&cursor=x", headers=HTMX
    )
    assert bad.status_code == 400 and bad.text.startswith('<div class="error"')


async def test_another_orgs_project_is_never_shown(portal: Portal) -> None:
    ada, bob = await ada_and_bob(portal)
    await insert_records(
        portal.analytics,
        [record(ago(3), "req-ada", **ada.owns()), record(ago(3), "req-bob", **bob.owns())],
    )
    for path in (
        f"/portal/logs?project={bob.project_id}",
        f"/portal/logs?project={bob.project_id}&q=payment",
        f"/portal/logs/lines?project={bob.project_id}",
        f"/portal/logs/requests?project={bob.project_id}",
        f"/portal/logs/calls?project={bob.project_id}",
        f"/portal/logs/requests/req-bob?project={bob.project_id}",
        f"/portal/logs/requests/req-bob?project={ada.project_id}",  # Ada's project has no such
        "/portal/logs?project=prj_nope",
    ):
        answer = await ada.client.get(path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert (
            "b1" not in [i for _, i in shown_lines(answer)]
            and "bob&#39;s own payment" not in answer.text
        )
        assert "req-bob" not in shown_calls(answer)
        assert "database connection refused" not in answer.text
    # And Bob sees only his.
    own = await bob.client.get("/portal/logs")
    assert [i for _, i in shown_lines(own)] == ["b2", "b1"]
    assert top_errors(own) == {"f1": (1, 0, "database connection refused")}
    assert shown_calls(await bob.client.get("/portal/logs/requests")) == ["req-bob"]
    assert shown_calls(await ada.client.get("/portal/logs/requests")) == ["req-ada"]


# --- the request explorer -----------------------------------------------------------------------


async def test_the_request_explorer_filters_pages_and_shows_a_request(portal: Portal) -> None:
    ada = await member(portal, "ada@example.com", "Ada Labs")
    other_key = await portal.ctx.keys.create(org="Ada Labs", project="web", actor="test")
    mine = ada.owns()
    batch = {
        "methods": ("eth_call", "eth_getBalance", "eth_chainId"),
        "calls": 3,
        "call_results": ((0, None), (-32602, None), (0, None)),
        "bytes_in": 300,
        "bytes_out": 900,
    }
    await insert_records(
        portal.analytics,
        [
            record(ago(10), "r1", **mine),
            record(ago(9), "r2", "eth_getLogs", error_code=-32000, latency=0.300, **mine),
            record(ago(8), "r3", "eth_blockNumber", chain="base",
                   **{**mine, "key_id": other_key.record.id}),
            record(ago(7), "r4", "eth_estimateGas", status=429, reason="rate_limited",
                   error_code=-32005, **mine),
            record(ago(6), "r5", "batch", **batch, **mine),
            record(ago(2 * 24 * 60), "r-old", **mine),  # two days ago: outside the default range
        ],
    )  # fmt: skip
    client = ada.client

    async def requests(**params: Any) -> list[str]:
        page = await client.get("/portal/logs/requests", params=params)
        assert page.status_code == 200, page.text
        return shown_calls(page)

    page = await client.get("/portal/logs/requests")
    assert page.status_code == 200 and 'id="logs-tabs"' in page.text
    assert shown_calls(page) == ["r5", "r5", "r5", "r4", "r3", "r2", "r1"]
    assert "call 3 of 3" in page.text
    assert other_key.record.name is None and f'value="{other_key.record.id}"' in page.text
    assert await requests(method="eth_getLogs") == ["r2"]
    assert await requests(method="eth_call,eth_getBalance") == ["r5", "r5", "r1"]
    assert await requests(outcome="rate_limited") == ["r4"]
    assert await requests(outcome="rpc_error") == ["r5", "r2"]
    assert await requests(error_code="-32602") == ["r5"]
    assert await requests(latency_above="100") == ["r2"]
    assert await requests(chain="base") == ["r3"]
    assert await requests(key=other_key.record.id) == ["r3"]
    assert await requests(**{"from": "3d"}) == ["r5", "r5", "r5", "r4", "r3", "r2", "r1", "r-old"]
    bad = await client.get("/portal/logs/requests", params={"error_code": "abc"})
    assert bad.status_code == 400 and "is not a whole number" in bad.text

    # A request's detail: the batch, its calls, and whether payloads were captured.
    link = re.search(r'href="(/portal/logs/requests/r5\?[^"]+)"', page.text)
    assert link is not None
    detail = await client.get(html.unescape(link.group(1)))
    assert detail.status_code == 200, detail.text
    assert '<code id="request-id">r5</code>' in detail.text
    assert "batch of 3" in detail.text and 'id="request-status" class="good">200<' in detail.text
    assert detail.text.count('<tr class="detail-call">') == 3
    assert "eth_getBalance" in detail.text and "-32602" in detail.text
    found = await RequestExplorer(portal.analytics).detail(ada.project_id, "r5", org=ada.org_id)
    assert found is not None
    if payloads(found) is None:
        assert 'id="payload-capture-off"' in detail.text
        assert "Payload capture is off" in detail.text
    refused = await client.get(f"/portal/logs/requests/r4?project={ada.project_id}")
    assert refused.status_code == 200 and 'id="request-status" class="bad">429<' in refused.text
    assert "rate_limited" in refused.text and "single call" in refused.text
    assert (
        await client.get(f"/portal/logs/requests/nope?project={ada.project_id}")
    ).status_code == 404


async def test_request_pages_go_on_with_htmx(portal: Portal) -> None:
    ada = await member(portal, "ada@example.com", "Ada Labs")
    total = CALLS_PER_PAGE + 5
    await insert_records(
        portal.analytics,
        [record(ago(60 - i * 0.5), f"p{i:03d}", **ada.owns()) for i in range(total)],
    )
    page = await ada.client.get("/portal/logs/requests", params={"method": "eth_call"})
    seen = shown_calls(page)
    assert len(seen) == CALLS_PER_PAGE
    url = more_url(page)
    assert url is not None and url.startswith("/portal/logs/calls?") and "method=eth_call" in url
    fragment = await ada.client.get(url, headers=HTMX)
    assert fragment.status_code == 200 and more_url(fragment) is None
    seen += shown_calls(fragment)
    assert seen == [f"p{i:03d}" for i in reversed(range(total))]


def test_payload_excerpts_are_shown_when_captured() -> None:
    calls = [
        {"call_index": 0, "params_excerpt": '["0x1", "latest"]', "response_excerpt": '"0x2"'},
        {"call_index": 1, "params_excerpt": None, "response_excerpt": None},
    ]
    assert payloads({"calls": calls}) == [
        {"call": 0, "params": '["0x1", "latest"]', "response": '"0x2"'}
    ]
    assert payloads({"calls": [], "params_excerpt": [1], "response_excerpt": {"a": 1}}) == [
        {"call": None, "params": "[1]", "response": '{"a":1}'}
    ]
    assert payloads({"calls": [{"call_index": 0, "method": "eth_call"}]}) is None


async def test_a_captured_payload_is_shown_in_the_detail(portal: Portal) -> None:
    """When the request explorer returns excerpts (projects with payload capture), the detail
    page shows them; until it does, it says payload capture is off."""
    ada = await member(portal, "ada@example.com", "Ada Labs")
    captured = record(ago(2), "cap1", **ada.owns())
    if hasattr(captured, "excerpts"):
        captured.excerpts = (('["0xabc", "latest"]', '"0x10"'),)
    await insert_records(portal.analytics, [captured])
    page = await ada.client.get(f"/portal/logs/requests/cap1?project={ada.project_id}")
    assert page.status_code == 200, page.text
    found = await RequestExplorer(portal.analytics).detail(ada.project_id, "cap1", org=ada.org_id)
    assert found is not None
    if "params_excerpt" not in found["calls"][0]:  # the explorer does not read them yet
        assert 'id="payload-capture-off"' in page.text
        return
    assert payloads(found) is not None
    assert 'id="payloads"' in page.text and 'id="payload-capture-off"' not in page.text
    assert "0xabc" in page.text and "0x10" in page.text
    # A request of the same project made without capture says so.
    await insert_records(portal.analytics, [record(ago(1), "plain", **ada.owns())])
    plain = await ada.client.get(f"/portal/logs/requests/plain?project={ada.project_id}")
    assert plain.status_code == 200 and 'id="payload-capture-off"' in plain.text
    assert 'id="payloads"' not in plain.text


# --- refusals -----------------------------------------------------------------------------------


async def test_without_the_analytics_store_the_pages_answer_503(portal: Portal) -> None:
    ada = await member(portal, "ada@example.com", "Ada Labs")
    portal.ctx.reports = lambda: None
    for path in (
        "/portal/logs",
        "/portal/logs/requests",
        f"/portal/logs/requests/r1?project={ada.project_id}",
    ):
        answer = await ada.client.get(path)
        assert answer.status_code == 503, path
        assert "the analytics store is not open" in answer.text
        assert "<html" in answer.text
    inline = await ada.client.get(f"/portal/logs/lines?project={ada.project_id}", headers=HTMX)
    assert inline.status_code == 503 and inline.text.startswith('<div class="error"')


async def test_logging_in_is_needed(portal: Portal) -> None:
    stranger = portal.client()
    answer = await stranger.get("/portal/logs?q=x")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/login?next=/portal/logs%3Fq%3Dx"


async def test_an_org_without_projects_is_told_how_to_make_one(portal: Portal) -> None:
    client = portal.client()
    await portal.sign_up(client, "ada@example.com", org_name="Ada Labs")
    for path in ("/portal/logs", "/portal/logs/requests"):
        page = await client.get(path)
        assert page.status_code == 200 and 'id="no-projects"' in page.text


# --- in Chromium --------------------------------------------------------------------------------


class PortalThread:
    """The portal on a real socket (uvicorn on an event loop of its own, in a thread), over a
    migrated SQLite store and a chDB database with an org, a project and its log lines."""

    def __init__(self, config: Config, database_url: str, chdb_path: Path) -> None:
        self.config = config
        self.database_url = database_url
        self.chdb_path = chdb_path
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ctx: WebContext | None = None
        self.analytics: ChdbStore | None = None
        self._server: uvicorn.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            await upgrade(self.database_url)
            analytics = self.analytics = ChdbStore(self.chdb_path, f"t_{uuid.uuid4().hex[:12]}")
            await analytics.setup(RetentionConfig())
            await create_logs_table(analytics)
            try:
                async with Store(self.database_url) as store:
                    reports = Reports(analytics)
                    self.ctx = WebContext(
                        config=self.config,
                        store=store,
                        identity=IdentityService(store, self.config, public_url=self.url, env={}),
                        keys=KeyService(store, self.config),
                        reports=lambda: reports,
                    )
                    app = FastAPI()
                    app.include_router(portal_router(self.ctx))
                    self._server = uvicorn.Server(
                        uvicorn.Config(
                            app,
                            host="127.0.0.1",
                            port=self.port,
                            lifespan="off",
                            log_level="warning",
                        )
                    )
                    task = asyncio.get_running_loop().create_task(self._server.serve())
                    while not self._server.started and not task.done():
                        await asyncio.sleep(0.02)
                    self._ready.set()
                    await task
            finally:
                await analytics.drop()
                await analytics.aclose()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> PortalThread:
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(60)


async def _seed(running: PortalThread) -> tuple[str, str]:
    """An org with a project, its admin and its lines; returns the project and a session."""
    ctx, analytics = running.ctx, running.analytics
    assert ctx is not None and analytics is not None
    created = await ctx.keys.create(org="Chart Co", project="checkout", actor="test")
    owner = created.record
    await ctx.identity.create_user("cy@example.com", password=PASSWORD, actor="test")
    await ctx.identity.add_member(owner.org_id, "cy@example.com", "admin", actor="test")
    mine: dict[str, Any] = {"project": owner.project_id, "org_id": owner.org_id, "key_id": owner.id}
    levels = ("info", "info", "debug", "warn", "error", "info", "fatal", "error")
    lines = [
        line(ago(180 - i * 3), f"l{i:03d}", f"order {i} handled" if i % 8 < 4 else
             f"payment {i} failed: timeout after 30s", level=levels[i % 8],
             fingerprint="fp-timeout" if levels[i % 8] in ("error", "fatal") else "",
             service="checkout" if i % 3 else "worker", **mine)
        for i in range(LINES_PER_PAGE + 10)
    ]  # fmt: skip
    await insert_lines(analytics, lines)
    owns = {"project_id": owner.project_id, "org_id": owner.org_id, "key_id": owner.id}
    await insert_records(
        analytics,
        [
            record(ago(30), "req-one", **owns),
            record(ago(20), "req-slow", "eth_getLogs", error_code=-32000, latency=0.8, **owns),
            record(ago(10), "req-batch", "batch", methods=("eth_call", "eth_chainId"), calls=2,
                   call_results=((0, None), (-32602, None)), **owns),
        ],
    )  # fmt: skip
    session = await ctx.identity.login("cy@example.com", PASSWORD)
    return owner.project_id, session.access_token


def test_the_logs_page_draws_its_charts_in_chromium(
    page: Page, tmp_path: Path, chdb_path: Path, smtp_sink: SmtpSink
) -> None:
    config = portal_config(tmp_path, smtp_sink)
    with PortalThread(config, f"sqlite:///{tmp_path}/portal.db", chdb_path) as running:
        project_id, token = running.run(_seed(running))
        page.context.add_cookies([{"name": "hoodrun_session", "value": token, "url": running.url}])
        page.set_default_timeout(15_000)
        page.goto(f"{running.url}/portal/logs?project={project_id}&from=4h")
        expect(page.locator("#logs-tabs")).to_be_visible()
        page.wait_for_function(
            "() => window.Chart && Chart.getChart('chart-error-rate')"
            " && Chart.getChart('chart-volume')"
        )
        totals = page.evaluate(
            """() => ['chart-error-rate', 'chart-volume'].map((id) => Chart.getChart(id)
                 .data.datasets[0].data.reduce((a, b) => a + (b || 0), 0))"""
        )
        errors = sum(1 for i in range(LINES_PER_PAGE + 10) if i % 8 in (4, 6, 7))
        assert totals == [errors, LINES_PER_PAGE + 10]
        expect(page.locator("#top-errors tbody tr")).to_have_count(1)
        expect(page.locator("#top-errors tbody tr td").first).to_have_text(str(errors))
        expect(page.locator("tr.log-line")).to_have_count(LINES_PER_PAGE)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "logs.png", full_page=True)
        # "More" brings the rest in place (htmx), and no button after the last page.
        page.click("#logs-more-button")
        expect(page.locator("tr.log-line")).to_have_count(LINES_PER_PAGE + 10)
        expect(page.locator("#logs-more-button")).to_have_count(0)
        # A level filter from the form.
        page.select_option("#logs-level", "fatal")
        page.click("#logs-search")
        expect(page.locator("tr.log-line")).to_have_count(
            sum(1 for i in range(LINES_PER_PAGE + 10) if i % 8 == 6)
        )
        expect(page.locator("tr.log-line[data-level=fatal]").first).to_be_visible()
        # The request explorer and a batch's detail (screenshots only: their content is
        # checked over httpx).
        page.click("#logs-tabs >> text=Requests")
        expect(page.locator("tr.request-call")).to_have_count(4)
        page.screenshot(path=ARTIFACTS / "requests.png", full_page=True)
        page.click("tr.request-call[data-request=req-batch] >> nth=0 >> a")
        expect(page.locator("#request-batch")).to_have_text("batch of 2")
        page.screenshot(path=ARTIFACTS / "request-detail.png", full_page=True)

"""Service levels from known telemetry rows in a real chDB store: the numbers of each indicator,
their verdicts against the seeds' targets, over the API and on the page."""

from __future__ import annotations

import inspect
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hoodrun.gateway import errors as gateway_errors
from hoodrun.ops.slo import SERVER_FAULTS, measure
from hoodrun.store import Store
from hoodrun.telemetry.reporting import Reports
from hoodrun.telemetry.rows import RowBuilder
from hoodrun.telemetry.store import ChdbStore
from hoodrun.telemetry.units import ComputeUnits
from tests.control.support import ORIGIN, TOKEN, control_app, control_config
from tests.telemetry.support import call_record

# "now" on a minute: the one-hour window then spans exactly 60 minutes. Rows are recent (the raw
# table's TTL runs on the real clock).
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
CHAINS = [
    {"name": "eth", "chain_id": 1, "upstreams": [{"name": "eth-0", "url": "http://127.0.0.1:9"}]},
    {"name": "base", "chain_id": 8453, "upstreams": [{"name": "b-0", "url": "http://127.0.0.1:9"}]},
    {"name": "polygon", "chain_id": 137, "upstreams": [{"name": "p-0", "url": "http://127.0.0.1:9"}]},
]  # fmt: skip
REFUSED: dict[str, dict[str, Any]] = {
    "rate_limited": {"status": 429, "error_code": -32005},
    "key_invalid": {"status": 401, "error_code": -32001},
    "upstream_error": {"status": 502, "error_code": -32603},
}


def at(minutes_ago: float) -> float:
    return (NOW - timedelta(minutes=minutes_ago)).timestamp()


def calls() -> tuple[list[Any], list[float]]:
    """eth: 90 answered calls 50 minutes ago (1..90 ms); a minute 20 minutes ago where 6 of 10
    calls failed with a 502 (down); 10 minutes ago 5 rate-limited, 1 bad key, 4 answered.
    base: 20 answered calls of 5 ms. polygon: nothing. Also one eth call an hour and a half
    ago, outside the window."""
    records: list[Any] = []
    eth_latencies: list[float] = []

    def add(chain: str, minutes_ago: float, latency_ms: float, reason: str | None = None) -> None:
        extra = REFUSED.get(reason or "", {})
        records.append(
            call_record(
                f"r{len(records)}",
                ts=at(minutes_ago),
                chain=chain,
                latency=latency_ms / 1000,
                reason=reason,
                **extra,
            )
        )
        if chain == "eth":
            eth_latencies.append(latency_ms)

    for i in range(1, 91):
        add("eth", 50, float(i))
    for i in range(10):
        add("eth", 20 - i / 100, 200.0, "upstream_error" if i < 6 else None)
    for i in range(10):
        add("eth", 10, 1.0, "rate_limited" if i < 5 else "key_invalid" if i == 5 else None)
    for _ in range(20):
        add("base", 30, 5.0)
    records.append(call_record("old", ts=at(90), chain="eth", latency=9.0, status=502,
                               reason="upstream_error", error_code=-32603))  # fmt: skip
    return records, eth_latencies


def linear_quantile(values: list[float], level: float) -> float:
    ordered = sorted(values)
    position = level * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.fixture
async def reports(analytics_store: ChdbStore) -> tuple[Reports, list[float]]:
    records, eth_latencies = calls()
    await analytics_store.insert(RowBuilder(ComputeUnits()).table(records))
    return Reports(analytics_store, clock=lambda: NOW), eth_latencies


async def test_indicators_from_known_rows(reports: tuple[Reports, list[float]]) -> None:
    found, eth_latencies = reports
    report = await measure(found, ["eth", "base", "polygon"], timedelta(hours=1))
    assert (report.start, report.end, report.every) == (NOW - timedelta(hours=1), NOW, "minute")
    eth, base, polygon = report.chains
    values = {i.objective.name: i.value for i in eth.indicators}
    verdicts = {i.objective.name: i.ok for i in eth.indicators}
    assert (eth.requests, eth.errors, eth.rate_limited) == (110, 6, 5)
    assert (eth.windows, eth.down_windows) == (60, 1)
    assert values["latency_p95_ms"] == pytest.approx(linear_quantile(eth_latencies, 0.95))
    assert values["error_rate"] == pytest.approx(6 / 110)
    assert values["rate_limit_ratio"] == pytest.approx(5 / 110)
    assert values["availability"] == pytest.approx(59 / 60)
    assert verdicts == {
        "latency_p95_ms": False,  # 200 ms calls push it past 100 ms
        "error_rate": False,  # 5.5% against 0.1%
        "rate_limit_ratio": True,  # 4.5% against 5%
        "availability": False,  # one minute down of sixty: 98.3% against 99.9%
    }
    assert eth.ok is False

    assert base.requests == 20 and base.ok is True
    assert {i.objective.name: i.value for i in base.indicators} == {
        "latency_p95_ms": pytest.approx(5.0),
        "error_rate": 0.0,
        "rate_limit_ratio": 0.0,
        "availability": 1.0,
    }
    assert polygon.requests == 0 and polygon.ok is None
    assert all(i.value is None and i.ok is None for i in polygon.indicators)

    # Two hours back, the older failure counts too; a week uses hour windows.
    wider = await measure(found, ["eth"], timedelta(hours=2))
    assert wider.chains[0].errors == 7 and wider.chains[0].down_windows == 2
    week = await measure(found, ["eth"], timedelta(days=7))
    assert week.every == "hour" and week.chains[0].requests == 111


async def test_slo_over_the_api_and_on_the_page(
    store: Store, tmp_path: Path, reports: tuple[Reports, list[float]]
) -> None:
    found, _ = reports
    config = control_config(store.url, tmp_path, chains=CHAINS)
    app, ctx = control_app(config, store, reports=lambda: found)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
        answer = await client.get("/admin/v1/slo", headers={"authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["window"] == "1h" and body["every"] == "minute"
        eth = body["chains"][0]
        assert (eth["chain"], eth["requests"], eth["errors"], eth["ok"]) == ("eth", 110, 6, False)
        indicators = {i["name"]: i for i in eth["indicators"]}
        assert indicators["availability"] == {
            "name": "availability",
            "label": "availability",
            "value": pytest.approx(59 / 60),
            "unit": "ratio",
            "op": ">=",
            "target": 0.999,
            "source": "seeds 000 and 003",
            "ok": False,
            "status": "breached",
        }
        assert indicators["rate_limit_ratio"]["status"] == "ok"
        assert indicators["latency_p95_ms"]["target"] == 100.0
        polygon = body["chains"][2]
        assert {i["status"] for i in polygon["indicators"]} == {"no_data"}

        await ctx.identity.create_user("ops@example.com", password="correct horse battery staple",
                                       platform_role="ops", actor="test")  # fmt: skip
        session = await ctx.identity.login("ops@example.com", "correct horse battery staple")
        client.cookies.set("hoodrun_session", session.access_token, domain="control.test")
        page = await client.get("/control/slo")
        assert page.status_code == 200
        assert 'data-chain="eth"' in page.text
        assert f"{59 / 60 * 100:.3f}%" in page.text  # availability, 98.333%
        assert "breached" in page.text and "no traffic" in page.text


def test_server_faults_are_every_5xx_of_the_gateway() -> None:
    """Every refusal the gateway answers with a 5xx counts as an error of the service."""
    fives = {
        cls.default_reason
        for _, cls in inspect.getmembers(gateway_errors, inspect.isclass)
        if issubclass(cls, gateway_errors.GatewayError) and cls.status >= 500
    }
    assert fives <= SERVER_FAULTS
    # And the reasons given explicitly to a 5xx error (``Unavailable(..., reason="...")``).
    call = re.compile(
        r"\b(?:Unavailable|UpstreamFailed|UpstreamTimedOut)\((?:[^()]|\([^()]*\))*?reason=\"(\w+)\"",
        re.S,
    )
    given = {
        reason
        for path in Path(gateway_errors.__file__).parent.glob("*.py")
        for reason in call.findall(path.read_text())
    }
    assert "key_store_unavailable" in given
    assert given <= SERVER_FAULTS, given - SERVER_FAULTS

"""Known traffic through the gateway and known CloudEvents, metered through the API, then rated:
the amounts equal bills computed by hand for each plan type, tier shape, tax case and credit
order."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.metering.config import PriceConfig, TaxRule
from hoodrun.metering.credits import CreditGrant
from hoodrun.metering.entitlements import month_bounds
from hoodrun.metering.money import Money
from hoodrun.metering.rating import ContractTerms, rate_period
from tests._platform import PlatformThread
from tests.telemetry.test_usage_e2e import TOKEN, _config

AUTH = {"authorization": f"Bearer {TOKEN}"}
METER = {
    "slug": "tokens", "event_type": "llm.tokens", "aggregation": "SUM",
    "value_property": "$.tokens", "group_by": {"model": "$.model"},
}  # fmt: skip
TAXES = {"TR": TaxRule(name="KDV", rate=Decimal("0.20")), "DE": TaxRule(rate=Decimal("0.19"), reverse_charge_b2b=True)}  # fmt: skip


def _traffic(gateway: str, key: str) -> None:
    with httpx.Client(timeout=10) as client:
        for method, times in (("eth_blockNumber", 7), ("eth_getBalance", 4), ("eth_call", 1)):
            params: list[Any] = []
            if method == "eth_getBalance":
                params = ["0x" + "00" * 20, "latest"]
            if method == "eth_call":
                params = [{"to": "0x" + "00" * 20, "data": "0x"}, "latest"]
            for _ in range(times):
                body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
                assert client.post(f"{gateway}/eth/v1/{key}", json=body).status_code == 200
        # Refused: not billable.
        bad = client.post(f"{gateway}/eth/v1/{key}", content=b"{not json")
        assert bad.status_code == 400


def _events(api: str, org: str) -> None:
    events = [
        {"specversion": "1.0", "id": f"e{n}", "source": "llm-proxy", "type": "llm.tokens",
         "subject": org, "data": {"tokens": tokens, "model": model}}
        for n, (tokens, model) in enumerate([(100, "a"), (250, "b"), (50, "a")])
    ]  # fmt: skip
    with httpx.Client(timeout=10, headers=AUTH) as client:
        for body in (events, events[:1]):  # the second is a retry: counted once
            answer = client.post(
                f"{api}/api/v1/events",
                content=orjson.dumps(body),
                headers={"content-type": "application/cloudevents-batch+json"},
            )
            assert answer.status_code == 204, answer.text


def _meter(api: str, slug: str, org: str, expected: float) -> float:
    deadline = time.monotonic() + 15
    value = 0.0
    with httpx.Client(timeout=10, headers=AUTH) as client:
        while time.monotonic() < deadline:
            answer = client.get(f"{api}/api/v1/meters/{slug}/query", params={"subject": org})
            assert answer.status_code == 200, answer.text
            value = sum(row["value"] for row in answer.json()["data"])
            if value >= expected:
                return value
            time.sleep(0.2)
    pytest.fail(f"meter {slug} reached {value}, not {expected}")


def test_metered_usage_rates_as_computed_by_hand(
    tmp_path: Path, chdb_path: Path, anvil_factory: Any
) -> None:
    chains = {"eth": (1, anvil_factory(chain_id=1))}
    config = _config(tmp_path, chdb_path, chains, meters=[METER], telemetry={"flush_interval": 0.2})
    with PlatformThread(config) as running, httpx.Client(timeout=10, headers=AUTH) as client:
        created = client.post(f"{running.api_url}/admin/v1/keys", json={"org": "acme"}).json()
        org = created["org_id"]
        _traffic(running.gateway_url, created["key"])
        _events(running.api_url, org)
        # 7 x 10 + 4 x 19 + 1 x 26 compute units; 100 + 250 + 50 tokens.
        units = _meter(running.api_url, "compute_units", org, 172)
        tokens = _meter(running.api_url, "tokens", org, 400)
        requests = _meter(running.api_url, "requests", org, 12)
        time.sleep(0.5)  # nothing more arrives
        assert _meter(running.api_url, "compute_units", org, 172) == units == 172
        assert (tokens, requests) == (400, 12)

    start, end = month_bounds(datetime.now(UTC))
    usd = ContractTerms(currency="USD")

    def bill(price: dict[str, Any], usage: float, terms: ContractTerms = usd, **extra: Any) -> Any:
        return rate_period(
            PriceConfig.model_validate(price), Decimal(int(usage)),
            period_start=start, period_end=end, contract=terms, taxes=TAXES, **extra,
        )  # fmt: skip

    tiers = [{"up_to": 100, "unit_price": "1.00"}, {"unit_price": "0.50"}]
    assert bill({"type": "FIXED", "fee": "49"}, units).total == Money.of("49.00", "USD")
    # Graduated: 100 at 1.00 and 72 at 0.50 per 100 units.
    graduated = {"type": "METERED", "per": 100, "tiers": tiers}
    assert bill(graduated, units).total == Money.of("1.36", "USD")
    # Volume: all 172 at the tier they reach, 0.50 per 100.
    assert bill({**graduated, "tier_mode": "volume"}, units).total == Money.of("0.86", "USD")
    # A free allowance of 50 units: 100 at 1.00, 22 at 0.50.
    assert bill({**graduated, "included": 50}, units).total == Money.of("1.11", "USD")
    # Hybrid: 10.00 with 100 units, the 72 over at 2.00 per 100 = 1.44.
    hybrid = {
        "type": "HYBRID", "fee": "10", "included": 100, "per": 100,
        "tiers": [{"unit_price": "2.00"}],
    }  # fmt: skip
    assert bill(hybrid, units).total == Money.of("11.44", "USD")
    # Tokens, 1 cent each.
    assert bill({"type": "METERED", "tiers": [{"unit_price": "0.01"}]}, tokens).total == Money.of(
        "4.00", "USD"
    )
    # Taxes: KDV 20% in Turkey (2.288 -> 2.29), reverse charge for a German business.
    turkish = bill(hybrid, units, ContractTerms(currency="USD", country="TR"))
    assert (turkish.tax, turkish.total) == (Money.of("2.29", "USD"), Money.of("13.73", "USD"))
    german = bill(
        hybrid, units, ContractTerms(currency="USD", country="DE", business=True, tax_id="DE1")
    )
    assert german.reverse_charge and german.total == Money.of("11.44", "USD")
    # Credits: the promotional grant first, then the prepaid one that expires sooner.
    now = datetime.now(UTC)
    grants = [
        CreditGrant("late", org, "prepaid", Money.of("20", "USD"), Money.of("20", "USD"), start,
                    expires_at=end + timedelta(days=60)),
        CreditGrant("soon", org, "prepaid", Money.of("3", "USD"), Money.of("3", "USD"), start,
                    expires_at=end + timedelta(days=1)),
        CreditGrant("promo", org, "promotional", Money.of("5", "USD"), Money.of("5", "USD"), start),
    ]  # fmt: skip
    credited = bill(hybrid, units, ContractTerms(currency="USD", country="TR"), credits=grants,
                    credits_at=now)  # fmt: skip
    assert credited.total == Money.of("0", "USD") and credited.credits == Money.of("13.73", "USD")
    spent = [(line.description, line.amount) for line in credited.lines if line.kind == "credit"]
    assert [amount for _, amount in spent] == [
        Money.of("5", "USD"), Money.of("3", "USD"), Money.of("5.73", "USD")
    ]  # fmt: skip

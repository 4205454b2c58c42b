"""The config: the sample loads, env overrides apply, errors name the key and line."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from hoodrun.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "hoodrun.example.yaml"


def test_sample_loads() -> None:
    config = load_config(SAMPLE, env={})
    assert [c.name for c in config.chains] == ["eth", "base"]
    free = config.plan("free")
    assert free is not None and free.rate.rps == 10 and free.rate.capacity == 20
    assert not free.methods.permits("eth_sendRawTransaction")
    assert config.plan("enterprise").rate.capacity == 2000  # type: ignore[union-attr]


def test_env_overrides() -> None:
    env = {
        "HOODRUN_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/x",
        "HOODRUN_GATEWAY__MAX_BATCH": "50",
        "HOODRUN_ADMIN_TOKEN": "s3cret",
        "UNRELATED": "1",
    }
    config = load_config(SAMPLE, env=env)
    assert config.database_url.startswith("postgresql://")
    assert config.gateway.max_batch == 50
    assert config.resolved_admin_token() == "s3cret"
    assert "s3cret" not in repr(config)


def test_errors_name_the_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "listen: 127.0.0.1:8000\n"
        "chains:\n"
        "  - name: eth\n"
        "    chain_id: 1\n"
        "    upstreams:\n"
        "      - {name: a, url: ftp://nope}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(bad, env={})
    message = str(caught.value)
    assert "bad.yaml:6" in message and "chains.0.upstreams.0.url" in message
    assert "http://" in message
    bad.write_text(
        "chains:\n  - name: metrics\n    chain_id: 1\n    upstreams: [{name: a, url: 'http://x:1/'}]\n"
    )
    with pytest.raises(ConfigError, match="reserved"):
        load_config(bad, env={})
    bad.write_text("listen: nowhere\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1: listen"):
        load_config(bad, env={})
    bad.write_text("surprise: 1\n")
    with pytest.raises(ConfigError, match="surprise"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_plan_references_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "plans.yaml"
    bad.write_text("default_plan: gold\nplans:\n  - {name: free, rate: {rps: 1}}\n")
    with pytest.raises(ConfigError, match="default_plan 'gold'"):
        load_config(bad, env={})


def _plan(**extra: object) -> dict[str, object]:
    return {"name": "p", "rate": {"rps": 1}, **extra}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"meters": [{"slug": "Tokens", "event_type": "t", "aggregation": "COUNT"}]}, "a-z"),
        ({"meters": [{"slug": "requests", "event_type": "t", "aggregation": "COUNT"}]}, "built-in"),
        ({"meters": [{"slug": "t", "event_type": "t", "aggregation": "SUM"}]}, "value_property"),
        (
            {
                "meters": [
                    {"slug": "t", "event_type": "t", "aggregation": "SUM", "value_property": "x"}
                ]
            },
            "JSONPath",
        ),
        ({"plans": [_plan(quotas={"tokens": 5})], "default_plan": "p"}, "meter 'tokens'"),
        (
            {"plans": [_plan(price={"type": "METERED", "tiers": []})], "default_plan": "p"},
            "needs tiers",
        ),
        (
            {
                "plans": [
                    _plan(price={"type": "METERED", "tiers": [{"up_to": 10}, {"up_to": 5}, {}]})
                ],
                "default_plan": "p",
            },
            "increase",
        ),
        (
            {
                "plans": [_plan(price={"type": "FIXED", "fee": 9}, spending_cap=5)],
                "default_plan": "p",
            },
            "spending cap",
        ),
        (
            {"plans": [_plan(price={"type": "FIXED", "currency": "usd"})], "default_plan": "p"},
            "ISO 4217",
        ),
        ({"taxes": {"Turkey": {"rate": 0.2}}}, "alpha-2"),
        (
            {
                "plans": [_plan(price={"type": "METERED", "fee": 5, "tiers": [{}]})],
                "default_plan": "p",
            },
            "HYBRID",
        ),
    ],
)
def test_metering_settings_are_checked(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    path = tmp_path / "hoodrun.yaml"
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=message):
        load_config(path, env={})


def test_metering_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "hoodrun.yaml"
    price = {
        "type": "HYBRID", "currency": "EUR", "fee": "49.00", "included": 1000000,
        "tiers": [{"up_to": 5000000, "unit_price": "0.50"}, {"unit_price": "0.40"}],
        "per": 1000000, "multipliers": {"trace": 2.5, "chain:eth": 1},
    }  # fmt: skip
    path.write_text(
        yaml.safe_dump(
            {
                "meters": [
                    {
                        "slug": "tokens",
                        "event_type": "llm.tokens",
                        "aggregation": "SUM",
                        "value_property": "$.tokens",
                        "group_by": {"model": "$.model"},
                    },
                ],
                "plans": [_plan(price=price, quotas={"tokens": 10}, spending_cap="100")],
                "default_plan": "p",
                "taxes": {"TR": {"name": "KDV", "rate": "0.20"}},
            }
        )
    )
    config = load_config(path, env={})
    plan = config.plan("p")
    assert plan is not None and plan.price is not None
    assert plan.price.fee == Decimal("49.00") and plan.price.tiers[1].up_to is None
    assert config.taxes["TR"].rate == Decimal("0.20") and config.meters[0].group_by == {
        "model": "$.model"
    }

"""``hoodrun config validate|diff`` and the comparison behind them (``hoodrun.configdiff``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hoodrun.cli import app
from hoodrun.config import Config, ConfigError, load_config
from hoodrun.configdiff import diff, reloadable

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-admin-token"
PROVIDER_KEY = "abcdefghijklmnopqrstuvwxyz012345"


def settings(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "admin_token": SECRET,
        "database_url": "postgresql://hoodrun:dbpass@db:5432/hoodrun",
        "chains": [
            {"name": "eth", "chain_id": 1, "upstreams": [
                {"name": "eth-a", "url": "http://10.0.0.1:8545"},
                {"name": "eth-b", "url": f"http://rpc.example.com/v2/{PROVIDER_KEY}?t=1"},
            ]},
            {"name": "base", "chain_id": 8453, "upstreams": [
                {"name": "base-a", "url": "http://10.0.0.2:8545"},
            ]},
        ],
        "plans": [
            {"name": "free", "rate": {"rps": 10, "burst": 20}},
            {"name": "pro", "rate": {"rps": 100, "burst": 200}},
        ],
    }  # fmt: skip
    base.update(changes)
    return base


def config(**changes: Any) -> Config:
    return Config.model_validate(settings(**changes))


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_reordering_named_things_is_no_change() -> None:
    data = settings()
    data["chains"] = list(reversed(data["chains"]))
    data["chains"][1]["upstreams"] = list(reversed(data["chains"][1]["upstreams"]))
    data["plans"] = list(reversed(data["plans"]))
    assert diff(config(), Config.model_validate(data)) == []


def test_changes_are_found_by_name_and_path() -> None:
    data = settings()
    data["chains"][0]["upstreams"][0]["url"] = "http://10.0.0.9:8545"
    data["chains"][0]["upstreams"].append({"name": "eth-c", "url": "http://10.0.0.3:8545"})
    data["chains"].pop(1)
    data["plans"][1]["rate"]["rps"] = 150
    data["listen"] = "0.0.0.0:9000"
    changes = {c.path: c for c in diff(config(), Config.model_validate(data))}
    assert set(changes) == {
        "listen",
        "chains[eth].upstreams[eth-a].url",
        "chains[eth].upstreams[eth-c]",
        "chains[base]",
        "plans[pro].rate.rps",
    }
    assert changes["chains[eth].upstreams[eth-c]"].kind == "added"
    assert changes["chains[base]"].kind == "removed"
    url = changes["chains[eth].upstreams[eth-a].url"]
    assert (url.kind, url.old, url.new) == (
        "changed",
        "http://10.0.0.1:8545",
        "http://10.0.0.9:8545",
    )
    assert [c.reloadable for c in changes.values()].count(False) == 1
    assert not changes["listen"].reloadable and changes["plans[pro].rate.rps"].reloadable


def test_secrets_never_show() -> None:
    data = settings(admin_token="another-token", database_url="postgresql://u:newpass@db/h")
    data["chains"][0]["upstreams"][1]["url"] = f"http://rpc.example.com/v3/{PROVIDER_KEY}"
    data["chains"][0]["upstreams"].append(
        {"name": "eth-z", "url": "http://user:zpass@rpc.example.org/x"}
    )
    text = "\n".join(str(c) for c in diff(config(), Config.model_validate(data)))
    assert "admin_token: <hidden> -> <hidden>" in text
    assert "postgresql://hoodrun:***@db:5432/hoodrun" in text
    assert "http://rpc.example.com/v2/***?***" in text and "/v3/***" in text
    for secret in (SECRET, "another-token", "dbpass", "newpass", PROVIDER_KEY, "zpass"):
        assert secret not in text


def test_a_token_as_a_urls_user_and_credentials_in_any_url_never_show() -> None:
    # NATS takes a token as the URL's user (nats://TOKEN@host); an OTLP endpoint is a URL too.
    token = "s3cr3t-nats-token"
    data = settings(
        nats_url=f"nats://{token}@nats:4222",
        tracing={"otlp_endpoint": "https://otel:otlppass@otlp.example/v1/traces?api_key=otlpkey"},
    )
    text = "\n".join(str(c) for c in diff(config(), Config.model_validate(data)))
    assert "nats_url: null -> nats://***@nats:4222" in text
    assert "https://otel:***@otlp.example/v1/traces?***" in text
    for secret in (token, "otlppass", "otlpkey"):
        assert secret not in text


def test_reloadable_takes_only_what_a_reload_may_change() -> None:
    running = config()
    data = settings(listen="0.0.0.0:9000", default_plan="pro")
    data["plans"].append({"name": "team", "rate": {"rps": 50, "burst": 100}})
    merged, restart = reloadable(running, Config.model_validate(data))
    assert merged.listen == running.listen  # needs a restart: not applied
    assert merged.default_plan == "pro" and merged.plan("team") is not None
    assert [c.path for c in restart] == ["listen"]


def test_validate_command(tmp_path: Path) -> None:
    runner = CliRunner()
    good = write(tmp_path / "good.yaml", settings())
    result = runner.invoke(app, ["config", "validate", str(good), "--no-env"])
    assert result.exit_code == 0, result.output
    assert "valid: 2 chains (3 upstreams), 2 plans" in result.output
    bad_data = settings()
    bad_data["chains"][0]["upstreams"][0]["url"] = "ftp://x"
    bad_data["plans"][0]["rate"]["rps"] = -1
    bad = write(tmp_path / "bad.yaml", bad_data)
    result = runner.invoke(app, ["config", "validate", str(bad), "--no-env"])
    assert result.exit_code == 2
    assert "chains.0.upstreams.0.url" in result.output and "plans.0.rate.rps" in result.output
    assert f"{bad}:" in result.output  # file:line: for each problem
    missing = runner.invoke(app, ["config", "validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0


def test_diff_command(tmp_path: Path) -> None:
    runner = CliRunner()
    old = write(tmp_path / "old.yaml", settings())
    same = runner.invoke(app, ["config", "diff", str(old), str(old), "--no-env"])
    assert same.exit_code == 0 and "no changes" in same.output
    data = settings(listen="0.0.0.0:9000")
    data["chains"][0]["upstreams"].append({"name": "eth-c", "url": "http://10.0.0.3:8545"})
    new = write(tmp_path / "new.yaml", data)
    result = runner.invoke(
        app, ["config", "diff", str(old), str(new), "--no-env"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 1, result.output
    assert "+ chains[eth].upstreams[eth-c]" in result.output and "(reload)" in result.output
    assert "~ listen: 127.0.0.1:8000 -> 0.0.0.0:9000  (restart)" in result.output
    assert "2 changes; 1 need a restart" in result.output
    assert SECRET not in result.output and PROVIDER_KEY not in result.output
    broken = write(tmp_path / "broken.yaml", {"chains": [{"name": "eth"}]})
    assert runner.invoke(app, ["config", "diff", str(old), str(broken)]).exit_code == 2


def test_the_example_config_validates() -> None:
    result = CliRunner().invoke(
        app, ["config", "validate", str(ROOT / "hoodrun.example.yaml"), "--no-env"]
    )
    assert result.exit_code == 0, result.output
    assert load_config(ROOT / "hoodrun.example.yaml", env={}).chains


def test_a_reload_that_needs_a_restart_is_refused_with_the_reason() -> None:
    running = config()
    data = settings(
        meters=[{"slug": "tokens", "event_type": "t", "aggregation": "COUNT"}],
    )
    data["plans"][0]["quotas"] = {"tokens": 5}
    with pytest.raises(ConfigError, match="restart to apply it"):
        reloadable(running, Config.model_validate(data))

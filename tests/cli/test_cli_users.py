"""``hoodrun users``: the first operator of an install, verification without mail, platform
roles, disabling; through typer's runner, on SQLite and PostgreSQL, checked by logging in."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from hoodrun.cli import app
from hoodrun.config import Config
from hoodrun.identity import AccountDisabled, EmailNotVerified, IdentityService
from hoodrun.store import Store

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a long enough password"


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    settings = yaml.safe_load((ROOT / "hoodrun.example.yaml").read_text())
    settings.update(
        database_url=database_url,
        data_dir=str(tmp_path),
        auth={"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1},
    )
    path = tmp_path / "hoodrun.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _cli(config: Path, *args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(
        app, ["-c", str(config), *args], input=stdin, env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result


def _login(config: Path, email: str) -> object:
    settings = Config.model_validate(yaml.safe_load(config.read_text()))

    async def go() -> object:
        async with Store(settings.database_url) as store:
            identity = IdentityService(store, settings, None)
            return identity.decode((await identity.login(email, PASSWORD)).access_token)

    return asyncio.run(go())


def test_the_first_operator_and_their_roles(config_file: Path) -> None:
    made = _cli(
        config_file,
        *("users", "create", "--email", "Ops@Example.com", "--platform-role", "admin"),
        *("--password-stdin", "--json"),
        stdin=PASSWORD + "\n",
    )
    user = json.loads(made.stdout)
    assert user["email"] == "ops@example.com" and user["platform_role"] == "admin"
    assert user["email_verified"] is True
    claims = _login(config_file, "ops@example.com")
    assert claims.platform_role == "admin"  # type: ignore[attr-defined]
    assert PASSWORD not in made.output

    listed = json.loads(_cli(config_file, "users", "list", "--json").stdout)
    assert [u["email"] for u in listed] == ["ops@example.com"]

    _cli(config_file, "users", "role", "ops@example.com", "ops")
    assert _login(config_file, "ops@example.com").platform_role == "ops"  # type: ignore[attr-defined]
    _cli(config_file, "users", "role", "ops@example.com", "none")
    assert _login(config_file, "ops@example.com").platform_role is None  # type: ignore[attr-defined]

    _cli(config_file, "users", "disable", "ops@example.com")
    with pytest.raises(AccountDisabled):
        _login(config_file, "ops@example.com")
    _cli(config_file, "users", "enable", "ops@example.com")
    assert _login(config_file, "ops@example.com")


def test_verifying_an_address_without_its_mail(config_file: Path) -> None:
    settings = Config.model_validate(yaml.safe_load(config_file.read_text()))

    async def sign_up() -> None:
        async with Store(settings.database_url) as store:
            await IdentityService(store, settings, None).sign_up("ada@example.com", PASSWORD)

    _cli(config_file, "db", "upgrade")
    asyncio.run(sign_up())
    with pytest.raises(EmailNotVerified):
        _login(config_file, "ada@example.com")
    shown = json.loads(_cli(config_file, "users", "verify", "ada@example.com", "--json").stdout)
    assert shown["email_verified"] is True
    assert _login(config_file, "ada@example.com")


def test_an_unknown_address_is_a_clear_error(config_file: Path) -> None:
    result = CliRunner().invoke(app, ["-c", str(config_file), "users", "verify", "no@example.com"])
    assert result.exit_code != 0
    assert "no account has the address 'no@example.com'" in result.output

"""``hoodrun keys`` and ``hoodrun db`` through typer's runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from hoodrun.cli import app
from hoodrun.keys.redis_events import RedisKeyEvents
from hoodrun.keys.secret import hash_key, looks_like_key

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("HOODRUN_TEST_REDIS", "redis://127.0.0.1:6379/0")

Hoodrun = Callable[..., Result]


def _write_config(path: Path, **settings: object) -> Path:
    example = yaml.safe_load((ROOT / "hoodrun.example.yaml").read_text())
    example.update(settings)
    path.write_text(yaml.safe_dump(example))
    return path


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    return _write_config(tmp_path / "hoodrun.yaml", database_url=database_url)


@pytest.fixture
def hoodrun(config_file: Path) -> Hoodrun:
    """``hoodrun("keys", "list")`` runs the CLI with the test's config file."""

    def run(*args: str, config: Path = config_file) -> Result:
        # A wide terminal, so rich tables do not wrap ids across lines.
        env = {"COLUMNS": "200", "HOODRUN_CONFIG": None}
        return CliRunner().invoke(app, ["-c", str(config), *args], env=env)

    return run


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_create_prints_the_key_once(hoodrun: Hoodrun) -> None:
    result = _ok(hoodrun("keys", "create", "--org", "acme", "--chains", "eth,base"))
    key = result.stdout.strip()  # stdout is the key alone: KEY=$(hoodrun keys create ...)
    assert looks_like_key(key)
    assert "will not be shown again" in result.stderr
    assert "acme" in result.stderr and "plan free" in result.stderr

    listed = _ok(hoodrun("keys", "list"))
    shown = _ok(hoodrun("keys", "list", "--json"))
    for output in (listed.output, shown.output):
        assert key not in output and hash_key(key) not in output
    (entry,) = json.loads(shown.stdout)["keys"]
    assert entry["chains"] == ["base", "eth"] and entry["status"] == "active"
    assert entry["id"] in listed.stdout and f"{key[:7]}…" in listed.stdout
    assert "active" in listed.stdout and "never" in listed.stdout


def test_create_json(hoodrun: Hoodrun) -> None:
    result = _ok(
        hoodrun(
            "keys", "create", "--org", "acme", "--project", "web", "--plan", "pro",
            "--origins", "https://a.example,https://b.example", "--expires-in", "12h",
            "--name", "backend", "--deny-methods", "eth_sign", "--allow-methods",
            "eth_call,eth_blockNumber", "--json",
        )
    )  # fmt: skip
    body = json.loads(result.stdout)
    assert looks_like_key(body["key"])
    assert body["id"].startswith("key_")
    assert (body["org"], body["project"], body["plan"], body["name"]) == (
        "acme",
        "web",
        "pro",
        "backend",
    )
    assert body["chains"] is None and body["expires_at"] is not None
    assert body["origins"] == ["https://a.example", "https://b.example"]
    assert body["methods_allow"] == ["eth_blockNumber", "eth_call"]
    assert body["methods_deny"] == ["eth_sign"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "x"], "unknown plan 'x': choose one of free, pro, enterprise"),
        (["--chains", "eth,sol"], "unknown chain 'sol'"),
        (["--expires-in", "soon"], "--expires-in: 'soon' is not a duration"),
        (["--origins", "a.example"], "is not an origin"),
    ],
)
def test_user_errors_exit_1_with_one_line(hoodrun: Hoodrun, args: list[str], message: str) -> None:
    result = hoodrun("keys", "create", "--org", "acme", *args)
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.strip().startswith("error:") and len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


def test_lifecycle(hoodrun: Hoodrun) -> None:
    created = json.loads(_ok(hoodrun("keys", "create", "--org", "acme", "--json")).stdout)
    key_id = created["id"]

    assert "now disabled" in _ok(hoodrun("keys", "disable", key_id)).stderr
    assert json.loads(_ok(hoodrun("keys", "show", key_id, "--json")).stdout)["disabled"]
    assert "now active" in _ok(hoodrun("keys", "enable", key_id)).stderr

    rotated = _ok(hoodrun("keys", "rotate", key_id, "--grace", "1h"))
    new_key = rotated.stdout.strip()
    assert looks_like_key(new_key) and new_key != created["key"]
    assert f"old key {key_id} stops working at" in rotated.stderr
    shown = _ok(hoodrun("keys", "show", key_id))
    assert "active" in shown.stdout and key_id in shown.stdout

    rotated_json = json.loads(_ok(hoodrun("keys", "rotate", key_id, "--json")).stdout)
    assert rotated_json["rotated_from"] == key_id and looks_like_key(rotated_json["key"])
    assert "revoked" in _ok(hoodrun("keys", "show", key_id)).stdout

    assert "now revoked" in _ok(hoodrun("keys", "revoke", rotated_json["id"])).stderr
    listed = _ok(hoodrun("keys", "list", "--org", "acme")).stdout
    assert listed.count("revoked") == 2 and listed.count("active") == 1

    audit = _ok(hoodrun("keys", "audit", "--limit", "100"))
    for action in ("key.create", "key.disable", "key.enable", "key.rotate", "key.revoke"):
        assert action in audit.stdout
    assert "cli" in audit.stdout
    for secret in (created["key"], new_key, rotated_json["key"]):
        assert secret not in audit.output and hash_key(secret) not in audit.output
    assert (
        len(json.loads(_ok(hoodrun("keys", "audit", "--json", "--limit", "2")).stdout)["entries"])
        == 2
    )


def test_unknown_key(hoodrun: Hoodrun) -> None:
    for command in ("show", "revoke", "rotate", "disable", "enable"):
        result = hoodrun("keys", command, "key_nope")
        assert result.exit_code == 1
        assert "no key with id 'key_nope'" in result.stderr


def test_db_upgrade_and_a_fresh_sqlite_file(tmp_path: Path, hoodrun: Hoodrun) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'dir' / 'hoodrun.db'}"
    config = _write_config(tmp_path / "fresh.yaml", database_url=url)
    assert "up to date" in _ok(hoodrun("db", "upgrade", config=config)).stderr
    assert "up to date" in _ok(hoodrun("db", "upgrade", config=config)).stderr
    # keys commands migrate on their own: a brand-new database just works.
    other = _write_config(tmp_path / "other.yaml", database_url=f"sqlite:///{tmp_path}/o/h.db")
    _ok(hoodrun("keys", "create", "--org", "acme", config=other))


def test_invalid_config_exits_2(tmp_path: Path, hoodrun: Hoodrun) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:8000\ngateway:\n  max_batch: 0\n")
    result = hoodrun("keys", "list", config=bad)
    assert result.exit_code == 2
    assert f"{bad}:3: gateway.max_batch" in result.stderr
    assert hoodrun("keys", "--help", config=bad).exit_code == 0  # help never needs the config


def test_database_unreachable_exits_1(tmp_path: Path, hoodrun: Hoodrun) -> None:
    config = _write_config(
        tmp_path / "down.yaml", database_url="postgresql://postgres@127.0.0.1:1/hoodrun"
    )
    result = hoodrun("keys", "list", config=config)
    assert result.exit_code == 1
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/hoodrun" in result.stderr


async def test_changes_reach_gateways_over_redis(
    tmp_path: Path, database_url: str, hoodrun: Hoodrun, redis_prefix: str
) -> None:
    config = _write_config(
        tmp_path / "redis.yaml",
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with RedisKeyEvents(REDIS_URL, redis_prefix) as gateway:
        gateway.subscribe(heard.put_nowait)
        # The CLI runs its own event loop: give it a thread.
        created = await asyncio.to_thread(
            hoodrun, "keys", "create", "--org", "acme", "--json", config=config
        )
        body = json.loads(_ok(created).stdout)
        assert await asyncio.wait_for(heard.get(), 5) == hash_key(body["key"])
        _ok(await asyncio.to_thread(hoodrun, "keys", "revoke", body["id"], config=config))
        assert await asyncio.wait_for(heard.get(), 5) == hash_key(body["key"])


def test_redis_down_does_not_fail_the_change(
    tmp_path: Path, database_url: str, hoodrun: Hoodrun
) -> None:
    config = _write_config(
        tmp_path / "redis.yaml", database_url=database_url, redis_url="redis://127.0.0.1:1/0"
    )
    result = _ok(hoodrun("keys", "create", "--org", "acme", config=config))
    assert looks_like_key(result.stdout.strip())
    listed = json.loads(_ok(hoodrun("keys", "list", "--json", config=config)).stdout)
    assert len(listed["keys"]) == 1

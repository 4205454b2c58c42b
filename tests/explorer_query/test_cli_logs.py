"""``hoodrun logs`` in subprocesses, on a chDB directory of their own (this test process holds
another: chDB allows one directory per process and one process per directory)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hoodrun.config import Config
from hoodrun.explorer.query import iso
from hoodrun.keys.service import KeyService
from hoodrun.store import Store
from tests.explorer_query.support import CAPTURED, at

ROOT = Path(__file__).resolve().parents[2]
DAY = ("--from", iso(at(1)), "--to", iso(at(2)))


@dataclass
class Setup:
    config: Path
    project: str
    org: str


@pytest.fixture(scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Setup:
    """A business database where org 'acme' owns project 'web', and an analytics store (seeded
    by a subprocess) with web's rows and one line and request of prj_b."""
    tmp = tmp_path_factory.mktemp("cli-logs")
    database = tmp / "hoodrun.db"
    shutil.copyfile(sqlite_template, database)
    url = f"sqlite:///{database}"
    async with Store(url) as store:
        created = await KeyService(store, Config(database_url=url)).create(
            org="acme", project="web", actor="test"
        )
    project, org = created.record.project_id or "", created.record.org_id
    config = tmp / "hoodrun.yaml"
    config.write_text(
        yaml.safe_dump(
            {"database_url": url, "data_dir": str(tmp / "data"), "analytics_database": "cli"}
        )
    )
    seeded = run("seed", str(config), project, org)
    assert seeded.returncode == 0, seeded.stderr
    return Setup(config, project, org)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOODRUN_CONFIG"}
    env["COLUMNS"] = "200"
    command = [sys.executable, "-m", "tests.explorer_query.cli_main", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def logs(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return run("-c", str(setup.config), "logs", *args)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_search(setup: Setup) -> None:
    text = logs(setup, "search", "--project", setup.project, *DAY)
    assert text.returncode == 0, text.stderr
    assert "database connection refused" in text.stdout and "out of memory" in text.stdout
    assert "project b" not in text.stdout  # another project's line
    found = as_json(logs(setup, "search", "--project", setup.project, *DAY, "--json"))
    assert [row["id"] for row in found["rows"]] == ["c5", "c4", "c3", "c2", "c1"]
    errors = as_json(
        logs(setup, "search", "--project", setup.project, *DAY, "--level", ">=error", "--json")
    )
    assert [row["id"] for row in errors["rows"]] == ["c5", "c2", "c1"]
    words = logs(setup, "search", "--project", setup.project, *DAY, "-q", "REFUSED", "--json",
                 "--attr", "env=prod", "--service", "api")  # fmt: skip
    assert [row["id"] for row in as_json(words)["rows"]] == ["c1"]
    # By names: the org and the project are looked up in the business database.
    named = logs(setup, "search", "--org", "acme", "--project", "web", *DAY, "--json")
    assert len(as_json(named)["rows"]) == 5


def test_search_pages(setup: Setup) -> None:
    first = logs(setup, "search", "--project", setup.project, *DAY, "--limit", "3")
    assert first.returncode == 0, first.stderr
    cursor = first.stderr.split("--cursor", 1)[1].strip()
    rest = logs(setup, "search", "--project", setup.project, *DAY, "--cursor", cursor, "--json")
    assert [row["id"] for row in as_json(rest)["rows"]] == ["c2", "c1"]


def test_top_rate_and_volume(setup: Setup) -> None:
    top = as_json(logs(setup, "top", "--project", setup.project, *DAY, "--json"))
    assert [(r["fingerprint"], r["count"], r["fatal"]) for r in top["rows"]] == [
        ("f1", 2, 0),
        ("f2", 1, 1),
    ]
    table = logs(setup, "top", "--project", setup.project, *DAY)
    assert "database connection refused" in table.stdout and "f1" in table.stdout

    span = ("--from", iso(at(1, 10)), "--to", iso(at(1, 10, 10)))
    rate = as_json(logs(setup, "errors-rate", "--project", setup.project, *span, "--json"))
    assert [(r["total"], r["errors"]) for r in rate["rows"]] == [(2, 2), (2, 0)]

    volume = as_json(logs(setup, "volume", "--project", setup.project, *DAY, "--json"))
    assert {r["level"]: r["lines"] for r in volume["rows"]}["error"] == 2
    assert volume["total"] == 5
    daily = logs(setup, "volume", "--project", setup.project, "--daily",
                 "--from", iso(at(0)), "--to", iso(at(2)))  # fmt: skip
    assert daily.returncode == 0, daily.stderr
    assert at(1).date().isoformat() in daily.stdout and "total" in daily.stdout


def test_requests(setup: Setup) -> None:
    found = as_json(logs(setup, "requests", "--project", setup.project, *DAY, "--json"))
    assert [(r["request_id"], r["call_index"]) for r in found["rows"]] == [
        ("req4", 0), ("req3", 1), ("req3", 0), ("req2", 0), ("req1", 0),
    ]  # fmt: skip
    slow = logs(setup, "requests", "--project", setup.project, *DAY, "--latency-above", "100",
                "--json")  # fmt: skip
    assert [r["request_id"] for r in as_json(slow)["rows"]] == ["req2"]
    detail = logs(setup, "requests", "--project", setup.project, "req3")
    assert detail.returncode == 0, detail.stderr
    assert "eth_getBalance" in detail.stdout and "-32602" in detail.stdout
    assert "payload capture is off for this project" in detail.stdout
    captured = logs(setup, "requests", "--project", setup.project, "req4")
    assert captured.returncode == 0, captured.stderr
    params, answer = CAPTURED[0]
    assert f"params:   {params}" in captured.stdout
    assert f"response: {answer}" in captured.stdout
    as_dict = as_json(logs(setup, "requests", "--project", setup.project, "req4", "--json"))
    assert as_dict["payloads_captured"] is True
    assert as_dict["calls"][0]["params_excerpt"] == params
    other = logs(setup, "requests", "--project", setup.project, "reqb")
    assert other.returncode == 1 and "no request 'reqb' in this project" in other.stderr


def test_errors(setup: Setup) -> None:
    bad = logs(setup, "search", "--project", setup.project, "--level", "loud")
    assert bad.returncode == 1 and "'loud' is not a level" in bad.stderr
    nobody = logs(setup, "search", "--org", "acme", "--project", "nope")
    assert nobody.returncode == 1 and "no project named 'nope'" in nobody.stderr
    empty = logs(setup, "search", "--project", "prj_nobody", *DAY)
    assert empty.returncode == 0 and "Nothing in this range." in empty.stderr
    missing = logs(setup, "search")
    assert missing.returncode == 2 and "--project" in missing.stderr

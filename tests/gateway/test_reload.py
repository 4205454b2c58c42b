"""Config reload while serving: upstreams, chains and plans change, no request fails.

In process (``GatewayRuntime.reload``) for the details, and once as an operator does it: a
``hoodrun gateway`` process, its config file edited, SIGHUP, under load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from hoodrun.config import Config
from hoodrun.devnet import Anvil, free_port

from .conftest import ThreadedGateway, make_config, rpc

BODY = orjson.dumps(rpc("eth_chainId"))


class Load:
    """Clients sending requests on threads until stopped; counts answers by outcome."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, content=BODY)
                    body = response.json()
                    ok = response.status_code == 200 and body.get("result") is not None
                except (httpx.HTTPError, ValueError) as exc:
                    ok, response = False, None
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.outcomes["ok" if ok else "failed"] += 1
                if not ok and response is not None:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, answers: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        start = sum(self.outcomes.values())
        while sum(self.outcomes.values()) < start + answers and time.monotonic() < deadline:
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def upstream_requests(metrics: str, upstream: str) -> float:
    prefix = "hoodrun_upstream_request_duration_seconds_count{"
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(prefix) and f'upstream="{upstream}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def with_changes(config: Config, **changes: Any) -> Config:
    data = config.model_dump(mode="json")
    data.update(changes)
    return Config.model_validate(data)


def wait_until(check: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s: {check}")


def test_upstreams_added_and_removed_under_load(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    first, second = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    # No response cache: every request reaches a node.
    config = make_config(sqlite_url, {"eth": (1, [first])}, cache={"enabled": False})
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key(plan="enterprise", rps=100_000, burst=100_000).key
    upstreams = [
        {"name": "eth-0", "url": first.url},
        {"name": "eth-new", "url": second.url},
    ]
    added = with_changes(config, chains=[{"name": "eth", "chain_id": 1, "upstreams": upstreams}])
    with Load(gw.endpoint(key)) as load:
        load.wait_for(50)
        assert gw.runtime is not None
        restart = gw.run(gw.runtime.reload(added))
        assert restart == []
        load.wait_for(300)
        # The new upstream takes a share of the traffic.
        wait_until(lambda: upstream_requests(client.get(f"{gw.url}/metrics").text, "eth-new") > 0)
        # Now the first one leaves; the requests it was serving finish.
        only_new = [{"name": "eth-new", "url": second.url}]
        gone = with_changes(config, chains=[{"name": "eth", "chain_id": 1, "upstreams": only_new}])
        gw.run(gw.runtime.reload(gone))
        # Calls sent to eth-0 before the reload may still be finishing: counted once answered.
        # Some more answers later, every one of them is, and eth-0's count must stay put.
        load.wait_for(50)
        before = upstream_requests(client.get(f"{gw.url}/metrics").text, "eth-0")
        load.wait_for(300)
    assert load.failures == [] and load.outcomes["ok"] > 600
    metrics = client.get(f"{gw.url}/metrics").text
    assert upstream_requests(metrics, "eth-0") == before  # no request went there after
    assert 'hoodrun_upstream_healthy{chain="eth",upstream="eth-0"}' not in metrics
    assert 'hoodrun_upstream_healthy{chain="eth",upstream="eth-new"} 1.0' in metrics


def test_chains_and_plans_reload(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    eth, base = anvil_factory(chain_id=1), anvil_factory(chain_id=8453)
    config = make_config(sqlite_url, {"eth": (1, [eth])})
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key(plan="pro").key
    assert client.post(gw.endpoint(key, "base"), content=BODY).status_code == 404
    chains = config.model_dump(mode="json")["chains"]
    base_chain = {
        "name": "base", "chain_id": 8453, "upstreams": [{"name": "base-0", "url": base.url}]
    }  # fmt: skip
    plans = config.model_dump(mode="json")["plans"]
    for plan in plans:
        if plan["name"] == "pro":
            plan["methods"] = {"allow": None, "deny": ["eth_chainId"]}
    assert gw.runtime is not None
    gw.run(gw.runtime.reload(with_changes(config, chains=[*chains, base_chain], plans=plans)))
    answer = client.post(gw.endpoint(key, "base"), content=orjson.dumps(rpc("eth_blockNumber")))
    assert answer.status_code == 200 and "result" in answer.json()
    # The plan's new method rules apply to the key at once.
    refused = client.post(gw.endpoint(key, "base"), content=BODY)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == -32004
    # A chain removed: its endpoint is gone, the other stays.
    gw.run(gw.runtime.reload(with_changes(config, chains=[base_chain], plans=plans)))
    assert client.post(gw.endpoint(key, "eth"), content=BODY).status_code == 404
    ok = client.post(gw.endpoint(key, "base"), content=orjson.dumps(rpc("eth_blockNumber")))
    assert ok.status_code == 200


def test_a_new_upstream_on_the_wrong_chain_stays_out(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    eth, other = anvil_factory(chain_id=1), anvil_factory(chain_id=5)
    config = make_config(sqlite_url, {"eth": (1, [eth])})
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key().key
    upstreams = [{"name": "eth-0", "url": eth.url}, {"name": "eth-wrong", "url": other.url}]
    assert gw.runtime is not None
    gw.run(
        gw.runtime.reload(
            with_changes(config, chains=[{"name": "eth", "chain_id": 1, "upstreams": upstreams}])
        )
    )
    for _ in range(20):
        assert client.post(gw.endpoint(key), content=BODY).json()["result"] == "0x1"
    snapshot = {u["name"]: u for u in gw.runtime.gateway.chains["eth"].pool.snapshot()}  # type: ignore[union-attr]
    assert snapshot["eth-wrong"]["healthy"] is False
    assert "wrong chain id 5" in snapshot["eth-wrong"]["reason"]


def test_a_new_chain_id_checks_every_upstream_again(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil
) -> None:
    config = make_config(sqlite_url, {"eth": (1, [eth_anvil])})
    gw: ThreadedGateway = gateway_factory(config)
    upstreams = [{"name": "eth-0", "url": eth_anvil.url}]
    assert gw.runtime is not None and gw.runtime.gateway is not None
    gw.run(
        gw.runtime.reload(
            with_changes(config, chains=[{"name": "eth", "chain_id": 5, "upstreams": upstreams}])
        )
    )
    (snapshot,) = gw.runtime.gateway.chains["eth"].pool.snapshot()
    assert snapshot["healthy"] is False and "wrong chain id 1" in snapshot["reason"]


def test_sighup_adds_an_upstream_without_a_failed_request(
    tmp_path: Path, anvil_factory: Any, client: httpx.Client
) -> None:
    first, second = anvil_factory(chain_id=1), anvil_factory(chain_id=1)
    port = free_port()
    path = tmp_path / "hoodrun.yaml"
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "data_dir": str(tmp_path),
        "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
        "log_format": "text",
        "telemetry": {"enabled": False},
        "cache": {"enabled": False},
        "health": {"interval": 0.3},
        "chains": [
            {"name": "eth", "chain_id": 1, "upstreams": [{"name": "eth-a", "url": first.url}]}
        ],
    }
    path.write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOODRUN_")}
    hoodrun = [sys.executable, "-m", "hoodrun", "-c", str(path)]
    subprocess.run([*hoodrun, "db", "upgrade"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [*hoodrun, "keys", "create", "--org", "acme", "--project", "web", "--json",
         "--rps", "100000", "--burst", "100000"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    key = orjson.loads(made.stdout)["key"]
    proc = subprocess.Popen(
        [*hoodrun, "gateway"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stdout or ()), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(client, f"{base}/health/ready"), 30)
        with Load(f"{base}/eth/v1/{key}") as load:
            load.wait_for(50)
            settings["chains"][0]["upstreams"].append({"name": "eth-b", "url": second.url})
            path.write_text(yaml.safe_dump(settings))
            proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda: upstream_requests(client.get(f"{base}/metrics").text, "eth-b") > 0, 30
            )
            load.wait_for(200)
            # A config that does not load is refused; the gateway keeps serving.
            path.write_text("chains: [{name: eth}]\n")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: any("reload refused" in line for line in log), 30)
            load.wait_for(200)
        assert load.failures == [] and load.outcomes["ok"] > 300
        assert 'upstream="eth-b"} 1.0' in client.get(f"{base}/metrics").text
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = "".join(log)
    assert "config reloaded" in text and key not in text


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("role", [["up", "--no-demo"], ["api"]])
def test_sighup_plans_reach_the_admin_apis_contracts(
    tmp_path: Path, anvil_factory: Any, client: httpx.Client, role: list[str]
) -> None:
    # ``hoodrun up`` and ``hoodrun api``: a plan the reload added can be contracted on the admin
    # API at once, and a plan it removed no longer can (as keys take and refuse them).
    eth = anvil_factory(chain_id=1)
    port, api_port = free_port(), free_port()
    path = tmp_path / "hoodrun.yaml"
    plans = [{"name": "free", "rate": {"rps": 10}}, {"name": "old", "rate": {"rps": 10}}]
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "api_listen": f"127.0.0.1:{api_port}",
        "data_dir": str(tmp_path),
        "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
        "log_format": "text",
        "telemetry": {"enabled": False},
        "default_plan": "free",
        "plans": plans,
        "chains": [{"name": "eth", "chain_id": 1, "upstreams": [{"name": "a", "url": eth.url}]}],
    }
    path.write_text(yaml.safe_dump(settings))
    token = "reload-admin-token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOODRUN_")}
    env["HOODRUN_ADMIN_TOKEN"] = token
    hoodrun = [sys.executable, "-m", "hoodrun", "-c", str(path)]
    subprocess.run([*hoodrun, "db", "upgrade"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [*hoodrun, "keys", "create", "--org", "acme", "--project", "web", "--json"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    org = orjson.loads(made.stdout)["org_id"]
    proc = subprocess.Popen(
        [*hoodrun, *role], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stdout or ()), daemon=True).start()
    api = f"http://127.0.0.1:{api_port}/admin/v1/orgs/{org}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        wait_until(lambda: _answers(client, f"http://127.0.0.1:{api_port}/health/ready"), 30)
        settings["plans"] = [plans[0], {"name": "gold", "rate": {"rps": 100}}]
        path.write_text(yaml.safe_dump(settings))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: any("config reloaded" in line for line in log), 30)
        gold = client.post(f"{api}/contract", json={"plan": "gold"}, headers=auth)
        assert gold.status_code == 201, gold.text
        old = client.post(f"{api}/contract/plan", json={"plan": "old"}, headers=auth)
        assert old.status_code == 400 and "'old'" in old.text
        history = client.get(f"{api}/contracts", headers=auth).json()["contracts"]
        assert [c["plan"] for c in history] == ["gold"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

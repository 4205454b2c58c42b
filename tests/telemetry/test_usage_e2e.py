"""Requests through a running platform (gateway + api in one process) show up in the usage API:
exactly N calls, with the right outcomes, chains and compute units, on chDB directly and through
NATS JetStream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.config import Config
from hoodrun.devnet import Anvil, free_port
from tests._platform import PlatformThread

TOKEN = "usage-e2e-token"
NATS_URL = "nats://127.0.0.1:4222"


def _config(
    tmp_path: Path, chdb_path: Path, anvils: dict[str, tuple[int, Anvil]], **extra: Any
) -> Config:
    return Config.model_validate(
        {
            "listen": f"127.0.0.1:{free_port()}",
            "api_listen": f"127.0.0.1:{free_port()}",
            "data_dir": str(tmp_path / "data"),
            "database_url": f"sqlite:///{tmp_path}/hoodrun.db",
            "admin_token": TOKEN,
            "analytics_path": str(chdb_path),
            "analytics_database": f"t_{uuid.uuid4().hex[:12]}",
            "telemetry": {"flush_interval": 0.2},
            "chains": [
                {"name": name, "chain_id": chain_id, "upstreams": [{"name": f"{name}-a", "url": node.url}]}
                for name, (chain_id, node) in anvils.items()
            ],
            **extra,
        }
    )  # fmt: skip


def _traffic(gateway: str, key: str, free_key: str) -> int:
    """Known calls; returns how many JSON-RPC calls were made."""
    with httpx.Client(timeout=10) as client:
        for _ in range(7):
            client.post(
                f"{gateway}/eth/v1/{key}",
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
            )
        for _ in range(3):
            client.post(
                f"{gateway}/base/v1/{key}",
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
            )
        batch = [
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "eth_getBalance",
                "params": ["0x" + "00" * 20, "latest"],
            }
            for i in range(4)
        ]
        client.post(f"{gateway}/eth/v1/{key}", content=orjson.dumps(batch))
        client.post(
            f"{gateway}/eth/v1/{free_key}",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "eth_sendRawTransaction",
                "params": ["0x00"],
            },
        )
        client.post(
            f"{gateway}/eth/v1/{key}",
            json={"jsonrpc": "2.0", "id": 1, "method": "eth_noSuchMethod"},
        )
    return 7 + 3 + 4 + 1 + 1  # fmt: skip


def _wait_for_usage(api: str, expected: int, deadline: float = 15.0) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    report: dict[str, Any] = {}
    with httpx.Client(timeout=10, headers=headers) as client:
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            answer = client.get(
                f"{api}/api/v1/usage", params={"by": "chain,method,outcome", "from": "1h"}
            )
            assert answer.status_code == 200, answer.text
            report = answer.json()
            if sum(row["requests"] for row in report["rows"]) >= expected:
                return report
            time.sleep(0.2)
    pytest.fail(f"usage did not reach {expected} calls within {deadline} s: {report}")


@pytest.fixture
def chains(anvil_factory: Any) -> Iterator[dict[str, tuple[int, Anvil]]]:
    yield {"eth": (1, anvil_factory(chain_id=1)), "base": (8453, anvil_factory(chain_id=8453))}


def _create_keys(api: str) -> tuple[str, str]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10, headers=headers) as client:
        pro = client.post(f"{api}/admin/v1/keys", json={"org": "acme", "plan": "pro"}).json()
        free = client.post(f"{api}/admin/v1/keys", json={"org": "acme", "plan": "free"}).json()
    return pro["key"], free["key"]


def _check(report: dict[str, Any], calls: int) -> None:
    got = {(r["chain"], r["method"], r["outcome"]): r for r in report["rows"]}
    assert sum(r["requests"] for r in report["rows"]) == calls
    assert got["eth", "eth_blockNumber", "ok"]["requests"] == 7
    assert got["eth", "eth_blockNumber", "ok"]["compute_units"] == 70
    assert got["base", "eth_chainId", "ok"]["requests"] == 3
    assert got["eth", "eth_getBalance", "ok"]["requests"] == 4
    assert got["eth", "eth_getBalance", "ok"]["compute_units"] == 4 * 19
    refused = got["eth", "eth_sendRawTransaction", "method_not_allowed"]
    assert refused["requests"] == 1 and refused["compute_units"] == 0 and refused["errors"] == 1
    assert got["eth", "eth_noSuchMethod", "rpc_error"]["requests"] == 1


def test_usage_api_counts_every_call_on_chdb(tmp_path: Path, chdb_path: Path, chains: Any) -> None:
    telemetry = {"flush_interval": 0.2, "rollup_interval": 0.3}
    with PlatformThread(_config(tmp_path, chdb_path, chains, telemetry=telemetry)) as running:
        pro, free = _create_keys(running.api_url)
        calls = _traffic(running.gateway_url, pro, free)
        report = _wait_for_usage(running.api_url, calls)
        _check(report, calls)
        time.sleep(0.5)  # nothing more arrives: exactly N, not at least N
        _check(_wait_for_usage(running.api_url, calls), calls)
        # The forecast counts the billable calls (not the refused one) from the rollups.
        billable = calls - 1
        forecast = _wait_for_forecast(running.api_url, billable)
        assert forecast["meter"] == "requests" and forecast["projected"] >= billable
        assert forecast["anomaly"] is False


def _wait_for_forecast(api: str, used: int, deadline: float = 15.0) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10, headers=headers) as client:
        org = client.get(f"{api}/admin/v1/keys").json()["keys"][0]["org_id"]
        until = time.monotonic() + deadline
        found: dict[str, Any] = {}
        while time.monotonic() < until:
            answer = client.get(
                f"{api}/api/v1/usage/forecast", params={"org": org, "meter": "requests"}
            )
            assert answer.status_code == 200, answer.text
            found = answer.json()
            if found["used"] >= used:
                assert found["used"] == used
                return found
            time.sleep(0.2)
    pytest.fail(f"the forecast did not see {used} calls within {deadline} s: {found}")


def test_usage_api_counts_every_call_through_nats(
    tmp_path: Path, chdb_path: Path, chains: Any
) -> None:
    from hoodrun.telemetry.nats import connect_jetstream

    stream = f"HOODRUN_TEST_{uuid.uuid4().hex[:10].upper()}"
    config = _config(
        tmp_path, chdb_path, chains, nats_url=NATS_URL,
        telemetry={"flush_interval": 0.2, "stream": stream},
    )  # fmt: skip
    try:
        with PlatformThread(config) as running:
            pro, free = _create_keys(running.api_url)
            calls = _traffic(running.gateway_url, pro, free)
            _check(_wait_for_usage(running.api_url, calls), calls)
            time.sleep(0.5)
            _check(_wait_for_usage(running.api_url, calls), calls)
    finally:

        async def delete() -> None:
            nc, js = await connect_jetstream(NATS_URL)
            try:
                await js.delete_stream(stream)
            finally:
                await nc.close()

        asyncio.run(delete())

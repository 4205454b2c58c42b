"""Upstream failure: failover under load, breaker open and close, fast 503, timeouts, readiness."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.devnet import Anvil
from hoodrun.gateway.runtime import GatewayRuntime
from hoodrun.upstreams import ChainIdMismatch
from tests.gateway.conftest import ThreadedGateway, make_config, rpc

BODY = orjson.dumps(rpc("eth_blockNumber"))  # never cached: each one reaches a node


def _wait_for(predicate: Any, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {deadline_s} s")


def _upstream(gw: ThreadedGateway, name: str) -> dict[str, Any]:
    assert gw.runtime is not None and gw.runtime.gateway is not None
    pool = gw.runtime.gateway.chains["eth"].pool
    return next(u for u in pool.snapshot() if u["name"] == name)


def test_failover_under_load_and_breaker_cycle(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any
) -> None:
    a: Anvil = anvil_factory(chain_id=1)
    b: Anvil = anvil_factory(chain_id=1)
    gw: ThreadedGateway = gateway_factory(
        make_config(
            sqlite_url,
            {"eth": (1, [a, b])},
            health={"breaker_failures": 3, "breaker_cooldown": 1.0},
        )
    )
    key = gw.key(plan="enterprise").key
    stop = threading.Event()
    results: list[int] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                status = c.post(gw.endpoint(key), content=BODY).status_code
                with lock:
                    results.append(status)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load) for _ in range(4)]
        _wait_for(lambda: len(results) > 200, 10, "warm-up traffic")
        a.stop()  # connections to eth-0 are refused from now on
        _wait_for(
            lambda: _upstream(gw, "eth-0")["breaker"] == 2 or not _upstream(gw, "eth-0")["healthy"],
            5,
            "eth-0 taken out",
        )
        before_restart = len(results)
        _wait_for(lambda: len(results) > before_restart + 300, 10, "traffic on eth-1 alone")
        a.start()  # same port: the node returns
        _wait_for(
            lambda: _upstream(gw, "eth-0")["healthy"] and _upstream(gw, "eth-0")["breaker"] == 0,
            10,
            "eth-0 back, breaker closed",
        )
        stop.set()
        for w in workers:
            w.result()
    errors = [s for s in results if s != 200]
    # Failover: clients see almost no errors while a node dies under load.
    assert len(errors) <= max(2, len(results) // 200), (len(errors), len(results))


def test_no_healthy_upstream_is_a_fast_503(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    a: Anvil = anvil_factory(chain_id=1)
    gw: ThreadedGateway = gateway_factory(make_config(sqlite_url, {"eth": (1, [a])}))
    key = gw.key().key
    assert client.post(gw.endpoint(key), content=BODY).status_code == 200
    a.stop()
    _wait_for(lambda: not _upstream(gw, "eth-0")["healthy"], 5, "the only upstream taken out")
    response = client.post(gw.endpoint(key), content=BODY)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == -32002
    ready = client.get(f"{gw.url}/health/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["chain:eth"]["ok"] is False
    assert client.get(f"{gw.url}/health/live").status_code == 200


def test_hanging_upstream_times_out_with_504(
    gateway_factory: Any, sqlite_url: str, anvil_factory: Any, client: httpx.Client
) -> None:
    a: Anvil = anvil_factory(chain_id=1)
    config = make_config(
        sqlite_url, {"eth": (1, [a])},
        gateway={"request_timeout": 1.0, "upstream_timeout": 0.5},
        health={"interval": 30},
    )  # fmt: skip
    gw: ThreadedGateway = gateway_factory(config)
    key = gw.key().key
    a.pause()
    try:
        response = client.post(gw.endpoint(key), content=BODY)
        assert response.status_code == 504
        assert response.json()["error"]["code"] == -32015
    finally:
        a.resume()


def test_wrong_chain_id_is_refused_at_start(sqlite_url: str, anvil_factory: Any) -> None:
    import asyncio

    a: Anvil = anvil_factory(chain_id=5)
    config = make_config(sqlite_url, {"eth": (1, [a])})

    async def start() -> None:
        from hoodrun.store import upgrade

        await upgrade(sqlite_url)
        async with GatewayRuntime(config, port=0):
            pass

    with pytest.raises(ChainIdMismatch) as caught:
        asyncio.run(start())
    message = str(caught.value)
    assert "eth" in message and "eth-0" in message and "1" in message and "5" in message


def test_ready_and_metrics(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(make_config(sqlite_url, {"eth": (1, [eth_anvil])}))
    key = gw.key().key
    client.post(gw.endpoint(key), content=BODY)
    client.post(
        gw.endpoint(key), content=orjson.dumps([rpc("eth_blockNumber"), rpc("eth_chainId", id=2)])
    )
    ready = client.get(f"{gw.url}/health/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["store"]["ok"] and checks["chain:eth"]["healthy_upstreams"] == ["eth-0"]
    metrics = client.get(f"{gw.url}/metrics").text
    assert 'hoodrun_requests_total{chain="eth",method="eth_chainId",status="200"} 1.0' in metrics
    assert (
        'hoodrun_requests_total{chain="eth",method="eth_blockNumber",status="200"} 2.0' in metrics
    )
    assert 'hoodrun_upstream_healthy{chain="eth",upstream="eth-0"} 1.0' in metrics
    assert 'hoodrun_upstream_breaker_state{chain="eth",upstream="eth-0"} 0.0' in metrics
    assert "hoodrun_request_duration_seconds_bucket" in metrics
    assert "hoodrun_chain_head_block" in metrics
    # The node monitor's figures: what anvil answers, and nothing for what it does not.
    assert 'hoodrun_upstream_txpool_pending{chain="eth",upstream="eth-0"} 0.0' in metrics
    assert 'hoodrun_upstream_syncing{chain="eth",upstream="eth-0"} 0.0' in metrics
    assert 'client_version="anvil/' in metrics
    assert "hoodrun_upstream_peers{" not in metrics  # anvil has no net_peerCount
    assert 'hoodrun_upstream_check_latency_seconds{chain="eth",upstream="eth-0"}' in metrics
    assert "process_start_time_seconds" in metrics and "hoodrun_build_info{" in metrics
    ok = 'hoodrun_upstream_attempts_total{chain="eth",result="ok",upstream="eth-0"}'
    assert ok in metrics and float(metrics.split(ok)[1].split()[0]) >= 2


def test_body_and_batch_size_limits(
    gateway_factory: Any, sqlite_url: str, eth_anvil: Anvil, client: httpx.Client
) -> None:
    gw: ThreadedGateway = gateway_factory(
        make_config(
            sqlite_url, {"eth": (1, [eth_anvil])}, gateway={"max_body_bytes": 4096, "max_batch": 10}
        )
    )
    key = gw.key(plan="enterprise").key
    too_big = client.post(gw.endpoint(key), content=b'{"pad":"' + b"x" * 5000 + b'"}')
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == -32600
    batch = orjson.dumps([rpc("eth_chainId", id=i) for i in range(11)])
    refused = client.post(gw.endpoint(key), content=batch)
    assert refused.status_code == 413
    assert refused.json()["error"]["data"]["reason"] == "batch_too_large"
    ok = client.post(
        gw.endpoint(key), content=orjson.dumps([rpc("eth_chainId", id=i) for i in range(10)])
    )
    assert ok.status_code == 200 and len(ok.json()) == 10

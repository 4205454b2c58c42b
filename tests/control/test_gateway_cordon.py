"""Cordons end to end: an operator cordons an upstream through the admin API and a running
gateway (real anvil nodes behind counting proxies) stops sending it traffic, keeps checking its
health, answers 503 when every upstream is cordoned, and sends to it again once uncordoned. The
gateway's fleet row shows what it applied, and goes stale when the gateway stops reporting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hoodrun.ops.fleet import FleetReporter, fleet, gateway_status
from hoodrun.store import Store
from tests.control.support import ORIGIN, TOKEN, control_app
from tests.gateway.conftest import CountingProxy, ThreadedGateway, make_config

TRAFFIC = orjson.dumps({"jsonrpc": "2.0", "id": "traffic", "method": "eth_blockNumber"})
DEADLINE = 15.0


async def eventually(predicate: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while loop.time() < deadline:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"{what} did not happen within {DEADLINE} s")


@pytest.fixture
def gateway_factory() -> Any:
    started: list[ThreadedGateway] = []

    def make(config: Any, **runtime: Any) -> ThreadedGateway:
        gw = ThreadedGateway(config, **runtime).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


async def test_cordon_reaches_a_running_gateway(
    store: Store, tmp_path: Path, anvil_factory: Any, gateway_factory: Any
) -> None:
    traffic = [
        CountingProxy(anvil_factory(chain_id=1).url, "eth_blockNumber", 0.0,
                      where=lambda call: call.get("id") == "traffic")
        for _ in range(2)
    ]  # fmt: skip
    config = make_config(
        store.url,
        {"eth": (1, traffic)},  # type: ignore[dict-item]  # anything with a .url
        data_dir=str(tmp_path / "data"),
        auth={"jwt_secret": "g" * 40, "argon2_time_cost": 1, "argon2_memory_kib": 64,
              "argon2_parallelism": 1},
    )  # fmt: skip
    gw: ThreadedGateway = gateway_factory(config, cordon_poll_interval=0.2)
    runtime = gw.runtime
    assert runtime is not None and runtime.gateway is not None and runtime.keys is not None
    pool = runtime.gateway.chains["eth"].pool
    key = gw.key(plan="enterprise").key
    reporter = FleetReporter(
        runtime.keys.store, "gateway", lambda: gateway_status(runtime.gateway), interval=0.2
    )
    gw.run(reporter.__aenter__())

    app, _ = control_app(config, store)
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=ORIGIN,
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    client = httpx.Client(timeout=10)

    def send(n: int) -> list[int]:
        """``n`` calls through the gateway; the statuses, and what each node counted."""
        return [client.post(gw.endpoint(key), content=TRAFFIC).status_code for _ in range(n)]

    def counts() -> tuple[int, int]:
        return traffic[0].count, traffic[1].count

    async def cordon(upstream: str, reason: str = "maintenance") -> None:
        answer = await api.post(
            f"/admin/v1/chains/eth/upstreams/{upstream}/cordon", json={"reason": reason}
        )
        assert answer.status_code == 200, answer.text

    async def uncordon(upstream: str) -> None:
        answer = await api.post(f"/admin/v1/chains/eth/upstreams/{upstream}/uncordon")
        assert answer.status_code == 200, answer.text

    async def applied(*names: str) -> None:
        await eventually(lambda: pool.cordoned() == frozenset(names), f"cordons {names} applied")

    try:
        await eventually(lambda: all(u["healthy"] for u in pool.snapshot()), "both nodes healthy")
        assert set(send(5)) == {200}

        # 1. eth-1 cordoned: every call goes to eth-0.
        await cordon("eth-1")
        await applied("eth-1")
        before = counts()
        assert set(send(20)) == {200}
        assert counts() == (before[0] + 20, before[1])
        # Still health-checked while it gets no traffic.
        checked = pool.upstreams[1].checked_at
        await eventually(lambda: pool.upstreams[1].checked_at != checked, "eth-1 checked again")
        snapshot = {u["name"]: u for u in pool.snapshot()}
        assert snapshot["eth-1"]["cordoned"] and snapshot["eth-1"]["healthy"]

        # The fleet row says what this gateway applied; the chains view too.
        async def reported() -> bool:
            chains = (await api.get("/admin/v1/chains")).json()["chains"]
            eth1 = chains[0]["upstreams"][1]
            return bool(eth1["cordoned"] and eth1["gateways_applied"] == 1)

        await eventually(reported, "the cordon reported by the gateway's fleet row")
        instances = (await api.get("/admin/v1/fleet")).json()["instances"]
        [row] = [i for i in instances if i["role"] == "gateway"]
        assert row["state"] == "up" and row["id"] == reporter.id
        assert row["status"]["chains"]["eth"]["cordoned"] == ["eth-1"]
        assert "traffic" not in str(row["status"])  # the upstream URLs' paths stay out

        # 2. Both cordoned: the chain answers the usual 503, no node sees the calls.
        await cordon("eth-0", "drain the chain")
        await applied("eth-0", "eth-1")
        before = counts()
        refused = client.post(gw.endpoint(key), content=TRAFFIC)
        assert refused.status_code == 503
        assert refused.json()["error"]["data"]["reason"] == "no_healthy_upstream"
        assert counts() == before

        # 3. eth-1 uncordoned: every call goes to eth-1.
        await uncordon("eth-1")
        await applied("eth-0")
        before = counts()
        assert set(send(20)) == {200}
        assert counts() == (before[0], before[1] + 20)

        # 4. eth-0 back and eth-1 out again: eth-0 takes the traffic once more.
        await uncordon("eth-0")
        await cordon("eth-1")
        await applied("eth-1")
        before = counts()
        assert set(send(20)) == {200}
        assert counts() == (before[0] + 20, before[1])
    finally:
        client.close()
        await api.aclose()
        # The gateway stops reporting without a goodbye (as a crash would).
        task = reporter._task
        assert task is not None
        gw.loop.call_soon_threadsafe(task.cancel)
        for proxy in traffic:
            proxy.stop()
    await eventually(task.done, "the reporter stopped")

    [row] = await fleet(store, reporter.started_at)
    last = row.seen_at
    later = await fleet(store, last + timedelta(seconds=3 * 0.2 + 0.01))
    assert [(i.id, i.state) for i in later] == [(reporter.id, "gone")]

"""The fleet: each process's row appears, refreshes, goes stale when its process stops
refreshing, is marked stopped on a clean stop and pruned after a day."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hoodrun import __version__
from hoodrun.ops.fleet import KEEP, FleetReporter, fleet, prune, redact_url
from hoodrun.store import Store
from hoodrun.store.tables import service_instances
from tests._stores import FakeClock


async def test_rows_appear_refresh_go_stale_and_are_pruned(store: Store, clock: FakeClock) -> None:
    calls: list[int] = []

    def status() -> dict[str, Any]:
        calls.append(1)
        return {"chains": {"eth": {"best_head": 7}}, "seen": len(calls)}

    # A long interval: the reporter's own loop never runs here, the test drives each refresh.
    reporter = FleetReporter(store, "gateway", status, interval=3600.0, clock=clock, host="gw-1")
    started = clock.now
    async with reporter:
        [gw] = await fleet(store, clock.now)
        assert gw.id == reporter.id == f"gw-1:{reporter.pid}:{int(started.timestamp())}:gateway"
        assert (gw.role, gw.host, gw.version, gw.state) == ("gateway", "gw-1", __version__, "up")
        assert gw.started_at == gw.seen_at == started
        assert gw.status == {"chains": {"eth": {"best_head": 7}}, "seen": 1}
        assert gw.interval == 3600.0

        clock.advance(timedelta(hours=2))
        assert await reporter.report()
        [gw] = await fleet(store, clock.now)
        assert gw.seen_at == clock.now and gw.status["seen"] == 2
        assert gw.uptime == 7200.0 and gw.state == "up"

        # Three intervals without a refresh: gone (the process died, or lost the database).
        later = clock.now + timedelta(hours=3, seconds=1)
        [gw] = await fleet(store, later)
        assert gw.state == "gone" and gw.age == 3 * 3600 + 1
        assert gw.uptime == 7200.0  # up to its last report
        [gw] = await fleet(store, clock.now + timedelta(hours=3))
        assert gw.state == "up"  # not yet

        # A worker of another host beside it.
        other = FleetReporter(store, "worker", dict, interval=3600.0, clock=clock, host="w-1")
        async with other:
            roles = [(i.role, i.state) for i in await fleet(store, clock.now)]
            assert roles == [("gateway", "up"), ("worker", "up")]
    # A clean stop writes a last row, marked stopped.
    states = {i.role: i.state for i in await fleet(store, clock.now)}
    assert states == {"gateway": "stopped", "worker": "stopped"}

    # Unseen for a day: out of the list, and deleted by any reporter's refresh (or prune).
    clock.advance(KEEP + timedelta(seconds=1))
    assert await fleet(store, clock.now) == []
    async with FleetReporter(store, "api", dict, interval=3600.0, clock=clock, host="api-1"):
        async with store.connect() as conn:
            ids = (await conn.execute(select(service_instances.c.id))).scalars().all()
        assert len(ids) == 1 and ids[0].startswith("api-1:")
    clock.advance(KEEP + timedelta(seconds=1))
    assert await prune(store, clock.now) == 1


async def test_a_status_that_fails_or_is_odd_does_not_stop_the_process(
    store: Store, clock: FakeClock
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    async with FleetReporter(store, "api", broken, interval=3600.0, clock=clock):
        [api] = await fleet(store, clock.now)
        assert api.status == {"error": "status failed: RuntimeError"}
    async with FleetReporter(
        store, "worker", lambda: {"when": clock.now, "n": {1, 2}}, interval=3600.0, clock=clock
    ):
        worker = next(i for i in await fleet(store, clock.now) if i.role == "worker")
        assert worker.status["when"] == str(clock.now)


async def test_the_loop_refreshes_by_itself(store: Store) -> None:
    import asyncio

    async with FleetReporter(store, "api", dict, interval=0.05) as reporter:
        [first] = await fleet(store, reporter.started_at)
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            async with store.connect() as conn:
                seen = (await conn.execute(select(service_instances.c.seen_at))).scalar_one()
            if seen > first.seen_at:
                break
        else:
            pytest.fail("the reporter did not refresh its row within 10 s")


def test_bad_arguments_and_use_outside_the_block(store: Store) -> None:
    with pytest.raises(ValueError, match="role must be one of gateway, api, worker"):
        FleetReporter(store, "proxy", dict)
    with pytest.raises(ValueError, match="interval must be positive"):
        FleetReporter(store, "api", dict, interval=0)


async def test_report_refused_outside_the_block(store: Store) -> None:
    reporter = FleetReporter(store, "api", dict)
    with pytest.raises(RuntimeError, match="not running"):
        await reporter.report()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://mainnet.infura.io/v3/0123456789abcdef", "https://mainnet.infura.io/…"),
        ("https://user:pass@node.example:8545/", "https://node.example:8545"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://[::1]:8545/?key=s3cret", "http://[::1]:8545/…"),
        ("not a url", "(unparsable URL)"),
    ],
)
def test_upstream_urls_are_shown_without_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown

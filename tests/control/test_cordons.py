"""The cordons table: changes with their audit rows (before and after, same transaction), names
checked against the config, and what the gateway reads."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from hoodrun.ops.cordons import CordonBook, CordonError, UnknownUpstream
from hoodrun.store import Store
from hoodrun.store.tables import audit_log
from tests._stores import FakeClock
from tests.control.support import control_config


async def audit_rows(store: Store) -> list[dict[str, object]]:
    async with store.connect() as conn:
        rows = await conn.execute(
            select(audit_log).where(audit_log.c.target_type == "upstream").order_by(audit_log.c.id)
        )
        return [dict(row) for row in rows.mappings()]


async def test_cordon_change_uncordon_each_audited(
    store: Store, tmp_path: Path, clock: FakeClock
) -> None:
    config = control_config(store.url, tmp_path)
    book = CordonBook(store, lambda: config, clock=clock)
    first = await book.cordon("eth", "eth-0", "  disk swap  ", "user:ada")
    assert (first.chain, first.upstream, first.reason, first.actor) == (
        "eth", "eth-0", "disk swap", "user:ada",
    )  # fmt: skip
    assert first.at == clock.now
    # The same reason again changes nothing (and writes no row).
    assert await book.cordon("eth", "eth-0", "disk swap", "user:bob") == first
    clock.advance(timedelta(minutes=1))
    changed = await book.cordon("eth", "eth-0", "disk swap, then a reboot", "user:bob")
    assert await book.list() == [changed]
    assert await book.by_chain() == {"eth": frozenset({"eth-0"})}
    clock.advance(timedelta(minutes=1))
    removed = await book.uncordon("eth", "eth-0", "user:cy")
    assert removed == changed
    assert await book.list() == []
    assert await book.uncordon("eth", "eth-0", "user:cy") is None  # nothing to do

    rows = await audit_rows(store)
    assert [(r["action"], r["actor"], r["target_id"]) for r in rows] == [
        ("upstream.cordon", "user:ada", "eth/eth-0"),
        ("upstream.cordon", "user:bob", "eth/eth-0"),
        ("upstream.uncordon", "user:cy", "eth/eth-0"),
    ]
    assert rows[0]["before"] is None
    assert rows[0]["after"] == {
        "chain": "eth",
        "upstream": "eth-0",
        "reason": "disk swap",
        "actor": "user:ada",
        "at": first.at.isoformat(),
    }
    assert rows[1]["before"]["reason"] == "disk swap"  # type: ignore[index]
    assert rows[1]["after"]["reason"] == "disk swap, then a reboot"  # type: ignore[index]
    assert rows[2]["before"]["reason"] == "disk swap, then a reboot"  # type: ignore[index]
    assert rows[2]["after"] is None
    assert rows[2]["details"] == {"chain": "eth", "upstream": "eth-0"}


async def test_names_are_checked_against_the_config(store: Store, tmp_path: Path) -> None:
    config = control_config(store.url, tmp_path)
    book = CordonBook(store, lambda: config)
    with pytest.raises(
        UnknownUpstream, match=r"no chain 'polygon' in the config \(chains: eth, base\)"
    ):
        await book.cordon("polygon", "p-0", "x", "test")
    with pytest.raises(UnknownUpstream, match=r"chain 'eth' has no upstream 'eth-9'") as caught:
        await book.cordon("eth", "eth-9", "x", "test")
    assert caught.value.status == 404
    with pytest.raises(UnknownUpstream):
        await book.uncordon("eth", "eth-9", "test")
    with pytest.raises(CordonError, match="say why"):
        await book.cordon("eth", "eth-0", "   ", "test")
    with pytest.raises(CordonError, match="longer than 500"):
        await book.cordon("eth", "eth-0", "x" * 501, "test")
    assert await audit_rows(store) == []


async def test_a_cordon_outliving_its_upstream_can_still_be_lifted(
    store: Store, tmp_path: Path
) -> None:
    config = control_config(store.url, tmp_path)
    current = [config]
    book = CordonBook(store, lambda: current[0])
    await book.cordon("eth", "eth-1", "retiring", "test")
    # The upstream leaves the config (a reload); its cordon is still there to be lifted.
    current[0] = control_config(
        store.url,
        tmp_path,
        chains=[{"name": "eth", "chain_id": 1, "upstreams": [{"name": "eth-0", "url": "http://127.0.0.1:9"}]}],
    )  # fmt: skip
    removed = await book.uncordon("eth", "eth-1", "test")
    assert removed is not None and removed.reason == "retiring"

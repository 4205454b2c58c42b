"""KeyService on SQLite and PostgreSQL: lifecycle, audit, events, lookup; what is never stored."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from hoodrun.config import Config, load_config
from hoodrun.keys.errors import (
    InvalidKeyOptions,
    KeyNotFound,
    KeyRevoked,
    UnknownChain,
    UnknownPlan,
)
from hoodrun.keys.events import LocalKeyEvents
from hoodrun.keys.secret import hash_key, key_start, looks_like_key
from hoodrun.keys.service import CHANGES_OVERLAP, KeyService
from hoodrun.store import Store, StoreUnavailable
from hoodrun.store.tables import audit_log, metadata, orgs, projects
from tests._stores import UNREACHABLE_URLS, FakeClock, pg_admin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "hoodrun.example.yaml", env={})


@pytest.fixture
def events() -> tuple[LocalKeyEvents, list[str]]:
    bus, seen = LocalKeyEvents(), list[str]()
    bus.subscribe(seen.append)
    return bus, seen


@pytest.fixture
def service(
    store: Store, config: Config, events: tuple[LocalKeyEvents, list[str]], clock: FakeClock
) -> KeyService:
    return KeyService(store, config, events[0], clock=clock)


async def _all_rows(store: Store) -> str:
    """Every row of every table, as text."""
    async with store.connect() as conn:
        return repr([(await conn.execute(select(table))).all() for table in metadata.sorted_tables])


async def test_create_stores_only_the_hash(
    service: KeyService, store: Store, events: tuple[LocalKeyEvents, list[str]], clock: FakeClock
) -> None:
    created = await service.create(
        org="acme",
        plan="pro",
        chains=["eth", "base", "eth"],
        origins=["https://App.Example.com/"],
        expires_in=timedelta(days=30),
        name="backend",
        methods_deny=["eth_sendRawTransaction"],
    )
    record = created.record
    assert looks_like_key(created.key)
    assert record.hash == hash_key(created.key)
    assert record.start == key_start(created.key)
    assert created.id == record.id and record.id.startswith("key_")
    assert record.org == "acme" and record.org_id.startswith("org_")
    assert record.project == "default" and record.project_id.startswith("prj_")
    assert record.plan == "pro"
    assert record.chains == frozenset({"eth", "base"})
    assert record.origins == frozenset({"https://app.example.com"})
    assert record.methods_allow is None
    assert record.methods_deny == {"eth_sendRawTransaction"}
    assert record.created_at == clock.now
    assert record.expires_at == clock.now + timedelta(days=30)
    assert record.usable_at(clock.now) is None
    assert created.key not in repr(created)
    assert events[1] == [record.hash]

    rows = await _all_rows(store)
    assert created.key not in rows
    assert record.hash in rows  # in api_keys, and only there:
    async with store.connect() as conn:
        audit = repr((await conn.execute(select(audit_log))).all())
    assert created.key not in audit and record.hash not in audit


async def test_lookup_is_the_gateway_view(service: KeyService) -> None:
    created = await service.create(org="acme", project="web")
    assert await service.lookup(created.record.hash) == created.record
    assert await service.get(created.id) == created.record
    assert await service.lookup(hash_key("hr_unknownunknownunknown")) is None


async def test_effective_plan_key_then_org_then_default(service: KeyService, store: Store) -> None:
    plain = await service.create(org="acme")
    own = await service.create(org="acme", plan="enterprise")
    assert plain.record.plan == "free"  # config.default_plan
    async with store.transaction() as conn:
        await conn.execute(update(orgs).values(plan="pro"))
    assert (await service.get(plain.id)).plan == "pro"
    assert (await service.get(own.id)).plan == "enterprise"


async def test_org_and_project_are_created_once(service: KeyService, store: Store) -> None:
    # Concurrent creates for a new org must share one org row (PostgreSQL races for real).
    created = await asyncio.gather(*(service.create(org="new-org") for _ in range(5)))
    await service.create(org="new-org", project="other")
    assert len({c.record.org_id for c in created}) == 1
    async with store.connect() as conn:
        assert len((await conn.execute(select(orgs))).all()) == 1
        assert sorted((await conn.execute(select(projects.c.name))).scalars()) == [
            "default",
            "other",
        ]
    actions = [e.action for e in await service.audit()]
    assert actions.count("org.create") == 1 and actions.count("project.create") == 2


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"plan": "gold"},
            UnknownPlan,
            "unknown plan 'gold': choose one of free, pro, enterprise",
        ),
        ({"chains": ["eth", "solana"]}, UnknownChain, "unknown chain 'solana': choose one of"),
        ({"chains": []}, InvalidKeyOptions, "chains: give at least one"),
        ({"origins": ["app.example.com"]}, InvalidKeyOptions, "use scheme://host"),
        ({"expires_in": timedelta(0)}, InvalidKeyOptions, "expires_in"),
        ({"rps": 0.0}, InvalidKeyOptions, "rps"),
        ({"methods_deny": ["eth call"]}, InvalidKeyOptions, "not a JSON-RPC method"),
        ({"org": "  "}, InvalidKeyOptions, "org: must be 1 to 64"),
    ],
)
async def test_invalid_options_change_nothing(
    service: KeyService, store: Store, options: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        await service.create(**{"org": "acme", **options})  # type: ignore[arg-type]
    assert await service.list() == []
    assert await service.audit() == []


async def test_list_filters(service: KeyService, clock: FakeClock) -> None:
    a = await service.create(org="a")
    clock.advance(timedelta(seconds=1))
    b = await service.create(org="b")
    clock.advance(timedelta(seconds=1))
    c = await service.create(org="a")
    assert [r.id for r in await service.list()] == [a.id, b.id, c.id]
    assert [r.id for r in await service.list(org="a")] == [a.id, c.id]
    assert [r.id for r in await service.list(org=b.record.org_id)] == [b.id]
    await service.revoke(a.id, actor="t")
    assert [r.id for r in await service.list(org="a", include_revoked=False)] == [c.id]


async def test_revoke_disable_enable(
    service: KeyService, clock: FakeClock, events: tuple[LocalKeyEvents, list[str]]
) -> None:
    created = await service.create(org="acme")
    key_hash = created.record.hash
    events[1].clear()

    disabled = await service.disable(created.id, actor="ops")
    assert disabled.usable_at(clock.now) == "key_disabled"
    assert (await service.lookup(key_hash)) == disabled
    enabled = await service.enable(created.id, actor="ops")
    assert enabled.usable_at(clock.now) is None
    revoked = await service.revoke(created.id, actor="ops")
    assert revoked.usable_at(clock.now) == "key_revoked"
    assert revoked.status_at(clock.now) == "revoked"
    assert events[1] == [key_hash] * 3

    # Repeating a change is a no-op: no audit row, no event.
    await service.revoke(created.id, actor="ops")
    await service.enable(created.id, actor="ops")
    assert events[1] == [key_hash] * 3
    entries = await service.audit(target_id=created.id)
    assert [(e.action, e.actor) for e in entries] == [
        ("key.revoke", "ops"),
        ("key.enable", "ops"),
        ("key.disable", "ops"),
        ("key.create", "cli"),
    ]
    assert entries[0].details == {"revoked_at": clock.now.isoformat()}


async def test_rotation_with_grace_keeps_the_old_key_until_it_ends(
    service: KeyService, clock: FakeClock, events: tuple[LocalKeyEvents, list[str]]
) -> None:
    old = await service.create(
        org="acme", plan="pro", chains=["eth"], name="n", rps=5, burst=7, methods_allow=["eth_call"]
    )
    events[1].clear()
    start = clock.now
    new = await service.rotate(old.id, grace=timedelta(hours=1), actor="ops")

    assert new.key != old.key and new.record.hash == hash_key(new.key)
    for attr in ("org_id", "project_id", "name", "plan", "chains", "methods_allow", "rps", "burst"):
        assert getattr(new.record, attr) == getattr(old.record, attr)
    assert events[1] == [old.record.hash, new.record.hash]

    old_now = await service.lookup(old.record.hash)
    assert old_now is not None and old_now.revoked_at == start + timedelta(hours=1)
    clock.advance(timedelta(minutes=59))
    assert old_now.usable_at(clock.now) is None
    assert new.record.usable_at(clock.now) is None
    clock.advance(timedelta(minutes=1))
    assert old_now.usable_at(clock.now) == "key_revoked"
    assert new.record.usable_at(clock.now) is None

    rotate = (await service.audit(target_id=old.id))[0]
    assert rotate.action == "key.rotate" and rotate.details["new_key_id"] == new.id
    created = (await service.audit(target_id=new.id))[0]
    assert created.details["rotated_from"] == old.id

    with pytest.raises(KeyRevoked, match="create a new key"):
        await service.rotate(old.id, actor="ops")


async def test_rotation_without_grace_revokes_at_once(
    service: KeyService, clock: FakeClock
) -> None:
    old = await service.create(org="acme")
    await service.rotate(old.id, actor="ops")
    assert (await service.get(old.id)).usable_at(clock.now) == "key_revoked"


async def test_expired_keys_are_reported_by_usable_at(
    service: KeyService, clock: FakeClock
) -> None:
    created = await service.create(org="acme", expires_in=timedelta(hours=1))
    clock.advance(timedelta(hours=1))
    record = await service.get(created.id)
    assert record.usable_at(clock.now) == "key_expired"
    assert record.status_at(clock.now) == "expired"
    with pytest.raises(KeyRevoked, match="expired"):
        await service.rotate(created.id, actor="ops")


async def test_unknown_ids(service: KeyService) -> None:
    for call in (
        service.get("key_nope"),
        service.revoke("key_nope", actor="t"),
        service.rotate("key_nope", actor="t"),
        service.disable("key_nope", actor="t"),
    ):
        with pytest.raises(KeyNotFound, match="key_nope"):
            await call


async def test_changed_since(service: KeyService, clock: FakeClock) -> None:
    a = await service.create(org="acme")
    clock.advance(timedelta(minutes=1))
    since = clock.now
    b = await service.create(org="acme")
    hashes, watermark = await service.changed_since(since)
    assert hashes == [b.record.hash]
    assert watermark == clock.now - CHANGES_OVERLAP

    clock.advance(timedelta(minutes=1))
    await service.disable(a.id, actor="t")
    hashes, _ = await service.changed_since(clock.now)
    assert hashes == [a.record.hash]


async def test_audit_limit(service: KeyService) -> None:
    for _ in range(3):
        await service.create(org="acme")
    assert len(await service.audit(limit=2)) == 2
    with pytest.raises(InvalidKeyOptions):
        await service.audit(limit=0)


async def test_a_failing_event_bus_does_not_undo_the_change(
    store: Store, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(LocalKeyEvents):
        async def publish(self, key_hashes: object) -> None:
            raise ConnectionError("redis is down")

    service = KeyService(store, config, Broken())
    created = await service.create(org="acme")
    assert await service.lookup(created.record.hash) == created.record
    assert "could not announce key changes" in caplog.text


@pytest.mark.parametrize("url", UNREACHABLE_URLS)
async def test_lookup_when_the_database_is_down(url: str, config: Config) -> None:
    async with Store(url) as store:
        service = KeyService(store, config)
        with pytest.raises(StoreUnavailable):
            await service.lookup(hash_key("hr_whatever"))


async def test_survives_a_postgresql_restart(pg_clean: str, config: Config) -> None:
    """Pooled connections killed under the store (a server restart) are replaced, not failed."""
    async with Store(pg_clean) as store:
        service = KeyService(store, config)
        created = await service.create(org="acme")
        database = pg_clean.rsplit("/", 1)[1]
        kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'"
        await pg_admin(kill.format(database))
        assert await service.lookup(created.record.hash) == created.record

"""A project's payload capture setting on SQLite and PostgreSQL: defaults (the migration's for
projects made before it), changes audited with before and after, and the key lookup that carries
it to the gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, select

from hoodrun.config import Config, load_config
from hoodrun.keys.events import LocalKeyEvents
from hoodrun.keys.orgs import InvalidProjectSettings, OrgBook, UnknownProject
from hoodrun.keys.secret import hash_key
from hoodrun.keys.service import KeyService
from hoodrun.store import Store, upgrade
from hoodrun.store.columns import UTCDateTime
from hoodrun.store.tables import audit_log
from tests._stores import FakeClock

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "hoodrun.example.yaml", env={})


async def test_capture_is_off_by_default_and_changes_are_audited(
    store: Store, config: Config, clock: FakeClock
) -> None:
    bus, announced = LocalKeyEvents(), list[str]()
    bus.subscribe(announced.append)
    keys = KeyService(store, config, bus, clock=clock)
    book = OrgBook(store, now=clock)
    created = await keys.create(org="acme", project="web", actor="test")
    other = await keys.create(org="acme", project="api", actor="test")
    org, project = created.record.org_id, created.record.project_id
    web = {p.name: p for p in await book.projects(org)}["web"]
    assert (web.id, web.capture_payloads, web.capture_bytes) == (project, False, 2048)
    assert created.record.capture_bytes is None  # off: the gateway captures nothing

    since = clock.now
    clock.advance(timedelta(seconds=10))
    changed = await book.update_project(
        org, project, capture_payloads=True, capture_bytes=512, actor="alice"
    )
    assert (changed.capture_payloads, changed.capture_bytes) == (True, 512)
    assert {p.name: p for p in await book.projects(org)}["web"].capture_bytes == 512
    # The gateway's lookup carries it; the other project's key is untouched.
    found = await keys.lookup(hash_key(created.key))
    assert found is not None and found.capture_bytes == 512
    untouched = await keys.lookup(hash_key(other.key))
    assert untouched is not None and untouched.capture_bytes is None
    # Pollers see the project's keys as changed; the events bus is told when asked.
    hashes, _ = await keys.changed_since(since + timedelta(seconds=5))
    assert hashes == [hash_key(created.key)]
    await keys.announce_project(project)
    assert announced[-1:] == [hash_key(created.key)]

    async with store.connect() as conn:
        rows = (
            (await conn.execute(select(audit_log).where(audit_log.c.action == "project.update")))
            .mappings()
            .all()
        )
    assert len(rows) == 1
    row = rows[0]
    assert (row["actor"], row["target_type"], row["target_id"]) == ("alice", "project", project)
    assert row["before"] == {"capture_payloads": False, "capture_bytes": 2048}
    assert row["after"] == {"capture_payloads": True, "capture_bytes": 512}

    # The same values again change nothing and audit nothing; one field changes alone.
    await book.update_project(org, project, capture_bytes=512, actor="alice")
    off = await book.update_project(org, project, capture_payloads=False, actor="alice")
    assert (off.capture_payloads, off.capture_bytes) == (False, 512)
    found = await keys.lookup(hash_key(created.key))
    assert found is not None and found.capture_bytes is None
    async with store.connect() as conn:
        audited = (
            await conn.execute(
                select(audit_log.c.before, audit_log.c.after)
                .where(audit_log.c.action == "project.update")
                .order_by(audit_log.c.id)
            )
        ).all()
    assert [(a.before, a.after) for a in audited][1:] == [
        ({"capture_payloads": True}, {"capture_payloads": False})
    ]
    assert {p.name: p for p in await book.projects(org)}["api"].capture_payloads is False


async def test_bad_settings_and_other_orgs_projects_are_refused(
    store: Store, config: Config
) -> None:
    keys = KeyService(store, config)
    book = OrgBook(store)
    mine = await keys.create(org="acme", project="web", actor="test")
    theirs = await keys.create(org="other", project="web", actor="test")
    org = mine.record.org_id
    for size in (0, 63, 16385):
        with pytest.raises(InvalidProjectSettings, match="between 64 and 16384"):
            await book.update_project(org, mine.record.project_id, capture_bytes=size, actor="a")
    # A project is changed through its own org only.
    with pytest.raises(UnknownProject):
        await book.update_project(org, theirs.record.project_id, capture_payloads=True, actor="a")
    with pytest.raises(UnknownProject):
        await book.update_project(org, "prj_nope", capture_payloads=True, actor="a")
    found = await keys.lookup(hash_key(theirs.key))
    assert found is not None and found.capture_bytes is None


async def test_projects_made_before_the_migration_capture_nothing(
    empty_database_url: str,
) -> None:
    await upgrade(empty_database_url, "0005")
    # The tables as they were at 0005 (no capture columns).
    old = MetaData()
    old_orgs = Table(
        "orgs",
        old,
        Column("id", String),
        Column("name", String),
        Column("created_at", UTCDateTime()),
    )
    old_projects = Table(
        "projects",
        old,
        Column("id", String),
        Column("org_id", String),
        Column("name", String),
        Column("created_at", UTCDateTime()),
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    async with Store(empty_database_url) as store, store.transaction() as conn:
        await conn.execute(insert(old_orgs).values(id="org_old", name="old", created_at=at))
        await conn.execute(
            insert(old_projects).values(id="prj_old", org_id="org_old", name="web", created_at=at)
        )
    await upgrade(empty_database_url)
    async with Store(empty_database_url) as store:
        [project] = await OrgBook(store).projects("org_old")
    assert (project.id, project.capture_payloads, project.capture_bytes) == (
        "prj_old",
        False,
        2048,
    )

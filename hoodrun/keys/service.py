"""Key management: create, list, revoke, rotate, disable and enable keys; the gateway's lookup.

Every change is one transaction that also writes its audit row; after the commit the changed
keys' hashes are announced on ``KeyEvents`` so gateways purge them from their caches. A key is
shown once, when it is made: only its hash is stored.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hoodrun.config import Config
from hoodrun.keys._queries import LOOKUP, select_keys, to_record
from hoodrun.keys.errors import InvalidKeyOptions, KeyNotFound, KeyRevoked, UnknownOrg, UnknownPlan
from hoodrun.keys.events import KeyEvents
from hoodrun.keys.options import KeyOptions, check_options
from hoodrun.keys.record import KeyRecord
from hoodrun.keys.secret import generate_key, hash_key, key_start
from hoodrun.store import AuditEntry, Store, new_id, read_audit, write_audit
from hoodrun.store.tables import api_keys, orgs, projects
from hoodrun.webhooks import WebhookBook

__all__ = ["CHANGES_OVERLAP", "CreatedKey", "KeyService"]

logger = logging.getLogger(__name__)

# ``changed_since`` hands back a watermark this far behind "now", so a change whose transaction
# took its timestamp before our query but committed after it is still seen on the next poll.
# Purging a key twice is harmless; missing a revocation is not.
CHANGES_OVERLAP = timedelta(seconds=5)
MAX_AUDIT_LIMIT = 1000


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: the only moment ``key`` exists outside its owner's hands."""

    id: str
    key: str = field(repr=False)
    record: KeyRecord


class KeyService:
    def __init__(
        self,
        store: Store,
        config: Config,
        events: KeyEvents | None = None,
        clock: Callable[[], datetime] = _utc_now,
        webhooks: WebhookBook | None = None,
    ) -> None:
        """``webhooks`` (default: one on ``store``) is told ``key.created`` and ``key.revoked``
        in the transactions that make them."""
        self._store = store
        self._config = config
        self._events = events
        self._clock = clock
        self._webhooks = webhooks if webhooks is not None else WebhookBook(store, clock=clock)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        """A reloaded config (its plans and chains check new keys' options from now on)."""
        self._config = config

    def now(self) -> datetime:
        """The service's clock (injected in tests): what key states are judged against."""
        return self._clock()

    # --- changes -------------------------------------------------------------------------------

    async def create(
        self,
        *,
        org: str,
        project: str | None = None,
        plan: str | None = None,
        chains: Sequence[str] | None = None,
        origins: Sequence[str] | None = None,
        expires_in: timedelta | None = None,
        name: str | None = None,
        methods_allow: Sequence[str] | None = None,
        methods_deny: Sequence[str] = (),
        rps: float | None = None,
        burst: int | None = None,
        actor: str = "cli",
    ) -> CreatedKey:
        """Make a key (and its org and project if they are new); the key is returned once."""
        options = check_options(
            self._config,
            org=org,
            project=project,
            plan=plan,
            chains=chains,
            origins=origins,
            expires_in=expires_in,
            name=name,
            methods_allow=methods_allow,
            methods_deny=methods_deny,
            rps=rps,
            burst=burst,
        )
        key = generate_key()
        async with self._store.transaction() as conn:
            now = self._clock()
            org_id = await self._ensure_org(conn, options.org, now=now, actor=actor)
            project_id = await self._ensure_project(
                conn, org_id, options.project, now=now, actor=actor
            )
            key_id = await self._insert_key(
                conn,
                key,
                _columns(options, org_id=org_id, project_id=project_id, now=now),
                now=now,
                actor=actor,
                details={"org": options.org, "project": options.project},
            )
            record = await self._fetch(conn, key_id)
            await self._tell_webhooks(conn, "key.created", record)
        await self._announce([record.hash])
        return CreatedKey(record.id, key, record)

    async def revoke(self, key_id: str, *, actor: str) -> KeyRecord:
        """Revoke at once (also ends a rotation's grace period early). Idempotent."""

        def change(row: RowMapping, now: datetime) -> dict[str, Any] | None:
            if row["revoked_at"] is not None and row["revoked_at"] <= now:
                return None
            return {"revoked_at": now}

        return await self._change(key_id, "key.revoke", change, actor=actor, event="key.revoked")

    async def disable(self, key_id: str, *, actor: str) -> KeyRecord:
        """Refuse the key until it is enabled again. Idempotent."""
        return await self._change(
            key_id,
            "key.disable",
            lambda row, _: None if row["disabled"] else {"disabled": True},
            actor=actor,
        )

    async def enable(self, key_id: str, *, actor: str) -> KeyRecord:
        """Undo ``disable`` (a revoked or expired key stays unusable). Idempotent."""
        return await self._change(
            key_id,
            "key.enable",
            lambda row, _: {"disabled": False} if row["disabled"] else None,
            actor=actor,
        )

    async def change_plan(self, key_id: str, plan: str | None, *, actor: str) -> KeyRecord:
        """Give the key its own plan (``None``: back to its org's). Gateways apply it to the
        key's next request: the change is announced like a revocation."""
        self._check_plan(plan)
        return await self._change(
            key_id,
            "key.plan",
            lambda row, _: None if row["plan"] == plan else {"plan": plan},
            actor=actor,
        )

    async def change_org_plan(self, org_id: str, plan: str | None, *, actor: str) -> list[str]:
        """Set the plan of an org's keys that name none (``None``: the default plan). Every key
        of the org is announced, so gateways resolve its plan again. Returns their ids."""
        self._check_plan(plan)
        async with self._store.transaction() as conn:
            found = (
                await conn.execute(select(orgs.c.plan).where(orgs.c.id == org_id).with_for_update())
            ).first()
            if found is None:
                raise UnknownOrg(f"no org has the id {org_id!r}")
            rows = (
                await conn.execute(
                    select(api_keys.c.id, api_keys.c.hash).where(api_keys.c.org_id == org_id)
                )
            ).all()
            if found.plan == plan:
                return [row.id for row in rows]
            now = self._clock()
            await conn.execute(update(orgs).where(orgs.c.id == org_id).values(plan=plan))
            # Their records carry the effective plan: touching them makes pollers see it too.
            await conn.execute(
                update(api_keys).where(api_keys.c.org_id == org_id).values(updated_at=now)
            )
            await write_audit(
                conn, at=now, actor=actor, action="org.plan", target_type="org",
                target_id=org_id, details={"plan": plan, "before": found.plan},
            )  # fmt: skip
        await self._announce([row.hash for row in rows])
        return [row.id for row in rows]

    async def announce_project(self, project_id: str) -> None:
        """Announce every key of a project, so gateways read them again: after a change of
        what their records carry from the project (``OrgBook.update_project``)."""
        stmt = select(api_keys.c.hash).where(api_keys.c.project_id == project_id)
        async with self._store.connect() as conn:
            hashes = list((await conn.execute(stmt)).scalars())
        await self._announce(hashes)

    async def org_plan(self, org_id: str) -> str | None:
        """The org's own plan (None: the default plan); ``UnknownOrg`` (a ``LookupError``) when
        no org has this id."""
        async with self._store.connect() as conn:
            found = (await conn.execute(select(orgs.c.plan).where(orgs.c.id == org_id))).first()
        if found is None:
            raise UnknownOrg(f"no org has the id {org_id!r}")
        plan: str | None = found.plan
        return plan

    async def update_policy(
        self, key_id: str, changes: Mapping[str, Any], *, actor: str
    ) -> KeyRecord:
        """Change a key's policy (``name``, ``chains``, ``origins``, ``methods_allow``,
        ``methods_deny``, ``rps``, ``burst``; ``None`` clears one), checked like a new key's.
        Gateways apply it at the key's next request."""
        unknown = set(changes) - set(_POLICY)
        if unknown:
            raise InvalidKeyOptions(f"not a key policy: {', '.join(sorted(unknown))}")
        current = await self.get(key_id)
        merged = {name: getattr(current, name) for name in _POLICY} | dict(changes)
        options = check_options(
            self._config,
            org="org",  # checked when the key was made; only the policy is checked here
            project=None,
            plan=None,
            chains=merged["chains"],
            origins=merged["origins"],
            expires_in=None,
            name=merged["name"],
            methods_allow=merged["methods_allow"],
            methods_deny=merged["methods_deny"] or (),
            rps=merged["rps"],
            burst=merged["burst"],
        )
        wanted = {name: getattr(options, name) for name in changes}

        def change(row: RowMapping, _: datetime) -> dict[str, Any] | None:
            differs = {name: value for name, value in wanted.items() if row[name] != value}
            return differs or None

        return await self._change(key_id, "key.policy", change, actor=actor)

    def _check_plan(self, plan: str | None) -> None:
        if plan is not None and self._config.plan(plan) is None:
            names = ", ".join(p.name for p in self._config.plans)
            raise UnknownPlan(f"unknown plan {plan!r}: use one of {names}")

    async def rotate(
        self, key_id: str, *, grace: timedelta | None = None, actor: str
    ) -> CreatedKey:
        """A new key with the same settings; the old one is revoked now, or when ``grace`` ends."""
        if grace is not None and grace < timedelta(0):
            raise InvalidKeyOptions("grace: must not be negative")
        key = generate_key()
        async with self._store.transaction() as conn:
            old = await self._fetch_row(conn, key_id, lock=True)
            now = self._clock()  # after the lock, so updated_at is close to the commit
            reason = to_record(old, self._config.default_plan).usable_at(now)
            if reason in ("key_revoked", "key_expired"):
                state = reason.removeprefix("key_")
                raise KeyRevoked(f"key {key_id} is {state}; create a new key instead of rotating")
            revokes_at = now + grace if grace else now
            if old["revoked_at"] is not None:  # already rotating: never extend its grace
                revokes_at = min(revokes_at, old["revoked_at"])
            copied = {column: old[column] for column in _COPIED_ON_ROTATION}
            new_id_ = await self._insert_key(
                conn,
                key,
                {**copied, "rotated_from": key_id, "created_at": now},
                now=now,
                actor=actor,
                details={"org": old["org_name"], "project": old["project_name"]},
            )
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(revoked_at=revokes_at, updated_at=now)
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action="key.rotate",
                target_type="key",
                target_id=key_id,
                details={
                    "new_key_id": new_id_,
                    "grace_seconds": grace.total_seconds() if grace else 0,
                    "revoked_at": revokes_at.isoformat(),
                },
            )
            record = await self._fetch(conn, new_id_)
            await self._tell_webhooks(conn, "key.created", record)
            if revokes_at <= now:  # with a grace period the old key is not revoked yet
                await self._tell_webhooks(conn, "key.revoked", await self._fetch(conn, key_id))
        await self._announce([old["hash"], record.hash])
        return CreatedKey(record.id, key, record)

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, key_id: str) -> KeyRecord:
        async with self._store.connect() as conn:
            return await self._fetch(conn, key_id)

    async def list(
        self, *, org: str | None = None, include_revoked: bool = True
    ) -> builtins.list[KeyRecord]:
        """Keys oldest first; ``org`` is an org's id or name (one org: its id first)."""
        stmt = select_keys().order_by(api_keys.c.created_at, api_keys.c.id)
        if org is not None:
            stmt = stmt.where(api_keys.c.org_id == (await self.org_id(org) or ""))
        if not include_revoked:
            now = self._clock()
            stmt = stmt.where(or_(api_keys.c.revoked_at.is_(None), api_keys.c.revoked_at > now))
        async with self._store.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [to_record(row, self._config.default_plan) for row in rows]

    async def org_id(self, name_or_id: str) -> str | None:
        """The id of the org with this id, else of the org with this name; None when there is
        none. (An id wins: names may not look like ids, but older ones might.)"""
        async with self._store.connect() as conn:
            found = await conn.scalar(select(orgs.c.id).where(orgs.c.id == name_or_id))
            if found is None:
                found = await conn.scalar(select(orgs.c.id).where(orgs.c.name == name_or_id))
        return str(found) if found is not None else None

    async def lookup(self, key_hash: str) -> KeyRecord | None:
        """The gateway's cache-miss fill: one indexed query. Raises ``StoreUnavailable``."""
        async with self._store.connect() as conn:
            row = (await conn.execute(LOOKUP, {"key_hash": key_hash})).mappings().first()
        return None if row is None else to_record(row, self._config.default_plan)

    async def changed_since(self, since: datetime) -> tuple[builtins.list[str], datetime]:
        """Hashes of keys changed at or after ``since``, and the ``since`` for the next poll.

        The next watermark trails "now" by ``CHANGES_OVERLAP``, so a key may be reported on
        more than one poll; that only purges it from a cache twice.
        """
        watermark = self._clock() - CHANGES_OVERLAP
        stmt = select(api_keys.c.hash).where(api_keys.c.updated_at >= since)
        async with self._store.connect() as conn:
            hashes = list((await conn.execute(stmt)).scalars())
        return hashes, watermark

    async def audit(
        self, *, limit: int = 100, target_id: str | None = None
    ) -> builtins.list[AuditEntry]:
        """The newest audit entries first."""
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            raise InvalidKeyOptions(f"limit: must be between 1 and {MAX_AUDIT_LIMIT}")
        async with self._store.connect() as conn:
            return await read_audit(conn, limit=limit, target_id=target_id)

    # --- internals -----------------------------------------------------------------------------

    async def _fetch_row(
        self, conn: AsyncConnection, key_id: str, *, lock: bool = False
    ) -> RowMapping:
        stmt = select_keys().where(api_keys.c.id == key_id)
        if lock:  # PostgreSQL: serialize changes to one key (SQLite's writer lock already does)
            stmt = stmt.with_for_update(of=api_keys)
        row: RowMapping | None = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise KeyNotFound(f"no key with id {key_id!r}; see `hoodrun keys list`")
        return row

    async def _fetch(self, conn: AsyncConnection, key_id: str) -> KeyRecord:
        return to_record(await self._fetch_row(conn, key_id), self._config.default_plan)

    async def _change(
        self,
        key_id: str,
        action: str,
        change: Callable[[RowMapping, datetime], dict[str, Any] | None],
        *,
        actor: str,
        event: str | None = None,
    ) -> KeyRecord:
        async with self._store.transaction() as conn:
            row = await self._fetch_row(conn, key_id, lock=True)
            now = self._clock()  # after the lock, so updated_at is close to the commit
            values = change(row, now)
            if values is None:  # already so: nothing to write, audit or announce
                return to_record(row, self._config.default_plan)
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(**values, updated_at=now)
            )
            await write_audit(
                conn,
                at=now,
                actor=actor,
                action=action,
                target_type="key",
                target_id=key_id,
                details=_jsonable(values),
                before={name: row[name] for name in values},
                after=values,
            )
            record = await self._fetch(conn, key_id)
            if event is not None:
                await self._tell_webhooks(conn, event, record)
        await self._announce([record.hash])
        return record

    async def _tell_webhooks(self, conn: AsyncConnection, event: str, record: KeyRecord) -> None:
        data = {
            "key_id": record.id,
            "name": record.name,
            "start": record.start,
            "project_id": record.project_id,
        }
        await self._webhooks.emit(conn, event, record.org_id, data)

    async def _ensure_org(
        self, conn: AsyncConnection, name: str, *, now: datetime, actor: str
    ) -> str:
        found = await conn.scalar(select(orgs.c.id).where(orgs.c.name == name))
        if found is not None:
            return str(found)
        org_id = new_id("org")
        # A concurrent create of the same org wins quietly; then its row is the one we use.
        stmt = self._store.insert(orgs).values(id=org_id, name=name, plan=None, created_at=now)
        result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=[orgs.c.name]))
        if result.rowcount != 1:
            return str(await conn.scalar(select(orgs.c.id).where(orgs.c.name == name)))
        await write_audit(
            conn,
            at=now,
            actor=actor,
            action="org.create",
            target_type="org",
            target_id=org_id,
            details={"name": name},
        )
        return org_id

    async def _ensure_project(
        self, conn: AsyncConnection, org_id: str, name: str, *, now: datetime, actor: str
    ) -> str:
        where = (projects.c.org_id == org_id) & (projects.c.name == name)
        found = await conn.scalar(select(projects.c.id).where(where))
        if found is not None:
            return str(found)
        project_id = new_id("prj")
        stmt = self._store.insert(projects).values(
            id=project_id, org_id=org_id, name=name, created_at=now
        )
        result = await conn.execute(
            stmt.on_conflict_do_nothing(index_elements=[projects.c.org_id, projects.c.name])
        )
        if result.rowcount != 1:
            return str(await conn.scalar(select(projects.c.id).where(where)))
        await write_audit(
            conn,
            at=now,
            actor=actor,
            action="project.create",
            target_type="project",
            target_id=project_id,
            details={"org_id": org_id, "name": name},
        )
        return project_id

    async def _insert_key(
        self,
        conn: AsyncConnection,
        key: str,
        columns: Mapping[str, Any],
        *,
        now: datetime,
        actor: str,
        details: Mapping[str, Any],
    ) -> str:
        key_id = new_id("key")
        values = {
            **columns,
            "id": key_id,
            "hash": hash_key(key),
            "start": key_start(key),
            "updated_at": now,
            "disabled": columns.get("disabled", False),
            "revoked_at": None,
        }
        await conn.execute(insert(api_keys).values(values))
        audited = {
            name: value
            for name, value in values.items()
            if name not in ("id", "hash", "start", "org_id", "updated_at", "revoked_at")
        }
        await write_audit(
            conn,
            at=now,
            actor=actor,
            action="key.create",
            target_type="key",
            target_id=key_id,
            details={**details, **_jsonable(audited)},
        )
        return key_id

    async def _announce(self, key_hashes: Iterable[str]) -> None:
        if self._events is None:
            return
        try:
            await self._events.publish(list(key_hashes))
        except Exception as exc:  # noqa: BLE001 - whatever the bus, the change is committed
            # Gateways still drop the keys when their cache TTL (<= 60 s) runs out, or at their
            # next changed_since poll: a warning, not a failure of the change itself.
            logger.warning("could not announce key changes to gateways: %s", exc)


# What ``update_policy`` may change.
_POLICY = ("name", "chains", "origins", "methods_allow", "methods_deny", "rps", "burst")

# Settings a rotated key keeps: everything but identity, secret and lifecycle timestamps.
_COPIED_ON_ROTATION = (
    "org_id",
    "project_id",
    "name",
    "plan",
    "chains",
    "origins",
    "methods_allow",
    "methods_deny",
    "rps",
    "burst",
    "expires_at",
    "disabled",
)


def _columns(options: KeyOptions, *, org_id: str, project_id: str, now: datetime) -> dict[str, Any]:
    return {
        "org_id": org_id,
        "project_id": project_id,
        "name": options.name,
        "plan": options.plan,
        "chains": options.chains,
        "origins": options.origins,
        "methods_allow": options.methods_allow,
        "methods_deny": options.methods_deny,
        "rps": options.rps,
        "burst": options.burst,
        "created_at": now,
        "expires_at": now + options.expires_in if options.expires_in else None,
    }


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}

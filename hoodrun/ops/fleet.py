"""The fleet: every running process of the platform, as it reports itself.

Each process (role ``gateway``, ``api`` or ``worker``) runs a ``FleetReporter``: it writes its
row of ``service_instances`` at start (id ``host:pid:start:role``, role, version, start time) and
refreshes ``seen_at`` and its ``status`` every ``interval`` seconds; a gateway's status is what
it sees of its upstreams (``gateway_status``). A clean stop writes a last row marked stopped.
A row not refreshed for ``STALE_AFTER`` intervals is ``gone`` (the process died or lost the
database); rows unseen for ``KEEP`` are deleted by the reporters still running.

``fleet(store, now)`` reads them all for the admin API and the control center, which see the
whole platform from any api process this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from sqlalchemy import RowMapping, delete, select

from hoodrun import __version__
from hoodrun.store.tables import service_instances

if TYPE_CHECKING:
    from hoodrun.config import Config, UpstreamConfig
    from hoodrun.gateway.app import Gateway
    from hoodrun.ops.cordons import Cordon
    from hoodrun.store import Store

__all__ = [
    "KEEP",
    "ROLES",
    "STALE_AFTER",
    "ChainView",
    "FleetReporter",
    "Instance",
    "UpstreamView",
    "chain_views",
    "fleet",
    "gateway_status",
    "prune",
    "redact_url",
]

log = logging.getLogger("hoodrun.fleet")

ROLES: Final = ("gateway", "api", "worker")
STALE_AFTER: Final = 3
"""Intervals without a refresh after which an instance counts as gone."""
KEEP: Final = timedelta(days=1)
"""How long the row of an instance gone (or stopped) is kept."""
_INTERVAL_KEY: Final = "_interval"
_STOPPED_KEY: Final = "_stopped"

State = Literal["up", "gone", "stopped"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Instance:
    """One process as it last reported itself; ``state`` as of the ``now`` it was read at."""

    id: str
    role: str
    host: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    status: Mapping[str, Any]
    interval: float
    state: State
    age: float
    """Seconds since it last reported."""

    @property
    def uptime(self) -> float:
        """Seconds it has run (until its last report, once gone or stopped)."""
        end = self.seen_at if self.state != "up" else self.seen_at + timedelta(seconds=self.age)
        return max(0.0, (end - self.started_at).total_seconds())


async def fleet(store: Store, now: datetime) -> list[Instance]:
    """Every instance that reported within ``KEEP``, by role, host and start."""
    stmt = (
        select(service_instances)
        .where(service_instances.c.seen_at >= now - KEEP)
        .order_by(
            service_instances.c.role, service_instances.c.host, service_instances.c.started_at
        )
    )
    async with store.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [_instance(row, now) for row in rows]


def _instance(row: RowMapping, now: datetime) -> Instance:
    status = dict(row["status"] or {})
    interval = float(status.pop(_INTERVAL_KEY, 5.0) or 5.0)
    stopped = bool(status.pop(_STOPPED_KEY, False))
    age = max(0.0, (now - row["seen_at"]).total_seconds())
    state: State = "stopped" if stopped else "gone" if age > STALE_AFTER * interval else "up"
    return Instance(
        id=row["id"],
        role=row["role"],
        host=row["host"],
        pid=row["pid"],
        version=row["version"],
        started_at=row["started_at"],
        seen_at=row["seen_at"],
        status=status,
        interval=interval,
        state=state,
        age=age,
    )


async def prune(store: Store, now: datetime) -> int:
    """Delete the rows not refreshed within ``KEEP``; how many."""
    async with store.transaction() as conn:
        result = await conn.execute(
            delete(service_instances).where(service_instances.c.seen_at < now - KEEP)
        )
    return int(result.rowcount or 0)


class FleetReporter:
    """``async with FleetReporter(store, "gateway", status):`` this process is in the fleet.

    ``status`` is called at every refresh (it must be quick and not block); what it returns
    must be JSON (anything else is written as its ``str``). A refresh that fails (the database
    is down) is logged and tried again at the next interval; the process runs on regardless.
    """

    def __init__(
        self,
        store: Store,
        role: str,
        status: Callable[[], Mapping[str, Any]],
        interval: float = 5.0,
        *,
        clock: Callable[[], datetime] = _utc_now,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self._store = store
        self.role = role
        self._status = status
        self.interval = interval
        self._clock = clock
        self.host = (host or socket.gethostname())[:255]
        self.pid = os.getpid() if pid is None else pid
        self.started_at = clock()
        stamp = int(self.started_at.timestamp())
        # host:pid:start, and the role: ``hoodrun up`` runs several roles in one process.
        self.id = f"{self.host[:32]}:{self.pid}:{stamp}:{role}"
        self._task: asyncio.Task[None] | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    async def __aenter__(self) -> FleetReporter:
        if self._state != "new":
            raise RuntimeError(f"the fleet reporter of {self.id} was already started")
        self._state = "open"
        await self.report()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"fleet:{self.role}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state != "open":
            return
        self._state = "closed"
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._write(stopped=True), timeout=5.0)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.report()

    async def report(self) -> bool:
        """Refresh this instance's row now (and prune the fleet's old rows); ``False`` when the
        database did not take it."""
        if self._state != "open":
            raise RuntimeError(f"the fleet reporter of {self.id} is not running")
        return await self._write(stopped=False)

    async def _write(self, *, stopped: bool) -> bool:
        now = self._clock()
        try:
            status = dict(self._status())
        except Exception as exc:  # the status is news, never a reason to stop
            log.exception("fleet: the status of %s failed", self.role)
            status = {"error": f"status failed: {type(exc).__name__}"}
        status[_INTERVAL_KEY] = self.interval
        if stopped:
            status[_STOPPED_KEY] = True
        values = {
            "role": self.role,
            "host": self.host,
            "pid": self.pid,
            "version": __version__[:32],
            "started_at": self.started_at,
            "seen_at": now,
            "status": _jsonable(status),
        }
        stmt = self._store.insert(service_instances).values(id=self.id, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[service_instances.c.id],
            set_={"seen_at": now, "status": values["status"], "version": values["version"]},
        )
        try:
            async with self._store.transaction() as conn:
                await conn.execute(stmt)
                await conn.execute(
                    delete(service_instances).where(service_instances.c.seen_at < now - KEEP)
                )
        except Exception as exc:  # noqa: BLE001 (store down: the next refresh tries again)
            log.warning("fleet: %s not refreshed: %s", self.id, type(exc).__name__)
            return False
        return True


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """Round-trips through JSON: enums become their values, anything odd its ``str``."""
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result


# --- what a gateway reports ---------------------------------------------------------------------

# The fields of an upstream's snapshot a gateway reports (not its URL: see ``redact_url``).
_UPSTREAM_FIELDS: Final = (
    "name",
    "healthy",
    "reason",
    "cordoned",
    "head",
    "lag",
    "syncing",
    "peers",
    "finalized",
    "client_version",
    "check_latency_ms",
    "breaker_state",
    "latency_ms",
    "error_rate",
    "inflight",
    "attempts",
    "weight",
    "tags",
    "tier",
)


def gateway_status(gateway: Gateway | None) -> dict[str, Any]:
    """A gateway's status: per chain its best head, its upstreams as its pool sees them
    (``ChainPool.snapshot()``, cordoned included) and the cordons it applied."""
    if gateway is None:
        return {"chains": {}}
    chains: dict[str, Any] = {}
    for name, state in gateway.chains.items():
        pool = state.pool
        upstreams = []
        for snap in pool.snapshot():
            entry = {field: snap.get(field) for field in _UPSTREAM_FIELDS}
            entry["url"] = redact_url(str(snap.get("url", "")))
            upstreams.append(entry)
        chains[name] = {
            "best_head": pool.best_head(),
            "upstreams": upstreams,
            "cordoned": sorted(pool.cordoned()),
        }
    return {"chains": chains}


def redact_url(url: str) -> str:
    """``scheme://host:port`` of an upstream's URL: paid providers put the API key in the path
    or the query (``/v3/<key>``), and credentials may sit before the host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unparsable URL)"
    if not parts.scheme or not host:
        return "(unparsable URL)"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    tail = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{tail}"


# --- chains as the fleet sees them ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """An upstream: its config, its cordon, and how the freshest running gateway sees it."""

    name: str
    url: str
    weight: float | None
    tier: str | None
    tags: tuple[str, ...]
    configured: bool
    """``False``: cordoned, but no longer in the config."""
    cordon: Cordon | None
    status: Mapping[str, Any] | None
    observed_by: str | None
    observed_at: datetime | None
    gateways: int
    """Running gateways that report this upstream."""
    applied: int
    """Of those, how many have its cordon applied (report it cordoned)."""

    @property
    def cordoned(self) -> bool:
        return self.cordon is not None


@dataclass(frozen=True, slots=True)
class ChainView:
    name: str
    chain_id: int | None
    best_head: int | None
    upstreams: tuple[UpstreamView, ...]


def chain_views(
    config: Config, instances: Iterable[Instance], cordons: Iterable[Cordon]
) -> list[ChainView]:
    """Each configured chain with its upstreams (plus chains and upstreams that only a cordon
    still names), their cordons, and the latest status reported by a running gateway."""
    live = sorted(
        (i for i in instances if i.role == "gateway" and i.state == "up"),
        key=lambda i: i.seen_at,
        reverse=True,
    )
    cordoned: dict[tuple[str, str], Cordon] = {(c.chain, c.upstream): c for c in cordons}
    order: dict[str, list[UpstreamConfig | str]] = {}
    ids: dict[str, int] = {}
    for chain in config.chains:
        order[chain.name] = list(chain.upstreams)
        ids[chain.name] = chain.chain_id
    for chain_name, upstream in cordoned:
        names = order.setdefault(chain_name, [])
        if all((u if isinstance(u, str) else u.name) != upstream for u in names):
            names.append(upstream)
    views = []
    for chain_name, members in order.items():
        heads = [
            head for i in live if isinstance(head := _chain_of(i, chain_name).get("best_head"), int)
        ]
        upstreams = []
        for member in members:
            name = member if isinstance(member, str) else member.name
            seen = [
                (i, snap)
                for i in live
                for snap in _chain_of(i, chain_name).get("upstreams", ())
                if isinstance(snap, dict) and snap.get("name") == name
            ]
            first = seen[0] if seen else None
            upstreams.append(
                UpstreamView(
                    name=name,
                    url="" if isinstance(member, str) else redact_url(member.url),
                    weight=None if isinstance(member, str) else member.weight,
                    tier=None if isinstance(member, str) else member.tier,
                    tags=() if isinstance(member, str) else tuple(member.tags),
                    configured=not isinstance(member, str),
                    cordon=cordoned.get((chain_name, name)),
                    status=first[1] if first else None,
                    observed_by=first[0].id if first else None,
                    observed_at=first[0].seen_at if first else None,
                    gateways=len(seen),
                    applied=sum(1 for _, snap in seen if snap.get("cordoned")),
                )
            )
        views.append(
            ChainView(
                name=chain_name,
                chain_id=ids.get(chain_name),
                best_head=max(heads) if heads else None,
                upstreams=tuple(upstreams),
            )
        )
    return views


def _chain_of(instance: Instance, chain: str) -> Mapping[str, Any]:
    chains = instance.status.get("chains")
    found = chains.get(chain) if isinstance(chains, dict) else None
    return found if isinstance(found, dict) else {}

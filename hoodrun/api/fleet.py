"""The platform's own routes (``/admin/v1``): the fleet, chains and upstreams with their cordons,
the job queue, and the service levels per chain. Operators only: each route needs a platform
permission (``platform:read``, ``upstreams:read|write``, ``jobs:read|write``), which no org role
grants.

Errors follow the admin API (``{"error": {"code": "...", "message": "..."}}``): 400 a bad
window or reason, 401 no or a bad credential, 403 a role without the permission, 404 an unknown
chain, upstream or job, 409 a job whose state does not allow the change, 422 a malformed body,
503 the database or the analytics store is unavailable. Cordons and job changes are in the audit
log with their caller, before and after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from hoodrun.api.errors import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth, actor
from hoodrun.jobs import STATUSES, Job, JobNotFound, JobStateError
from hoodrun.ops.cordons import MAX_REASON, Cordon, CordonBook, CordonError
from hoodrun.ops.fleet import Instance, UpstreamView, chain_views, fleet
from hoodrun.ops.slo import WINDOW_PATTERN, SloReport, measure
from hoodrun.ops.slo import parse_window as slo_window
from hoodrun.telemetry.store import StoreError

if TYPE_CHECKING:
    from hoodrun.config import Config
    from hoodrun.jobs import JobQueue
    from hoodrun.store import Store
    from hoodrun.telemetry.reporting import Reports

__all__ = ["fleet_router", "parse_window"]

log = logging.getLogger("hoodrun.api")


def parse_window(value: str) -> timedelta:
    """``15m``, ``1h``, ``7d``: a window of the SLO report (400 when it is not one)."""
    try:
        return slo_window(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_window", str(exc)) from None


# --- bodies -----------------------------------------------------------------------------------


class CordonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1, max_length=MAX_REASON, description="Why (shown to every operator)."
    )


class FleetInstanceOut(BaseModel):
    id: str = Field(description="host:pid:start:role")
    role: str = Field(description="gateway, api or worker")
    host: str
    pid: int
    version: str
    started_at: datetime
    seen_at: datetime
    state: Literal["up", "gone", "stopped"] = Field(
        description="up: refreshed within 3 intervals; gone: not since; stopped: a clean stop."
    )
    age_seconds: float = Field(description="Since its last refresh.")
    uptime_seconds: float
    interval_seconds: float
    status: dict[str, Any] = Field(description="What it reports (a gateway: its upstreams).")

    @classmethod
    def of(cls, instance: Instance) -> FleetInstanceOut:
        return cls(
            id=instance.id,
            role=instance.role,
            host=instance.host,
            pid=instance.pid,
            version=instance.version,
            started_at=instance.started_at,
            seen_at=instance.seen_at,
            state=instance.state,
            age_seconds=round(instance.age, 3),
            uptime_seconds=round(instance.uptime, 3),
            interval_seconds=instance.interval,
            status=dict(instance.status),
        )


class FleetOut(BaseModel):
    at: datetime
    instances: list[FleetInstanceOut]


class CordonOut(BaseModel):
    reason: str
    actor: str
    at: datetime

    @classmethod
    def of(cls, cordon: Cordon | None) -> CordonOut | None:
        if cordon is None:
            return None
        return cls(reason=cordon.reason, actor=cordon.actor, at=cordon.at)


class UpstreamHealthOut(BaseModel):
    """An upstream as a running gateway last reported it (fields it did not report: null)."""

    model_config = ConfigDict(extra="ignore")

    healthy: bool | None = Field(default=None, description="Health checks pass, breaker closed.")
    reason: str | None = Field(default=None, description="Why it is out, if it is.")
    cordoned: bool | None = Field(default=None, description="The gateway applied its cordon.")
    head: int | None = None
    lag: int | None = None
    syncing: bool | None = None
    peers: int | None = None
    finalized: int | None = None
    client_version: str | None = None
    check_latency_ms: float | None = None
    breaker_state: str | None = Field(default=None, description="closed, half_open or open")
    latency_ms: float | None = None
    error_rate: float | None = None
    inflight: int | None = None


class UpstreamNodeOut(BaseModel):
    name: str
    url: str = Field(description="scheme://host:port only (a provider's key stays out).")
    weight: float | None
    tier: str | None
    tags: list[str]
    configured: bool = Field(description="False: only its cordon still names it.")
    cordoned: bool
    cordon: CordonOut | None
    status: UpstreamHealthOut | None = Field(description="From the freshest running gateway.")
    observed_by: str | None = Field(description="That gateway's instance id.")
    observed_at: datetime | None
    gateways: int = Field(description="Running gateways that report this upstream.")
    gateways_applied: int = Field(description="Of those, how many have applied its cordon.")

    @classmethod
    def of(cls, view: UpstreamView) -> UpstreamNodeOut:
        return cls(
            name=view.name,
            url=view.url,
            weight=view.weight,
            tier=view.tier,
            tags=list(view.tags),
            configured=view.configured,
            cordoned=view.cordoned,
            cordon=CordonOut.of(view.cordon),
            status=(
                UpstreamHealthOut.model_validate(dict(view.status))
                if view.status is not None
                else None
            ),
            observed_by=view.observed_by,
            observed_at=view.observed_at,
            gateways=view.gateways,
            gateways_applied=view.applied,
        )


class ChainStatusOut(BaseModel):
    name: str
    chain_id: int | None = Field(description="Null for a chain only a cordon still names.")
    best_head: int | None
    upstreams: list[UpstreamNodeOut]


class ChainsOut(BaseModel):
    chains: list[ChainStatusOut]


class CordonChangeOut(BaseModel):
    chain: str
    upstream: str
    cordoned: bool
    cordon: CordonOut | None
    changed: bool = Field(description="False: it was so already.")


class QueueJobsOut(BaseModel):
    jobs: list[Job]


class QueueStatsOut(BaseModel):
    kinds: dict[str, dict[str, int]] = Field(description="kind -> status -> jobs")


class SloIndicatorOut(BaseModel):
    name: str
    label: str
    value: float | None = Field(description="Null without calls in the window.")
    unit: Literal["ms", "ratio"]
    op: Literal["<", ">="]
    target: float
    source: str = Field(description="Which seed sets the target.")
    ok: bool | None
    status: Literal["ok", "breached", "no_data"]


class ChainSloOut(BaseModel):
    chain: str
    requests: int
    errors: int = Field(description="Calls answered with a 5xx.")
    rate_limited: int
    windows: int = Field(description="Minutes (or hours) of the window.")
    down_windows: int
    ok: bool | None
    indicators: list[SloIndicatorOut]


class SloOut(BaseModel):
    start: datetime
    end: datetime
    window: str
    every: Literal["minute", "hour"]
    chains: list[ChainSloOut]

    @classmethod
    def of(cls, report: SloReport, window: str) -> SloOut:
        return cls(
            start=report.start,
            end=report.end,
            window=window,
            every="minute" if report.every == "minute" else "hour",
            chains=[
                ChainSloOut(
                    chain=c.chain,
                    requests=c.requests,
                    errors=c.errors,
                    rate_limited=c.rate_limited,
                    windows=c.windows,
                    down_windows=c.down_windows,
                    ok=c.ok,
                    indicators=[
                        SloIndicatorOut(
                            name=i.objective.name,
                            label=i.objective.label,
                            value=i.value,
                            unit=i.objective.unit,
                            op=i.objective.op,
                            target=i.objective.target,
                            source=i.objective.source,
                            ok=i.ok,
                            status="no_data" if i.ok is None else "ok" if i.ok else "breached",
                        )
                        for i in c.indicators
                    ],
                )
                for c in report.chains
            ],
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


ChainName = Annotated[str, Path(min_length=1, max_length=64)]
UpstreamName = Annotated[str, Path(min_length=1, max_length=128)]
JobId = Annotated[str, Path(min_length=1, max_length=64)]


def fleet_router(
    config_getter: Callable[[], Config],
    store: Store,
    auth: Auth,
    jobs: JobQueue | None,
    reports: Callable[[], Reports | None],
    *,
    clock: Callable[[], datetime] = _utc_now,
) -> APIRouter:
    """The operators' routes over the fleet, cordons, ``jobs`` (none: no job routes) and the
    service levels (``reports`` gives the analytics store's reports, or ``None``: 503)."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 503)
    }
    router = APIRouter(prefix="/admin/v1", tags=["platform"], responses=errors)
    cordons = CordonBook(store, config_getter, clock=clock)

    @router.get("/fleet", dependencies=[auth.require("platform:read")])
    async def list_fleet() -> FleetOut:
        """Every process of the platform (gateway, api, worker) that reported within a day."""
        now = clock()
        return FleetOut(at=now, instances=[FleetInstanceOut.of(i) for i in await fleet(store, now)])

    @router.get("/chains", dependencies=[auth.require("upstreams:read")])
    async def list_chains() -> ChainsOut:
        """Chains and their upstreams: config, cordon, and what the running gateways see."""
        views = chain_views(config_getter(), await fleet(store, clock()), await cordons.list())
        return ChainsOut(
            chains=[
                ChainStatusOut(
                    name=v.name,
                    chain_id=v.chain_id,
                    best_head=v.best_head,
                    upstreams=[UpstreamNodeOut.of(u) for u in v.upstreams],
                )
                for v in views
            ]
        )

    writes = [auth.require("upstreams:write")]

    @router.post("/chains/{chain}/upstreams/{upstream}/cordon", dependencies=writes)
    async def cordon(chain: ChainName, upstream: UpstreamName, body: CordonIn) -> CordonChangeOut:
        """Take the upstream out of rotation on every gateway (within ``gateway.cordon_poll``
        seconds); it is still health-checked. Every upstream of a chain cordoned: the chain
        answers 503 (no healthy upstream)."""
        try:
            before = await cordons.get(chain, upstream)
            after = await cordons.cordon(chain, upstream, body.reason, actor())
        except CordonError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return CordonChangeOut(
            chain=chain,
            upstream=upstream,
            cordoned=True,
            cordon=CordonOut.of(after),
            changed=before != after,
        )

    @router.post("/chains/{chain}/upstreams/{upstream}/uncordon", dependencies=writes)
    async def uncordon(chain: ChainName, upstream: UpstreamName) -> CordonChangeOut:
        """Put the upstream back in rotation (uncordoning one not cordoned changes nothing)."""
        try:
            removed = await cordons.uncordon(chain, upstream, actor())
        except CordonError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return CordonChangeOut(
            chain=chain, upstream=upstream, cordoned=False, cordon=None, changed=removed is not None
        )

    @router.get("/slo", dependencies=[auth.require("platform:read")])
    async def slo(
        window: Annotated[
            str, Query(pattern=WINDOW_PATTERN, description="15m, 1h (default), 7d; up to 30d.")
        ] = "1h",
    ) -> SloOut:
        """Per chain over the window: p95 latency, error rate, rate-limit hit ratio and
        availability, each against the seeds' target (``hoodrun.ops.slo``)."""
        span = parse_window(window)
        found = reports()
        if found is None:
            raise ApiError(503, "analytics_unavailable", "the analytics store is not available")
        chains = [chain.name for chain in config_getter().chains]
        try:
            report = await measure(found, chains, span)
        except ValueError as exc:
            raise ApiError(400, "invalid_window", str(exc)) from None
        except StoreError as exc:
            log.warning("slo report failed: %s", exc)
            raise ApiError(
                503, "analytics_unavailable", "the analytics store did not answer; try again"
            ) from None
        return SloOut.of(report, window)

    if jobs is not None:
        _job_routes(router, auth, jobs)
    return router


def _job_routes(router: APIRouter, auth: Auth, jobs: JobQueue) -> None:
    reads = [auth.require("jobs:read")]
    writes = [auth.require("jobs:write")]

    @router.get("/jobs", dependencies=reads)
    async def list_jobs(
        kind: Annotated[str | None, Query(max_length=64, description="Only this kind.")] = None,
        status: Annotated[
            Literal["queued", "running", "done", "dead", "cancelled"] | None,
            Query(description="Only jobs in this state."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> QueueJobsOut:
        """Jobs of the queue, the newest first."""
        found = await jobs.list(status=status, kind=kind, limit=limit)
        return QueueJobsOut(jobs=found)

    @router.get("/jobs/stats", dependencies=reads)
    async def job_stats() -> QueueStatsOut:
        """How many jobs of each kind are in each state."""
        counts = await jobs.counts()
        kinds = sorted({kind for kind, _ in counts})
        return QueueStatsOut(kinds={k: {s: counts.get((k, s), 0) for s in STATUSES} for k in kinds})

    async def changed(job_id: str, change: Callable[..., Awaitable[Job]]) -> Job:
        try:
            return await change(job_id, actor=actor())
        except JobNotFound:
            raise ApiError(404, "job_not_found", f"no job {job_id!r}") from None
        except JobStateError as exc:
            raise ApiError(409, "job_state", str(exc)) from None

    @router.get("/jobs/{job_id}", dependencies=reads)
    async def get_job(job_id: JobId) -> Job:
        """One job, its payload and result included."""
        job = await jobs.get(job_id)
        if job is None:
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
        return job

    @router.post("/jobs/{job_id}/retry", dependencies=writes)
    async def retry_job(job_id: JobId) -> Job:
        """Run a dead or cancelled job again, now, with all its attempts (409 otherwise)."""
        return await changed(job_id, jobs.retry)

    @router.post("/jobs/{job_id}/cancel", dependencies=writes)
    async def cancel_job(job_id: JobId) -> Job:
        """Give up a queued, running or dead job (409 otherwise)."""
        return await changed(job_id, jobs.cancel)

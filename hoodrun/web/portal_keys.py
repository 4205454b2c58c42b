"""The portal's keys, projects and endpoints.

Keys: the org's keys with, for each, its rate in the last minute against its limit, the org's
monthly quota left under the key's plan (quotas count the org's usage, as the gateway enforces
them) and the key's usage this month. Creating or rotating a key shows it once, with a copy
button; only its hash is stored. Revoking is at once; rotating keeps the old key for a grace
period. Chains and methods scope a key (none chosen: every chain, the plan's methods).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from hoodrun.config import Config, PlanConfig, parse_listen
from hoodrun.keys.errors import KeyNotFound, KeysError
from hoodrun.keys.orgs import InvalidProjectSettings, OrgBook, UnknownProject
from hoodrun.keys.record import KeyRecord
from hoodrun.keys.service import CreatedKey
from hoodrun.metering.entitlements import month_bounds
from hoodrun.store.tables import projects
from hoodrun.telemetry.store import StoreError
from hoodrun.web.context import WebContext
from hoodrun.web.forms import checked, field, listed
from hoodrun.web.render import render
from hoodrun.web.session import PageNotFound, PortalAuth, Viewer, is_htmx
from hoodrun.web.usage_data import MonthUsage, key_rates

__all__ = ["gateway_base", "key_routes", "snippets"]

log = logging.getLogger("hoodrun.web")

EXPIRIES = {
    "": None,
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "365d": timedelta(days=365),
}
GRACES = {"0": None, "1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
KEY_PLACEHOLDER = "YOUR_API_KEY"


def gateway_base(config: Config) -> str:
    """Where customers call the gateway: ``web.gateway_url``, else ``listen``."""
    if config.web.gateway_url:
        return config.web.gateway_url.rstrip("/")
    host, port = parse_listen(config.listen)
    if host in ("0.0.0.0", "::"):  # noqa: S104 - listening everywhere: show this machine
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def snippets(url: str) -> dict[str, str]:
    """How to call ``url`` (a chain's endpoint with a key): curl, ethers.js, web3.py."""
    return {
        "curl": (
            f"curl -s {url} \\\n  -H 'content-type: application/json' \\\n"
            """  -d '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'"""
        ),
        "ethers.js": (
            'import { JsonRpcProvider } from "ethers";  // npm install ethers\n'
            f'const provider = new JsonRpcProvider("{url}");\n'
            "console.log(await provider.getBlockNumber());"
        ),
        "web3.py": (
            "from web3 import Web3  # pip install web3\n"
            f'w3 = Web3(Web3.HTTPProvider("{url}"))\n'
            "print(w3.eth.block_number)"
        ),
    }


@dataclass(frozen=True, slots=True)
class Quota:
    meter: str
    limit: int
    used: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def share(self) -> float:
        return min(self.used / self.limit, 1.0) if self.limit else 1.0


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as the keys page shows it."""

    record: KeyRecord
    status: str
    plan: PlanConfig | None
    rps: float | None
    burst: int | None
    last_minute: int | None
    peak_minute: int | None
    limited_24h: int | None
    quotas: tuple[Quota, ...]
    month: Any  # Totals | None

    @property
    def rate(self) -> float | None:
        """Calls per second over the last minute."""
        return None if self.last_minute is None else self.last_minute / 60

    @property
    def rate_share(self) -> float:
        if self.rate is None or not self.rps:
            return 0.0
        return min(self.rate / self.rps, 1.0)


class _Usage:
    """The month so far and the keys' rates, or why they are not available."""

    def __init__(self) -> None:
        self.month: MonthUsage | None = None
        self.rates: dict[str, dict[str, int]] = {}
        self.error: str | None = None

    @classmethod
    async def read(cls, ctx: WebContext, org_id: str, key_id: str | None = None) -> _Usage:
        found = cls()
        reports = ctx.reports()
        if reports is None:
            found.error = "Usage is not available: the analytics store is not open."
            return found
        try:
            start, _ = month_bounds(reports.now())
            found.month = await MonthUsage.read(reports, org_id, start)
            found.rates = await key_rates(reports, org_id, key_id)
        except (StoreError, ValueError) as exc:
            log.warning("portal usage failed: %s", exc)
            found.error = "Usage is not available right now; try again shortly."
        return found


def _view(config: Config, record: KeyRecord, usage: _Usage, now: Any) -> KeyView:
    plan = config.plan(record.plan)
    rates = usage.rates.get(record.id, {}) if usage.month is not None else None
    month = usage.month
    quotas: tuple[Quota, ...] = ()
    if plan is not None and month is not None:
        totals = month.totals()  # quotas count the whole org's month
        quotas = tuple(
            Quota(meter, limit, totals.meter(meter)) for meter, limit in sorted(plan.quotas.items())
        )
    return KeyView(
        record=record,
        status=record.status_at(now),
        plan=plan,
        rps=record.rps if record.rps is not None else (plan.rate.rps if plan else None),
        burst=record.burst if record.burst is not None else (plan.rate.capacity if plan else None),
        last_minute=None if rates is None else rates.get("last_minute", 0),
        peak_minute=None if rates is None else rates.get("peak_minute", 0),
        limited_24h=None if rates is None else rates.get("limited_24h", 0),
        quotas=quotas,
        month=month.totals(record.id) if month is not None else None,
    )


def key_routes(router: APIRouter, ctx: WebContext, auth: PortalAuth) -> None:
    keys, config = ctx.keys, ctx.config
    read = Depends(auth.require("keys:read", "see keys"))
    write = Depends(auth.require("keys:write", "create, rotate or revoke keys"))
    projects_read = Depends(auth.require("org:read", "see projects"))
    org_write = Depends(auth.require("org:write", "change a project's settings"))

    async def table(viewer: Viewer) -> dict[str, Any]:
        usage = await _Usage.read(ctx, viewer.org_id)
        now = keys.now()
        records = await keys.list(org=viewer.org_id)
        views = [_view(config, record, usage, now) for record in records]
        views.sort(key=lambda v: (v.status != "active", v.record.created_at))
        return {"views": views, "usage_error": usage.error, "graces": list(GRACES)}

    async def page(
        request: Request,
        viewer: Viewer,
        *,
        created: CreatedKey | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        return render(
            request,
            "portal/keys.html",
            status=status,
            **await table(viewer),
            chains=[c.name for c in config.chains],
            expiries=list(EXPIRIES),
            created=created,
            created_url=_created_url(created),
            error=error,
        )

    def _created_url(created: CreatedKey | None) -> str | None:
        if created is None:
            return None
        chain = sorted(created.record.chains)[0] if created.record.chains else None
        chain = chain or (config.chains[0].name if config.chains else "eth")
        return f"{gateway_base(config)}/{chain}/v1/{created.key}"

    async def created_answer(
        request: Request, viewer: Viewer, created: CreatedKey, status: int
    ) -> Response:
        if not is_htmx(request):
            return await page(request, viewer, created=created, status=status)
        return render(
            request,
            "portal/_key_created.html",
            status=status,
            created=created,
            created_url=_created_url(created),
            oob=True,
            **await table(viewer),
        )

    async def owned(viewer: Viewer, key_id: str) -> KeyRecord:
        try:
            record = await keys.get(key_id)
        except KeyNotFound:
            raise PageNotFound("No such key.") from None
        if record.org_id != viewer.org_id:
            raise PageNotFound("No such key.")
        return record

    @router.get("/keys")
    async def list_keys(request: Request, viewer: Viewer = read) -> Response:
        return await page(request, viewer)

    @router.post("/keys")
    async def create_key(request: Request, viewer: Viewer = write) -> Response:
        form = await request.form()
        expiry = field(form, "expires_in")
        try:
            if expiry not in EXPIRIES:
                raise KeysError(f"expires_in: choose one of {', '.join(k for k in EXPIRIES if k)}")
            created = await keys.create(
                org=viewer.org_name or viewer.org_id,
                project=field(form, "project") or None,
                name=field(form, "name") or None,
                chains=checked(form, "chains") or None,
                origins=listed(form, "origins") or None,
                methods_allow=listed(form, "methods_allow") or None,
                methods_deny=listed(form, "methods_deny"),
                expires_in=EXPIRIES[expiry],
                actor=viewer.actor,
            )
        except KeysError as exc:
            if is_htmx(request):
                return render(request, "portal/_error.html", status=exc.status, error=exc)
            return await page(request, viewer, error=exc.message, status=exc.status)
        return await created_answer(request, viewer, created, 201)

    @router.post("/keys/{key_id}/revoke")
    async def revoke_key(request: Request, key_id: str, viewer: Viewer = write) -> Response:
        await owned(viewer, key_id)
        await keys.revoke(key_id, actor=viewer.actor)
        if is_htmx(request):
            return render(request, "portal/_keys_table.html", oob=False, **await table(viewer))
        return RedirectResponse("/portal/keys", status_code=303)

    @router.post("/keys/{key_id}/rotate")
    async def rotate_key(request: Request, key_id: str, viewer: Viewer = write) -> Response:
        await owned(viewer, key_id)
        grace = field(await request.form(), "grace") or "0"
        try:
            if grace not in GRACES:
                raise KeysError(f"grace: choose one of {', '.join(GRACES)}")
            created = await keys.rotate(key_id, grace=GRACES[grace], actor=viewer.actor)
        except KeysError as exc:
            if is_htmx(request):
                return render(request, "portal/_error.html", status=exc.status, error=exc)
            return await page(request, viewer, error=exc.message, status=exc.status)
        return await created_answer(request, viewer, created, 201)

    @router.get("/keys/{key_id}")
    async def key_detail(request: Request, key_id: str, viewer: Viewer = read) -> Response:
        record = await owned(viewer, key_id)
        usage = await _Usage.read(ctx, viewer.org_id, key_id)
        view = _view(config, record, usage, keys.now())
        by_method = usage.month.by_chain_method(key_id) if usage.month is not None else []
        return render(
            request,
            "portal/key.html",
            view=view,
            by_method=by_method,
            usage_error=usage.error,
            graces=list(GRACES),
        )

    @router.get("/projects")
    async def list_projects(request: Request, viewer: Viewer = projects_read) -> Response:
        return await projects_page(request, viewer)

    async def projects_page(
        request: Request, viewer: Viewer, error: str | None = None, status: int = 200
    ) -> Response:
        stmt = (
            select(
                projects.c.id,
                projects.c.name,
                projects.c.created_at,
                projects.c.capture_payloads,
                projects.c.capture_bytes,
            )
            .where(projects.c.org_id == viewer.org_id)
            .order_by(projects.c.name)
        )
        async with ctx.store.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        records = await keys.list(org=viewer.org_id)
        usage = await _Usage.read(ctx, viewer.org_id)
        now = keys.now()
        items = []
        for row in rows:
            mine = [r for r in records if r.project_id == row.id]
            requests = None
            if usage.month is not None:
                requests = sum(usage.month.totals(r.id).requests for r in mine)
            items.append(
                {
                    "id": row.id,
                    "name": row.name,
                    "created_at": row.created_at,
                    "active": sum(1 for r in mine if r.status_at(now) == "active"),
                    "keys": len(mine),
                    "requests": requests,
                    "capture": bool(row.capture_payloads),
                    "capture_bytes": row.capture_bytes,
                }
            )
        return render(
            request,
            "portal/projects.html",
            projects=items,
            usage_error=usage.error,
            error=error,
            status=status,
        )

    @router.post("/projects/{project_id}/capture")
    async def set_capture(
        request: Request, project_id: str, viewer: Viewer = org_write
    ) -> Response:
        """Turn payload capture of a project on or off (its params and answers in the request
        explorer, cut at the size chosen; docs/logs.md)."""
        form = await request.form()
        on = field(form, "capture_payloads") == "on"
        size = field(form, "capture_bytes") or "2048"
        try:
            if not size.isdigit():
                raise InvalidProjectSettings("capture_bytes: a number of bytes, 64 to 16384")
            await OrgBook(ctx.store).update_project(
                viewer.org_id,
                project_id,
                capture_payloads=on,
                capture_bytes=int(size),
                actor=viewer.actor,
            )
        except (UnknownProject, InvalidProjectSettings) as exc:
            return await projects_page(request, viewer, error=exc.message, status=exc.status)
        await keys.announce_project(project_id)
        return RedirectResponse("/portal/projects", status_code=303)

    @router.get("/endpoints")
    async def endpoints(request: Request, viewer: Viewer = read) -> Response:
        base = gateway_base(config)
        chains = [
            {
                "name": chain.name,
                "chain_id": chain.chain_id,
                "url": f"{base}/{chain.name}/v1/{KEY_PLACEHOLDER}",
                "snippets": snippets(f"{base}/{chain.name}/v1/{KEY_PLACEHOLDER}"),
            }
            for chain in config.chains
        ]
        return render(request, "portal/endpoints.html", chains=chains, placeholder=KEY_PLACEHOLDER)

"""The portal's usage charts: requests and compute units per day by chain and by method, the
error rate and latency p50/p95, from the usage reports; the series are in the page as JSON
(``<script type="application/json" id="usage-data">``) and drawn by Chart.js."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from hoodrun.telemetry.store import StoreError
from hoodrun.web.context import WebContext
from hoodrun.web.render import render
from hoodrun.web.session import PortalAuth, Viewer
from hoodrun.web.usage_data import chart_series

__all__ = ["RANGES", "usage_routes"]

log = logging.getLogger("hoodrun.web")

RANGES = (7, 14, 30, 90)


def usage_routes(router: APIRouter, ctx: WebContext, auth: PortalAuth) -> None:
    read = Depends(auth.require("usage:read", "see usage"))

    @router.get("/usage")
    async def usage(
        request: Request,
        viewer: Viewer = read,
        days: Annotated[int, Query()] = 7,
        key: Annotated[str | None, Query()] = None,
        chain: Annotated[str | None, Query()] = None,
    ) -> Response:
        days = days if days in RANGES else RANGES[0]
        records = await ctx.keys.list(org=viewer.org_id)
        key = key if key in {r.id for r in records} else None  # only the org's own keys
        chain = chain if chain in {c.name for c in ctx.config.chains} else None
        series: dict[str, Any] | None = None
        error = None
        reports = ctx.reports()
        if reports is None:
            error = "Usage is not available: the analytics store is not open."
        else:
            try:
                series = await chart_series(
                    reports, org_id=viewer.org_id, days=days, key_id=key, chain=chain
                )
            except (StoreError, ValueError) as exc:
                log.warning("portal usage charts failed: %s", exc)
                error = "Usage is not available right now; try again shortly."
        return render(
            request,
            "portal/usage.html",
            series=series,
            usage_error=error,
            days=days,
            ranges=RANGES,
            key=key,
            chain=chain,
            keys=records,
            chains=[c.name for c in ctx.config.chains],
        )

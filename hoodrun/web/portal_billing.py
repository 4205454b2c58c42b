"""The portal's billing: the plan and a change of it with a proration preview, the credit
balance, the invoices with their documents, and each invoice's usage line by line.

An invoice's page shows its lines, the usage its snapshot billed per chain and method, and what
the usage reports count for the same period now, so a customer can check one against the other:
the usage lines' quantities add up to the usage billed; usage counted after the period closed is
billed on the next invoice (``late_usage``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import RowMapping, select
from starlette.concurrency import run_in_threadpool

from hoodrun.billing.invoices import Invoice, InvoiceBook, InvoiceNotFound
from hoodrun.metering.entitlements import month_bounds
from hoodrun.metering.money import MoneyError
from hoodrun.metering.store import ContractError
from hoodrun.store.tables import closing_snapshots
from hoodrun.telemetry.store import StoreError
from hoodrun.web.context import WebContext
from hoodrun.web.forms import field
from hoodrun.web.plans import PlanPreview, change_plan, current_plan, preview
from hoodrun.web.render import render
from hoodrun.web.session import BadRequest, PageNotFound, PortalAuth, Unavailable, Viewer, is_htmx
from hoodrun.web.usage_data import NOTIFICATION, MonthUsage, is_billable, span_usage

__all__ = ["billing_routes"]

log = logging.getLogger("hoodrun.web")

NOTICES = {"plan_changed": "Your plan is changed. Your keys use it from their next request."}


def billing_routes(router: APIRouter, ctx: WebContext, auth: PortalAuth) -> None:
    config, keys = ctx.config, ctx.keys
    read = Depends(auth.require("billing:read", "see billing and invoices"))
    write = Depends(auth.require("billing:write", "change the plan"))

    def invoices() -> InvoiceBook:
        if ctx.invoices is None:
            raise Unavailable("Invoices are not available on this deployment.")
        return ctx.invoices

    async def credits(org_id: str) -> dict[str, Any]:
        if ctx.credits is None:
            return {"balances": [], "grants": []}
        grants = await ctx.credits.grants(org_id)
        currencies = sorted({g.amount.currency for g in grants})
        balances = [await ctx.credits.balance(org_id, code) for code in currencies]
        return {"balances": balances, "grants": grants}

    async def billing_page(
        request: Request,
        viewer: Viewer,
        *,
        plan_preview: PlanPreview | None = None,
        notice: str | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> Response:
        now = keys.now()
        current = await current_plan(config, keys, ctx.contracts, viewer.org_id, now)
        listed = await invoices().list(org_id=viewer.org_id) if ctx.invoices is not None else []
        return render(
            request,
            "portal/billing.html",
            status=status,
            current=current,
            plans=[p for p in config.plans if p.name != current.name],
            can_change=ctx.contracts is not None and viewer.can("billing:write"),
            invoices=listed,
            preview=plan_preview,
            notice=notice,
            error=error,
            **await credits(viewer.org_id),
        )

    async def month_usage(org_id: str) -> MonthUsage:
        reports = ctx.reports()
        if reports is None:
            raise Unavailable("The preview needs the usage reports, which are not open.")
        try:
            return await MonthUsage.read(reports, org_id, month_bounds(reports.now())[0])
        except (StoreError, ValueError) as exc:
            log.warning("portal plan preview failed: %s", exc)
            raise Unavailable("The usage reports failed; try again shortly.") from None

    def target_plan(name: str) -> Any:
        plan = config.plan(name)
        if plan is None:
            raise BadRequest(f"No plan {name!r}: choose one of the list.")
        return plan

    @router.get("/billing")
    async def billing(request: Request, viewer: Viewer = read) -> Response:
        notice = NOTICES.get(request.query_params.get("notice", ""))
        return await billing_page(request, viewer, notice=notice)

    @router.post("/billing/preview")
    async def plan_preview(request: Request, viewer: Viewer = write) -> Response:
        plan = target_plan(field(await request.form(), "plan"))
        now = keys.now()
        current = await current_plan(config, keys, ctx.contracts, viewer.org_id, now)
        if plan.name == current.name:
            raise BadRequest(f"You are on {plan.name} already.")
        found = preview(config, current, plan, await month_usage(viewer.org_id), now)
        if is_htmx(request):
            return render(request, "portal/_plan_preview.html", preview=found)
        return await billing_page(request, viewer, plan_preview=found)

    @router.post("/billing/plan")
    async def plan_change(request: Request, viewer: Viewer = write) -> Response:
        if ctx.contracts is None:
            raise Unavailable("Plan changes are not available on this deployment.")
        plan = target_plan(field(await request.form(), "plan"))
        try:
            await change_plan(
                keys, ctx.contracts, viewer.org_id, plan.name, now=keys.now(), actor=viewer.actor
            )
        except (ContractError, MoneyError) as exc:
            return await billing_page(request, viewer, error=str(exc), status=409)
        return RedirectResponse("/portal/billing?notice=plan_changed", status_code=303)

    async def owned(viewer: Viewer, invoice_id: str) -> Invoice:
        try:
            invoice = await invoices().get(invoice_id)
        except InvoiceNotFound:
            raise PageNotFound("No such invoice.") from None
        if invoice.org_id != viewer.org_id:
            raise PageNotFound("No such invoice.")
        return invoice

    @router.get("/invoices/{invoice_id}")
    async def invoice_page(request: Request, invoice_id: str, viewer: Viewer = read) -> Response:
        invoice = await owned(viewer, invoice_id)
        usage = await _invoice_usage(ctx, invoice)
        return render(request, "portal/invoice.html", invoice=invoice, usage=usage)

    async def document_parts(invoice: Invoice) -> dict[str, Any]:
        book = invoices()
        return {
            "issuer": book.config.billing.issuer,
            "account": await book.account(invoice.org_id),
            "org_name": await book.org_name(invoice.org_id),
        }

    @router.get("/invoices/{invoice_id}/document.html")
    async def invoice_html(request: Request, invoice_id: str, viewer: Viewer = read) -> Response:
        from hoodrun.billing.documents import render_html

        invoice = await owned(viewer, invoice_id)
        page = render_html(invoice, **await document_parts(invoice))
        # The document is a page of its own: no script, no framing, not cached.
        headers = {
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "img-src data:; frame-ancestors 'none'",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/invoices/{invoice_id}/document.pdf")
    async def invoice_pdf(request: Request, invoice_id: str, viewer: Viewer = read) -> Response:
        from hoodrun.billing.documents import render_pdf

        invoice = await owned(viewer, invoice_id)
        parts = await document_parts(invoice)
        pdf = await run_in_threadpool(lambda: render_pdf(invoice, **parts))  # CPU: off the loop
        return Response(
            pdf,
            media_type="application/pdf",
            headers={
                "Content-Disposition": f'attachment; filename="{invoice.number}.pdf"',
                "Cache-Control": "no-store",
            },
        )


async def _invoice_usage(ctx: WebContext, invoice: Invoice) -> dict[str, Any]:
    """The usage behind an invoice: its snapshot's rows per chain and method, the sum of its
    usage lines, and what the usage reports count for the period now."""
    if invoice.snapshot_id is None:
        return {"rows": [], "meter": None, "billed": None, "lines": None, "error": None}
    stmt = select(closing_snapshots).where(closing_snapshots.c.id == invoice.snapshot_id)
    async with ctx.store.connect() as conn:
        snapshot = (await conn.execute(stmt)).mappings().first()
    if snapshot is None:
        return {"rows": [], "meter": None, "billed": None, "lines": None, "error": None}
    plan = ctx.config.plan(snapshot["plan"])
    meter = plan.price.meter if plan is not None and plan.price is not None else "requests"
    billed: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for item in snapshot["usage"]:
        if item.get("contract") is None:
            continue  # outside any contract: not billed
        into = billed[str(item["chain"]), str(item["method"])]
        into[0] += int(item["requests"])
        into[1] += int(item["compute_units"])
    late = [dict(item) for item in snapshot["late_usage"]]
    counted, error = await _recount(ctx, invoice.org_id, snapshot)
    if counted is not None:
        for key, (requests, units) in counted.items():
            into = billed[key]
            into[2] += requests
            into[3] += units
    rows = [
        {
            "chain": chain,
            "method": method,
            "requests": values[0],
            "compute_units": values[1],
            "counted_requests": values[2] if counted is not None else None,
            "counted_units": values[3] if counted is not None else None,
            "matches": counted is not None and values[:2] == values[2:],
        }
        for (chain, method), values in sorted(billed.items())
    ]
    index = 0 if meter == "requests" else 1
    billed_total = sum(values[index] for values in billed.values()) + sum(
        int(item["requests" if meter == "requests" else "compute_units"]) for item in late
    )
    lines = sum(
        (line.quantity for line in invoice.lines if line.kind in ("included", "usage")),
        Decimal(0),
    )
    return {
        "rows": rows,
        "late": late,
        "meter": meter,
        "billed": billed_total,
        "lines": lines,
        "requests": sum(values[0] for values in billed.values()),
        "compute_units": sum(values[1] for values in billed.values()),
        "error": error,
        "period_start": snapshot["period_start"],
        "period_end": snapshot["period_end"],
    }


async def _recount(
    ctx: WebContext, org_id: str, snapshot: RowMapping
) -> tuple[dict[tuple[str, str], tuple[int, int]] | None, str | None]:
    """Billable requests and compute units per (chain, method) in the snapshot's period, as
    the usage reports count them now."""
    reports = ctx.reports()
    if reports is None:
        return None, "The usage reports are not open: the usage cannot be recounted now."
    start: datetime = snapshot["period_start"]
    end: datetime = min(snapshot["period_end"], reports.now())
    try:
        rows = await span_usage(
            reports, start=start, end=end, by=("chain", "method", "outcome"), org=org_id
        )
    except (StoreError, ValueError) as exc:
        log.warning("portal invoice recount failed: %s", exc)
        return None, "The usage reports failed: the usage cannot be recounted now."
    counted: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if not is_billable(row):
            continue
        into = counted[str(row["chain"]), str(row["method"])]
        if row["method"] != NOTIFICATION:
            into[0] += int(row["requests"])
        into[1] += int(row["compute_units"])
    return {key: (v[0], v[1]) for key, v in counted.items()}, None

"""Billing in the admin API, behind the admin token: invoices (``/admin/v1/invoices``: list them,
read one, download its document as HTML or PDF, refund a paid one) and period closes
(``POST /admin/v1/billing/close``: a ``period-close`` job for the worker). Refunds and closes are
jobs: the answer is 202 with the job, which the worker runs (``hoodrun jobs show ID``).

Stripe's webhook (``POST /billing/v1/stripe/webhook``) is outside the admin token: Stripe signs
it (``Stripe-Signature``, checked with ``billing.stripe.webhook_secret``); a bad signature is 400.
An invoice event moves the invoice it names (paid, void, uncollectible) and records Stripe's total.

Amounts are JSON strings with their currency (``{"amount": "12.34", "currency": "USD"}``), never
numbers, so no client reads them through a float. Errors follow the admin API: 401 no or wrong
token, 404 no such invoice, 422 a malformed query; 400 a refund that does not fit the invoice
(``refund_refused``), a period that is not a month (``invalid_period``) or has not ended
(``period_not_ended``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from hoodrun.api.app import ApiError
from hoodrun.api.models import ErrorOut
from hoodrun.api.rbac import Auth, actor, org_in_query
from hoodrun.billing.close import InvalidPeriod, PeriodNotEnded, closable
from hoodrun.billing.documents import render_html, render_pdf
from hoodrun.billing.invoices import (
    AdjustmentRefused,
    Invoice,
    InvoiceBook,
    InvoiceLine,
    InvoiceNotFound,
)
from hoodrun.billing.providers import ProviderRejected
from hoodrun.billing.service import follow_remote
from hoodrun.jobs import Job, JobQueue
from hoodrun.metering.money import Money, MoneyError
from hoodrun.store import new_id

__all__ = ["billing_router", "stripe_webhook_router"]

InvoiceId = Annotated[str, Path(description="The invoice id (inv_...).")]
Status = Literal["draft", "pending", "open", "paid", "void", "uncollectible"]


class MoneyOut(BaseModel):
    amount: str
    currency: str

    @classmethod
    def of(cls, money: Money) -> MoneyOut:
        return cls(amount=str(money.amount), currency=money.currency)


class LineOut(BaseModel):
    kind: str
    description: str
    quantity: str
    per: str
    unit_price: MoneyOut
    amount: MoneyOut
    tax_rate: str


class ConversionOut(BaseModel):
    original: MoneyOut
    rate: str
    source: str | None
    day: date | None


class InvoiceSummaryOut(BaseModel):
    id: str
    number: str
    org_id: str
    period: str
    status: str
    total: MoneyOut
    issue_date: date
    due_date: date
    provider: str


class InvoiceOut(InvoiceSummaryOut):
    snapshot_id: str | None
    currency: str
    lines: list[LineOut]
    subtotal: MoneyOut
    tax: MoneyOut
    credits: MoneyOut
    reverse_charge: bool
    conversion: ConversionOut | None
    provider_id: str | None
    provider_status: str | None
    provider_total: MoneyOut | None
    provider_document: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    paid_at: datetime | None


class InvoicesOut(BaseModel):
    invoices: list[InvoiceSummaryOut]


class JobOut(BaseModel):
    id: str
    kind: str
    status: str
    payload: dict[str, Any]

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(id=job.id, kind=job.kind, status=job.status, payload=dict(job.payload))


class CloseIn(BaseModel):
    period: str


class RefundIn(BaseModel):
    amount: str
    reason: str


def billing_router(invoices: InvoiceBook, auth: Auth, queue: JobQueue | None = None) -> APIRouter:
    """The invoice routes, behind ``billing:read`` / ``billing:write`` (an org's for its own).
    ``queue`` adds the routes that start jobs (closes, refunds)."""
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 422, 503)
    }
    # The documents' routes answer HTML or PDF, and their errors JSON like every other's.
    ref = {"schema": {"$ref": "#/components/schemas/ErrorOut"}}
    _json_errors: dict[int | str, dict[str, Any]] = {
        code: {"description": "An error", "content": {"application/json": ref}}
        for code in (401, 403, 404)
    }
    router = APIRouter(
        prefix="/admin/v1/invoices",
        tags=["billing"],
        dependencies=[auth.authenticated()],
        responses=errors,
    )

    async def found(invoice_id: str) -> Invoice:
        try:
            return await invoices.get(invoice_id)
        except InvoiceNotFound:
            raise ApiError(404, "invoice_not_found", f"no invoice {invoice_id!r}") from None

    async def invoice_org(request: Request) -> str | None:
        return (await found(request.path_params["invoice_id"])).org_id

    async def document_parts(invoice: Invoice) -> dict[str, Any]:
        return {
            "issuer": invoices.config.billing.issuer,
            "account": await invoices.account(invoice.org_id),
            "org_name": await invoices.org_name(invoice.org_id),
        }

    @router.get("", dependencies=[auth.require("billing:read", org_in_query())])
    async def list_invoices(
        org: Annotated[str | None, Query(description="Only this org's (org_...).")] = None,
        status: Annotated[Status | None, Query(description="Only invoices in this state.")] = None,
        period: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> InvoicesOut:
        """Invoices, the newest first."""
        listed = await invoices.list(org_id=org, status=status, period=period, limit=limit)
        return InvoicesOut(invoices=[_summary(invoice) for invoice in listed])

    reads = [auth.require("billing:read", invoice_org)]

    @router.get("/{invoice_id}", dependencies=reads)
    async def get_invoice(invoice_id: InvoiceId) -> InvoiceOut:
        """One invoice with its lines."""
        return _detail(await found(invoice_id))

    @router.get(
        "/{invoice_id}/document.html",
        response_class=HTMLResponse,
        dependencies=reads,
        responses=_json_errors,
    )
    async def invoice_html(invoice_id: InvoiceId) -> HTMLResponse:
        """The invoice document as an HTML page."""
        invoice = await found(invoice_id)
        page = render_html(invoice, **await document_parts(invoice))
        return HTMLResponse(page)

    @router.get(
        "/{invoice_id}/document.pdf",
        response_class=Response,
        dependencies=reads,
        responses={200: {"content": {"application/pdf": {}}}, **_json_errors},
    )
    async def invoice_pdf(invoice_id: InvoiceId) -> Response:
        """The invoice document as a PDF, to download."""
        invoice = await found(invoice_id)
        parts = await document_parts(invoice)
        # Laying out a PDF takes some CPU: off the event loop.
        pdf = await run_in_threadpool(lambda: render_pdf(invoice, **parts))
        disposition = f'attachment; filename="{invoice.number}.pdf"'
        return Response(
            pdf, media_type="application/pdf", headers={"Content-Disposition": disposition}
        )

    if queue is None:
        return router

    @router.post(
        "/{invoice_id}/refunds",
        status_code=202,
        # Money back is an operator's decision, not the customer's.
        dependencies=[auth.require("billing:write")],
    )
    async def refund(invoice_id: InvoiceId, body: RefundIn) -> JobOut:
        """Refund part or all of a paid invoice: recorded now, paid back by a job."""
        invoice = await found(invoice_id)
        try:
            amount = Money.of(body.amount, invoice.currency)
            recorded = await invoices.add_refund(invoice.id, amount, body.reason, actor=actor())
        except (AdjustmentRefused, MoneyError, ArithmeticError, ValueError) as exc:
            raise ApiError(400, "refund_refused", str(exc)) from None
        job = await queue.enqueue(
            "refund-process",
            {"refund_id": recorded.id},
            idempotency_key=f"refund-process:{recorded.id}",
            actor=actor(),
        )
        return JobOut.of(job)

    closes = APIRouter(
        prefix="/admin/v1/billing",
        tags=["billing"],
        dependencies=[auth.authenticated()],
        responses=errors,
    )

    @closes.post("/close", status_code=202, dependencies=[auth.require("billing:write")])
    async def close(body: CloseIn) -> JobOut:
        """Close a month (``YYYY-MM``) that has ended: a period-close job (once per period),
        which makes the snapshots and then the invoices."""
        try:
            closable(body.period, datetime.now(UTC))
        except InvalidPeriod as exc:
            raise ApiError(400, "invalid_period", str(exc)) from None
        except PeriodNotEnded as exc:
            # Refused here, not by the job: the worker's close would refuse it until the job
            # died, and that dead job would hold the period's key past the month's end.
            raise ApiError(400, "period_not_ended", str(exc)) from None
        job = await queue.enqueue(
            "period-close",
            {"period": body.period},
            idempotency_key=f"period-close:{body.period}",
            actor=actor(),
        )
        if job.status in ("done", "dead", "cancelled"):
            # Closed before: closing again closes the orgs that have no snapshot yet (a contract
            # added since), as a job of its own.
            job = await queue.enqueue(
                "period-close",
                {"period": body.period},
                idempotency_key=f"period-close:{body.period}:{new_id('again')}",
                actor=actor(),
            )
        return JobOut.of(job)

    outer = APIRouter()
    outer.include_router(router)
    outer.include_router(closes)
    return outer


def stripe_webhook_router(invoices: InvoiceBook, secret: str) -> APIRouter:
    """``POST /billing/v1/stripe/webhook``: Stripe's invoice events (see the module)."""
    from hoodrun.billing.providers.stripe import parse_webhook

    router = APIRouter(tags=["billing"])

    @router.post("/billing/v1/stripe/webhook")
    async def stripe_webhook(request: Request) -> JSONResponse:
        payload = await request.body()
        try:
            event = parse_webhook(payload, request.headers.get("stripe-signature", ""), secret)
        except ProviderRejected as exc:
            raise ApiError(400, "invalid_signature", str(exc)) from None
        if event is None or event.number is None:
            return JSONResponse({"received": True, "applied": False})
        try:
            invoice = await invoices.by_number(event.number)
        except InvoiceNotFound:
            return JSONResponse({"received": True, "applied": False})
        if invoice.provider_id != event.invoice.provider_id:
            return JSONResponse({"received": True, "applied": False})
        after = await follow_remote(invoices, invoice, event.invoice.status, event.invoice.total)
        return JSONResponse({"received": True, "applied": True, "status": after.status})

    return router


def _summary(invoice: Invoice) -> InvoiceSummaryOut:
    return InvoiceSummaryOut(
        id=invoice.id,
        number=invoice.number,
        org_id=invoice.org_id,
        period=invoice.period,
        status=invoice.status,
        total=MoneyOut.of(invoice.total),
        issue_date=invoice.issue_date,
        due_date=invoice.due_date,
        provider=invoice.provider,
    )


def _detail(invoice: Invoice) -> InvoiceOut:
    conversion = None
    if invoice.original_total is not None and invoice.fx_rate is not None:
        conversion = ConversionOut(
            original=MoneyOut.of(invoice.original_total),
            rate=str(invoice.fx_rate),
            source=invoice.fx_source,
            day=invoice.fx_date,
        )
    return InvoiceOut(
        **_summary(invoice).model_dump(exclude={"total"}),
        total=MoneyOut.of(invoice.total),
        snapshot_id=invoice.snapshot_id,
        currency=invoice.currency,
        lines=[_line(line) for line in invoice.lines],
        subtotal=MoneyOut.of(invoice.subtotal),
        tax=MoneyOut.of(invoice.tax),
        credits=MoneyOut.of(invoice.credits),
        reverse_charge=invoice.reverse_charge,
        conversion=conversion,
        provider_id=invoice.provider_id,
        provider_status=invoice.provider_status,
        provider_total=(
            None if invoice.provider_total is None else MoneyOut.of(invoice.provider_total)
        ),
        provider_document=invoice.provider_document,
        last_error=invoice.last_error,
        created_at=invoice.created_at,
        updated_at=invoice.updated_at,
        sent_at=invoice.sent_at,
        paid_at=invoice.paid_at,
    )


def _line(line: InvoiceLine) -> LineOut:
    return LineOut(
        kind=line.kind,
        description=line.description,
        quantity=str(line.quantity),
        per=str(line.per),
        unit_price=MoneyOut.of(line.unit_price),
        amount=MoneyOut.of(line.amount),
        tax_rate=str(line.tax_rate),
    )

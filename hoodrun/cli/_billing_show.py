"""How ``hoodrun billing`` shows invoices: the list's table, one invoice in full, and both as JSON.

The JSON has the admin API's shape (``/admin/v1/invoices``): amounts are strings with their
currency (``{"amount": "12.34", "currency": "USD"}``), never numbers, and times ISO 8601 UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table

from hoodrun.billing.documents import format_money
from hoodrun.billing.invoices import BillingAccount, CreditNote, Invoice, InvoiceLine, Refund
from hoodrun.metering.money import Money

__all__ = [
    "ACCOUNT_FIELDS",
    "account_json",
    "account_table",
    "invoice_json",
    "invoice_view",
    "invoices_table",
    "summary_json",
]

# A billing account's text fields and their column lengths.
ACCOUNT_FIELDS = {
    "legal_name": 256,
    "email": 256,
    "address": 512,
    "city": 64,
    "district": 64,
    "tax_office": 64,
}
_ACCOUNT_COLUMNS = ("org_id", *ACCOUNT_FIELDS, "stripe_customer_id", "parasut_contact_id")


def _money(money: Money | None) -> dict[str, str] | None:
    return None if money is None else {"amount": str(money.amount), "currency": money.currency}


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def summary_json(invoice: Invoice) -> dict[str, Any]:
    """An invoice as the list shows it."""
    return {
        "id": invoice.id,
        "number": invoice.number,
        "org_id": invoice.org_id,
        "period": invoice.period,
        "status": invoice.status,
        "total": _money(invoice.total),
        "issue_date": _day(invoice.issue_date),
        "due_date": _day(invoice.due_date),
        "provider": invoice.provider,
        "provider_id": invoice.provider_id,
    }


def invoice_json(
    invoice: Invoice, refunds: Sequence[Refund], notes: Sequence[CreditNote]
) -> dict[str, Any]:
    """One invoice in full: its lines, totals, conversion, provider fields and adjustments."""
    conversion = None
    if invoice.original_total is not None and invoice.fx_rate is not None:
        conversion = {
            "original": _money(invoice.original_total),
            "rate": str(invoice.fx_rate),
            "source": invoice.fx_source,
            "day": _day(invoice.fx_date),
        }
    return {
        **summary_json(invoice),
        "snapshot_id": invoice.snapshot_id,
        "currency": invoice.currency,
        "lines": [_line_json(line) for line in invoice.lines],
        "subtotal": _money(invoice.subtotal),
        "tax": _money(invoice.tax),
        "credits": _money(invoice.credits),
        "reverse_charge": invoice.reverse_charge,
        "conversion": conversion,
        "provider_status": invoice.provider_status,
        "provider_total": _money(invoice.provider_total),
        "provider_document": invoice.provider_document,
        "last_error": invoice.last_error,
        "created_at": _time(invoice.created_at),
        "updated_at": _time(invoice.updated_at),
        "sent_at": _time(invoice.sent_at),
        "paid_at": _time(invoice.paid_at),
        "refunds": [
            {
                "id": item.id,
                "amount": _money(item.amount),
                "reason": item.reason,
                "status": item.status,
                "provider_id": item.provider_id,
                "created_at": _time(item.created_at),
                "done_at": _time(item.done_at),
            }
            for item in refunds
        ],
        "credit_notes": [
            {
                "id": item.id,
                "amount": _money(item.amount),
                "reason": item.reason,
                "status": item.status,
                "provider_id": item.provider_id,
                "created_at": _time(item.created_at),
                "issued_at": _time(item.issued_at),
            }
            for item in notes
        ],
    }


def _line_json(line: InvoiceLine) -> dict[str, Any]:
    return {
        "kind": line.kind,
        "description": line.description,
        "quantity": str(line.quantity),
        "per": str(line.per),
        "unit_price": _money(line.unit_price),
        "amount": _money(line.amount),
        "tax_rate": str(line.tax_rate),
    }


# --- text ----------------------------------------------------------------------------------------


def _table(**options: Any) -> Table:
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, **options)


def invoices_table(found: Sequence[Invoice]) -> Table:
    """The list: number, org, period, status, total, provider and the provider's id."""
    table = _table()
    for header in ("number", "org", "period", "status"):
        table.add_column(header, no_wrap=True)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("provider", no_wrap=True)
    table.add_column("provider id")
    for invoice in found:
        table.add_row(
            escape(invoice.number),
            escape(invoice.org_id),
            invoice.period,
            invoice.status,
            format_money(invoice.total),
            invoice.provider,
            escape(invoice.provider_id or "-"),
        )
    return table


def invoice_view(
    invoice: Invoice, refunds: Sequence[Refund], notes: Sequence[CreditNote]
) -> RenderableType:
    """One invoice: its fields, lines, totals, conversion, provider fields and adjustments."""
    fields = _table(show_header=False, title=f"{escape(invoice.number)} ({invoice.status})")
    fields.add_column("", style="dim")
    fields.add_column("")
    rows: list[tuple[str, str | None]] = [
        ("id", invoice.id),
        ("org", invoice.org_id),
        ("period", invoice.period),
        ("snapshot", invoice.snapshot_id),
        ("issued / due", f"{invoice.issue_date} / {invoice.due_date}"),
        ("sent at", _short(invoice.sent_at)),
        ("paid at", _short(invoice.paid_at)),
        ("provider", invoice.provider),
        ("provider id", invoice.provider_id),
        ("provider status", invoice.provider_status),
        ("provider total", _text(invoice.provider_total)),
        ("provider document", invoice.provider_document),
        ("last error", invoice.last_error),
    ]
    for label, value in rows:
        if value:
            fields.add_row(label, escape(value))

    lines = _table(title="lines")
    for header in ("kind", "description"):
        lines.add_column(header)
    for header in ("quantity", "unit price", "tax", "amount"):
        lines.add_column(header, justify="right", no_wrap=True)
    for line in invoice.lines:
        unit = format_money(line.unit_price)
        if line.per != 1:
            unit = f"{unit} / {line.per:,}"
        # A tax line's rate is its quantity: no rate column of its own.
        taxed = line.tax_rate and line.kind != "tax"
        tax = f"{(line.tax_rate * 100).normalize():f}%" if taxed else "-"
        lines.add_row(
            line.kind,
            escape(line.description),
            f"{line.quantity.normalize():f}",
            unit,
            tax,
            format_money(line.signed),
        )

    totals = _table(show_header=False)
    totals.add_column("", style="dim")
    totals.add_column("", justify="right")
    totals.add_row("subtotal", format_money(invoice.subtotal))
    totals.add_row("tax", format_money(invoice.tax))
    totals.add_row("credits", format_money(-invoice.credits))
    totals.add_row("[bold]total[/bold]", f"[bold]{format_money(invoice.total)}[/bold]")
    if invoice.reverse_charge:
        totals.add_row("reverse charge", "yes")
    if invoice.original_total is not None and invoice.fx_rate is not None:
        original = invoice.original_total
        totals.add_row(
            "converted from",
            f"{format_money(original)} at 1 {original.currency} = {invoice.fx_rate} "
            f"{invoice.currency} ({escape(invoice.fx_source or '?')}, {invoice.fx_date})",
        )
    parts: list[RenderableType] = [fields, "", lines, "", totals]
    if refunds or notes:
        adjustments = _table(title="refunds and credit notes")
        for header in ("id", "kind", "amount", "status", "reason", "provider id", "created"):
            adjustments.add_column(header, justify="right" if header == "amount" else "left")
        items: list[Refund | CreditNote] = [*refunds, *notes]
        for item in items:
            adjustments.add_row(
                item.id,
                "refund" if isinstance(item, Refund) else "credit note",
                format_money(item.amount),
                item.status,
                escape(item.reason),
                escape(item.provider_id or "-"),
                _short(item.created_at),
            )
        parts += ["", adjustments]
    return Group(*parts)


def _short(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _text(money: Money | None) -> str:
    return "" if money is None else format_money(money)


# --- billing accounts ----------------------------------------------------------------------------


def account_json(account: BillingAccount) -> dict[str, Any]:
    """A billing account: what the org's invoices are addressed to, and its provider ids."""
    return {column: getattr(account, column) for column in _ACCOUNT_COLUMNS}


def account_table(account: BillingAccount) -> Table:
    table = _table(show_header=False)
    table.add_column("", style="dim")
    table.add_column("")
    for column in _ACCOUNT_COLUMNS:
        table.add_row(column.replace("_", " "), escape(getattr(account, column) or "-"))
    return table

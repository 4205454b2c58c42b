"""What a provider is sent of an invoice: the ``InvoiceBook``'s ``draft`` (``InvoiceDrafts``,
mixed into the book), its lines without tax lines and HoodRun's totals."""

from __future__ import annotations

from decimal import localcontext

from hoodrun.billing.invoices._values import Invoice, InvoiceLine
from hoodrun.billing.providers import InvoiceDraft, InvoiceLineDraft
from hoodrun.config import Config


class InvoiceDrafts:
    """The ``InvoiceBook``'s provider view. A mixin: the book supplies its config (the issuer's
    name is in each draft's description)."""

    config: Config

    def draft(self, invoice: Invoice, *, tax_name: str, reverse_charge: bool) -> InvoiceDraft:
        """What a provider is sent: the lines without tax lines (each with its tax rate; the
        deductions negative; a credit line that paid nothing left out) and HoodRun's totals."""
        lines = tuple(
            _draft_line(line)
            for line in invoice.lines
            if line.kind != "tax" and not (line.kind == "credit" and line.amount.is_zero())
        )
        metadata = {
            "invoice_id": invoice.id,
            "number": invoice.number,
            "org_id": invoice.org_id,
            "period": invoice.period,
        }
        if invoice.snapshot_id is not None:
            metadata["snapshot_id"] = invoice.snapshot_id
        if invoice.original_total is not None:
            metadata |= {
                "original_currency": invoice.original_total.currency,
                "original_total": str(invoice.original_total.amount),
                "fx_rate": str(invoice.fx_rate),
                "fx_source": str(invoice.fx_source),
                "fx_date": str(invoice.fx_date),
            }
        return InvoiceDraft(
            invoice_id=invoice.id,
            number=invoice.number,
            currency=invoice.currency,
            issue_date=invoice.issue_date,
            due_date=invoice.due_date,
            period=invoice.period,
            description=f"{self.config.billing.issuer.name}: {invoice.period}",
            lines=lines,
            subtotal=invoice.subtotal.amount,
            tax=invoice.tax.amount,
            credits=invoice.credits.amount,
            total=invoice.total.amount,
            tax_name=tax_name,
            reverse_charge=reverse_charge,
            exchange_rate=invoice.fx_rate,
            metadata=metadata,
        )


def _draft_line(line: InvoiceLine) -> InvoiceLineDraft:
    sign = -1 if line.deduction else 1
    with localcontext() as ctx:
        ctx.prec = 28  # a unit price per single unit: enough digits, never a runaway fraction
        unit = (line.unit_price.amount / line.per).normalize() * sign
    return InvoiceLineDraft(
        description=line.description,
        quantity=line.quantity,
        unit_price=unit,
        amount=line.signed.amount,
        tax_rate=line.tax_rate,
        kind=line.kind,
    )

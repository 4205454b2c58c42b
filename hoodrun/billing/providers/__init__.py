"""What the invoice flow asks of a billing provider (Stripe, Paraşüt), and the errors that steer it.

A provider turns HoodRun's invoice (already rated, taxed, converted and numbered) into the
provider's own, exactly once: ``send_invoice`` first looks for an invoice it already made for
``draft.number`` (a worker killed between the provider's answer and HoodRun's commit retries the
job) and returns that one instead of making a second. Amounts go over the wire as the provider
wants them (Stripe: integer minor units; Paraşüt: decimal TL) and come back as ``Decimal``.

Errors: ``ProviderUnavailable`` (network, timeout, 5xx, 429: the invoice stays ``pending`` and the
job is retried with backoff); ``ProviderRejected`` (the provider refused the content: retrying
will not help; the message says what to fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal, Protocol

__all__ = [
    "BillingProvider",
    "CustomerInfo",
    "InvoiceDraft",
    "InvoiceLineDraft",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RemoteInvoice",
]

RemoteStatus = Literal["draft", "open", "paid", "void", "uncollectible"]


class ProviderError(Exception):
    """The provider did not do what was asked."""


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or answered 5xx/429: try again later."""


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx): retrying the same request will not help."""


@dataclass(frozen=True, slots=True)
class CustomerInfo:
    """Who is invoiced: the org, its contract's country and tax id, its billing account."""

    org_id: str
    name: str
    email: str = ""
    country: str | None = None
    tax_id: str | None = None
    business: bool = False
    address: str = ""
    city: str = ""
    district: str = ""
    tax_office: str = ""


@dataclass(frozen=True, slots=True)
class InvoiceLineDraft:
    """One line as the provider should show it. ``amount`` is signed (credits and discounts are
    negative) and already rounded to the currency's minor unit; ``tax_rate`` is the fraction
    (0.20) that applies to the line, 0 for none."""

    description: str
    quantity: Decimal
    unit_price: Decimal
    amount: Decimal
    tax_rate: Decimal = Decimal(0)
    kind: str = "usage"


@dataclass(frozen=True, slots=True)
class InvoiceDraft:
    """An invoice ready to send: lines without tax lines (the provider adds tax by ``tax_rate``),
    and the totals HoodRun computed, which the provider's must match."""

    invoice_id: str
    number: str
    currency: str
    issue_date: date
    due_date: date
    period: str
    description: str
    lines: tuple[InvoiceLineDraft, ...]
    subtotal: Decimal
    tax: Decimal
    credits: Decimal
    total: Decimal
    tax_name: str = "VAT"
    reverse_charge: bool = False
    exchange_rate: Decimal | None = None
    """TL per unit of the original currency, when the invoice was converted (Paraşüt)."""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteInvoice:
    """The provider's view of an invoice."""

    provider_id: str
    status: RemoteStatus
    currency: str
    total: Decimal
    """What the provider says is due, in ``currency``: compared with HoodRun's by reconciliation."""
    amount_paid: Decimal = Decimal(0)
    document_id: str | None = None
    """Paraşüt's e-Fatura / e-Arşiv id; Stripe's hosted invoice URL is not kept."""


class BillingProvider(Protocol):
    """A provider of invoices and payments. Every method is safe to call again after a crash."""

    name: str

    async def ensure_customer(self, customer: CustomerInfo, existing_id: str | None) -> str:
        """The provider's id of the customer: ``existing_id`` if still valid, else a new one."""
        ...

    async def send_invoice(self, customer_id: str, draft: InvoiceDraft) -> RemoteInvoice:
        """Create, fill and finalize (issue) the invoice, exactly once per ``draft.number``."""
        ...

    async def fetch_invoice(self, provider_id: str) -> RemoteInvoice:
        """The invoice's current status and totals at the provider."""
        ...

    async def collect_payment(self, provider_id: str) -> RemoteInvoice:
        """Charge the customer's payment method now (Stripe's pay) or read what was paid."""
        ...

    async def credit_note(self, provider_id: str, amount: Decimal, reason: str, *, key: str) -> str:
        """A credit note of ``amount`` against the invoice; its id. ``key`` is idempotent."""
        ...

    async def refund(self, provider_id: str, amount: Decimal, reason: str, *, key: str) -> str:
        """Pay back ``amount`` of a paid invoice; the refund's id. ``key`` is idempotent."""
        ...

    async def void_invoice(self, provider_id: str) -> RemoteInvoice:
        """Void an open invoice."""
        ...

    async def aclose(self) -> None: ...

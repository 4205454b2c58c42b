"""Stripe, through its official SDK, for customers outside Turkey.

Every call is the SDK's ``*_async`` variant over its httpx client, so the billing worker's event
loop is never blocked; ``aclose`` (or leaving ``async with``) closes that client.

How an invoice goes over (``send_invoice``)
    A one-off invoice (``pending_invoice_items_behavior=exclude``, ``auto_advance=false``: Stripe
    neither pulls stray pending items in nor finalizes, emails or charges on its own), numbered
    with HoodRun's number and tagged ``metadata.hoodrun_number``; one invoice item per line, in
    integer minor units and signed; then finalize. Stripe is given amounts, never quantities and
    unit prices or tax rates, because then Stripe would round each line and the tax itself, and
    its half-up rounding can differ by a cent from HoodRun's half-even ``round_line``. So the tax
    is an item of its own ("VAT 20%", amount ``draft.tax``), and credits not already among the
    lines are one negative item: the total Stripe computes is then exactly the sum of HoodRun's
    rounded amounts, which is ``draft.total``.

Exactly once
    Before making anything, the customer's invoices are listed (a list is read-after-write
    consistent; Stripe's search is not, and localstripe has none) and one whose
    ``hoodrun_number`` matches is continued from its state: a draft gets the items it lacks
    (each item carries ``metadata.hoodrun_line``) and is finalized; an issued one is returned as
    it is. The creating calls also carry idempotency keys (``invoice-{number}``,
    ``item-{number}-{i}``), which cover a response lost in flight within Stripe's 24 hours.
    Credit notes and refunds are looked up by ``metadata.hoodrun_key`` before being made.

Errors: connection failures, timeouts, 409, 429 and 5xx are ``ProviderUnavailable``; other 4xx
(invalid request, card declined, bad key, idempotency conflict) are ``ProviderRejected`` with
Stripe's message, which never contains the API key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, TypeVar, cast, get_args

import stripe
from stripe.params import (
    CreditNoteCreateParams,
    CustomerCreateParams,
    CustomerCreateParamsAddress,
    CustomerCreateParamsTaxIdDatum,
    InvoiceCreateParams,
    InvoiceItemCreateParams,
    RefundCreateParams,
    RefundListParams,
)

from hoodrun.billing.config import StripeConfig
from hoodrun.billing.providers import (
    CustomerInfo,
    InvoiceDraft,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RemoteInvoice,
    RemoteStatus,
)
from hoodrun.metering.money import minor_units

__all__ = [
    "INVOICE_EVENTS",
    "StripeProvider",
    "WebhookEvent",
    "from_minor",
    "parse_webhook",
    "to_minor",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_O = TypeVar("_O", bound=stripe.StripeObject)

INVOICE_EVENTS: Final = frozenset(
    f"invoice.{name}"
    for name in "finalized marked_uncollectible paid payment_failed voided".split()
)
_STATUSES: Final = frozenset(get_args(RemoteStatus))
# Stripe needs the kind of a tax id; where the country does not say it, the id stays in metadata.
_TAX_ID_TYPES: Final[dict[str, str]] = {
    **dict.fromkeys(
        "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split(),
        "eu_vat",
    ),
    "AU": "au_abn",
    "CA": "ca_bn",
    "CH": "ch_vat",
    "GB": "gb_vat",
    "IS": "is_vat",
    "NO": "no_vat",
    "NZ": "nz_gst",
    "TR": "tr_tin",
    "US": "us_ein",
}
_PAGE = 100


# Where Stripe's API counts a currency in other units than ISO 4217's minor unit: ISK and UGX
# are zero-decimal in ISO but two-decimal at Stripe (100 = 1 ISK).
_STRIPE_EXPONENT = {"ISK": 2, "UGX": 2}


def _exponent(currency: str) -> int:
    return _STRIPE_EXPONENT.get(currency.upper(), minor_units(currency))


def to_minor(amount: Decimal, currency: str) -> int:
    """``amount`` in the integer units Stripe counts ``currency`` in (12.50 USD -> 1250),
    refused if finer than the currency's minor unit."""
    if amount.scaleb(minor_units(currency)) != amount.scaleb(minor_units(currency)).to_integral():
        raise ProviderRejected(f"{amount} {currency} is finer than the currency's minor unit")
    scaled = amount.scaleb(_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ProviderRejected(f"{amount} {currency} is finer than the currency's minor unit")
    return int(scaled)


def from_minor(amount: int, currency: str) -> Decimal:
    """Integer minor units of ``currency`` as a ``Decimal`` amount (1250 USD -> 12.50)."""
    return Decimal(amount).scaleb(-_exponent(currency))


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """An invoice event Stripe posted, with the invoice as the event saw it."""

    id: str
    type: str
    invoice: RemoteInvoice
    number: str | None
    """``metadata.hoodrun_number``: HoodRun's invoice, or None for an invoice made elsewhere."""


def parse_webhook(payload: bytes, signature_header: str, secret: str) -> WebhookEvent | None:
    """The invoice event in a webhook body whose ``Stripe-Signature`` checks out with ``secret``;
    None for other event types. A bad or stale (over 5 minutes) signature is
    ``ProviderRejected("invalid signature")``."""
    try:
        event = stripe.Webhook.construct_event(payload, signature_header, secret)
    except stripe.SignatureVerificationError:
        raise ProviderRejected("invalid signature") from None
    except ValueError:  # not JSON (or not UTF-8) although correctly signed
        raise ProviderRejected("invalid payload") from None
    data = event.to_dict()
    if data.get("type") not in INVOICE_EVENTS:
        return None
    try:
        invoice = data["data"]["object"]
        remote = _remote(invoice)
    except (KeyError, TypeError, ValueError):  # a thin event, or not an invoice
        raise ProviderRejected(f"event {data.get('id')}: no invoice in it") from None
    number = (invoice.get("metadata") or {}).get("hoodrun_number")
    return WebhookEvent(id=str(data["id"]), type=str(data["type"]), invoice=remote, number=number)


def _remote(invoice: dict[str, Any]) -> RemoteInvoice:
    """``RemoteInvoice.total`` is what the customer owes on the invoice net of its credit notes:
    ``total`` less the credit notes issued before payment (which lower ``amount_due``) and after
    it (which do not), so a correction shows the same way whether or not the invoice was paid.
    The customer's Stripe balance is not counted: HoodRun never sets it."""
    currency = str(invoice["currency"]).upper()
    status = str(invoice.get("status"))
    if status not in _STATUSES:
        raise ProviderRejected(f"invoice {invoice.get('id')}: unknown status {status}")
    return RemoteInvoice(
        provider_id=str(invoice["id"]),
        status=cast(RemoteStatus, status),
        currency=currency,
        total=from_minor(
            int(invoice["total"])
            - int(invoice.get("pre_payment_credit_notes_amount") or 0)
            - int(invoice.get("post_payment_credit_notes_amount") or 0),
            currency,
        ),
        amount_paid=from_minor(int(invoice.get("amount_paid") or 0), currency),
    )


def _translate(exc: stripe.StripeError, what: str) -> ProviderError:
    message = f"Stripe: {what}: {exc.user_message or type(exc).__name__}"
    status = exc.http_status
    if (
        isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError)
        or status is None
        or status >= 500
        or status == 409  # another request with the same idempotency key is still running
    ):
        return ProviderUnavailable(message)
    return ProviderRejected(message)


def _opt(obj: stripe.StripeObject, key: str) -> Any:
    """``obj[key]``, or None where Stripe left the field out."""
    return obj[key] if key in obj else None


def _tag(obj: stripe.StripeObject, key: str) -> str | None:
    """``obj.metadata[key]``, if set (metadata is a StripeObject, not a dict)."""
    metadata = _opt(obj, "metadata")
    return str(metadata[key]) if metadata is not None and key in metadata else None


def _id(ref: str | stripe.StripeObject) -> str:
    """The id of a field Stripe may answer either as an id or, expanded, as the object."""
    return ref if isinstance(ref, str) else str(ref["id"])


def _timestamp(day: date) -> int:
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp())


def _period(period: str) -> tuple[int, int] | None:
    """``YYYY-MM`` as Stripe's item period: the month's first second to the next month's."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        return None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp()), int(end.timestamp())


def _percent(rate: Decimal) -> str:
    return format((rate * 100).normalize(), "f")  # 0.20 -> "20", 0.075 -> "7.5"


def _tax_description(draft: InvoiceDraft) -> str:
    rates = sorted({line.tax_rate for line in draft.lines if line.tax_rate})
    if len(rates) != 1:
        return draft.tax_name
    if draft.tax_name.upper() == "KDV":  # Turkish puts the sign first: "KDV %20"
        return f"{draft.tax_name} %{_percent(rates[0])}"
    return f"{draft.tax_name} {_percent(rates[0])}%"


@dataclass(frozen=True, slots=True)
class _Item:
    amount: int
    description: str
    metadata: dict[str, str]


def _items(draft: InvoiceDraft) -> list[_Item]:
    """The invoice items of ``draft``: its lines, the tax, then the credits when the lines do
    not already hold them; refused unless they add up to ``draft.total``."""
    currency = draft.currency
    items = [
        _Item(
            to_minor(line.amount, currency),
            line.description,
            {
                "kind": line.kind,
                "quantity": str(line.quantity),
                "unit_price": str(line.unit_price),
                "tax_rate": str(line.tax_rate),
            },
        )
        for line in draft.lines
    ]
    lines_sum = sum((line.amount for line in draft.lines), Decimal(0))
    if draft.tax:
        items.append(_Item(to_minor(draft.tax, currency), _tax_description(draft), {"kind": "tax"}))
    if draft.credits and lines_sum + draft.tax - draft.credits == draft.total:
        items.append(_Item(-to_minor(draft.credits, currency), "Credits", {"kind": "credit"}))
    elif lines_sum + draft.tax != draft.total:
        raise ProviderRejected(
            f"invoice {draft.number}: lines {lines_sum}, tax {draft.tax} and credits "
            f"{draft.credits} do not add up to the total {draft.total} {currency}"
        )
    return items


class StripeProvider:
    """The ``BillingProvider`` for Stripe. Use as ``async with StripeProvider(config) as p:``
    or call ``aclose``; calls after closing raise ``RuntimeError``.

    ``max_network_retries`` lets the SDK retry a connection error, 409 or 5xx itself (with the
    same idempotency key) before the job queue's slower backoff takes over.
    """

    name = "stripe"

    def __init__(self, config: StripeConfig, *, max_network_retries: int = 2) -> None:
        key = config.key()
        if not key:
            raise ValueError("billing.stripe.api_key (or api_key_file) is not set")
        self._collection_method = config.collection_method
        self._http = stripe.HTTPXClient(timeout=config.timeout)
        self.client = stripe.StripeClient(
            key,
            base_addresses={"api": config.api_base},
            max_network_retries=max_network_retries,
            http_client=self._http,
        )
        """The SDK client, for what this interface does not cover."""
        self._closed = False

    async def __aenter__(self) -> StripeProvider:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._http.close_async()  # type: ignore[no-untyped-call]

    async def _all(self, what: str, request: Awaitable[stripe.ListObject[_O]]) -> list[_O]:
        """Every item of a list, page after page (the lists read here are short)."""
        page = await self._call(what, request)
        try:
            return [item async for item in page.auto_paging_iter()]
        except stripe.StripeError as exc:
            raise _translate(exc, what) from None

    def _check_open(self, request: Awaitable[Any]) -> None:
        if self._closed:
            close = getattr(request, "close", None)
            if close is not None:
                close()  # the coroutine will never be awaited
            raise RuntimeError("the Stripe provider is closed")

    async def _call(self, what: str, request: Awaitable[_T]) -> _T:
        self._check_open(request)
        try:
            return await request
        except stripe.StripeError as exc:
            raise _translate(exc, what) from None

    # --- customers ------------------------------------------------------------------------------

    async def ensure_customer(self, customer: CustomerInfo, existing_id: str | None) -> str:
        """``existing_id`` when Stripe still has that customer (its name, email and address
        brought up to date), else a new customer tagged ``metadata.hoodrun_org``."""
        if existing_id:
            found = await self._live_customer(existing_id)
            if found is not None:
                await self._update_customer(existing_id, found, customer)
                return existing_id
        # A replacement gets its own key: the first one would replay the deleted customer.
        key = f"customer-{customer.org_id}"
        if existing_id:
            key = f"{key}-after-{existing_id}"
        created = await self._call(
            "create customer",
            self.client.v1.customers.create_async(
                params=self._customer_params(customer), options={"idempotency_key": key}
            ),
        )
        return created.id

    async def _live_customer(self, customer_id: str) -> dict[str, Any] | None:
        request = self.client.v1.customers.retrieve_async(customer_id)
        self._check_open(request)
        try:
            found = await request
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise _translate(exc, f"retrieve customer {customer_id}") from None
        except stripe.StripeError as exc:
            raise _translate(exc, f"retrieve customer {customer_id}") from None
        data = found.to_dict()
        return None if data.get("deleted") else data

    async def _update_customer(
        self, customer_id: str, found: dict[str, Any], customer: CustomerInfo
    ) -> None:
        wanted = self._customer_params(customer)
        address = dict(wanted.get("address") or {})
        current = {key: value for key, value in (found.get("address") or {}).items() if value}
        if (
            found.get("name") == wanted.get("name")
            and (found.get("email") or None) == wanted.get("email")
            and current == address
        ):
            return
        await self._call(
            f"update customer {customer_id}",
            self.client.v1.customers.update_async(
                customer_id,
                params={
                    "name": customer.name,
                    "email": customer.email,
                    "address": wanted.get("address") or "",
                },
            ),
        )

    @staticmethod
    def _customer_params(customer: CustomerInfo) -> CustomerCreateParams:
        params: CustomerCreateParams = {
            "name": customer.name,
            "metadata": {"hoodrun_org": customer.org_id},
            "preferred_locales": ["tr", "en"] if customer.country == "TR" else ["en"],
        }
        if customer.email:
            params["email"] = customer.email
        address: CustomerCreateParamsAddress = {}
        if customer.country:
            address["country"] = customer.country
        if customer.address:
            address["line1"] = customer.address
        if customer.district:
            address["line2"] = customer.district
        if customer.city:
            address["city"] = customer.city
        if address:
            params["address"] = address
        if customer.tax_id:
            params["metadata"] = {"hoodrun_org": customer.org_id, "tax_id": customer.tax_id}
            kind = _TAX_ID_TYPES.get(customer.country or "")
            if kind is not None:
                datum: CustomerCreateParamsTaxIdDatum = {"type": kind, "value": customer.tax_id}
                params["tax_id_data"] = [datum]
        return params

    # --- invoices -------------------------------------------------------------------------------

    async def send_invoice(self, customer_id: str, draft: InvoiceDraft) -> RemoteInvoice:
        """The Stripe invoice of ``draft.number``, issued (``open``, or ``paid`` when nothing is
        due): found and continued if an earlier attempt made it, else created, filled and
        finalized. A total other than ``draft.total`` is logged and returned for reconciliation."""
        items = _items(draft)  # refuse an inconsistent draft before anything is made
        invoice = await self._find_invoice(customer_id, draft.number)
        if invoice is None:
            invoice = (
                await self._call(
                    f"create invoice {draft.number}",
                    self.client.v1.invoices.create_async(
                        params=self._invoice_params(customer_id, draft),
                        options={"idempotency_key": f"invoice-{draft.number}"},
                    ),
                )
            ).to_dict()
        if invoice["status"] == "draft":
            invoice_id = str(invoice["id"])
            await self._add_missing_items(customer_id, invoice_id, draft, items)
            invoice = await self._move(
                invoice_id,
                f"finalize {draft.number}",
                self.client.v1.invoices.finalize_invoice_async(
                    invoice_id,
                    params={"auto_advance": False},
                    options={"idempotency_key": f"finalize-{draft.number}"},
                ),
                *("open", "paid", "uncollectible", "void"),
            )
        remote = _remote(invoice)
        if remote.total != draft.total:
            _log.warning(
                "Stripe invoice %s (%s) is due %s %s; HoodRun's total is %s",
                remote.provider_id,
                draft.number,
                remote.total,
                remote.currency,
                draft.total,
            )
        return remote

    async def _find_invoice(self, customer_id: str, number: str) -> dict[str, Any] | None:
        invoices = await self._all(
            f"list invoices of {customer_id}",
            self.client.v1.invoices.list_async(params={"customer": customer_id, "limit": _PAGE}),
        )
        for invoice in invoices:
            if _tag(invoice, "hoodrun_number") == number:
                return invoice.to_dict()
        return None

    def _invoice_params(self, customer_id: str, draft: InvoiceDraft) -> InvoiceCreateParams:
        params: InvoiceCreateParams = {
            "customer": customer_id,
            "currency": draft.currency.lower(),
            "collection_method": self._collection_method,
            "auto_advance": False,
            "pending_invoice_items_behavior": "exclude",
            "number": draft.number,
            "effective_at": _timestamp(draft.issue_date),
            "metadata": {
                **draft.metadata,
                "hoodrun_number": draft.number,
                "hoodrun_invoice": draft.invoice_id,
                "period": draft.period,
            },
        }
        if draft.description:
            params["description"] = draft.description
        if self._collection_method == "send_invoice":
            # Days rather than a due date: a retry after the due date would be refused.
            params["days_until_due"] = max((draft.due_date - draft.issue_date).days, 0)
        if draft.reverse_charge:
            params["footer"] = (
                f"Reverse charge: the customer accounts for {draft.tax_name} on this invoice."
            )
        return params

    async def _add_missing_items(
        self, customer_id: str, invoice_id: str, draft: InvoiceDraft, items: list[_Item]
    ) -> None:
        lines = await self._all(
            f"list lines of {invoice_id}",
            self.client.v1.invoices.line_items.list_async(invoice_id, params={"limit": _PAGE}),
        )
        present = {_tag(line, "hoodrun_line") for line in lines}
        period = _period(draft.period)
        for index, item in enumerate(items):
            if str(index) in present:
                continue
            params: InvoiceItemCreateParams = {
                "customer": customer_id,
                "invoice": invoice_id,
                "currency": draft.currency.lower(),
                "amount": item.amount,
                "description": item.description,
                "metadata": {
                    **item.metadata,
                    "hoodrun_number": draft.number,
                    "hoodrun_line": str(index),
                },
            }
            if period is not None:
                params["period"] = {"start": period[0], "end": period[1]}
            await self._call(
                f"add line {index} to {draft.number}",
                self.client.v1.invoice_items.create_async(
                    params=params, options={"idempotency_key": f"item-{draft.number}-{index}"}
                ),
            )

    async def _move(
        self, invoice_id: str, what: str, request: Awaitable[stripe.Invoice], *done: str
    ) -> dict[str, Any]:
        """The invoice after ``request``; if Stripe refuses it because the invoice already got
        to a ``done`` status (a concurrent or earlier attempt), the invoice as it is."""
        try:
            return (await self._call(what, request)).to_dict()
        except ProviderRejected:
            current = await self._retrieve(invoice_id)
            if current["status"] in done:
                return current
            raise

    async def _retrieve(self, invoice_id: str) -> dict[str, Any]:
        invoice = await self._call(
            f"retrieve invoice {invoice_id}", self.client.v1.invoices.retrieve_async(invoice_id)
        )
        return invoice.to_dict()

    async def fetch_invoice(self, provider_id: str) -> RemoteInvoice:
        return _remote(await self._retrieve(provider_id))

    async def collect_payment(self, provider_id: str) -> RemoteInvoice:
        """Pay the invoice with the customer's payment method; a paid or void invoice is returned
        as it is. A decline is ``ProviderRejected`` with the card's message."""
        invoice = await self._retrieve(provider_id)
        if invoice["status"] in ("paid", "void"):
            return _remote(invoice)
        if invoice.get("collection_method") == "send_invoice":
            # The customer pays from the invoice Stripe sent: nothing to charge, only to read.
            return _remote(invoice)
        # A new key per attempt: Stripe replays a declined attempt's answer to its key.
        key = f"pay-{provider_id}-{invoice.get('attempt_count') or 0}"
        request = self.client.v1.invoices.pay_async(provider_id, options={"idempotency_key": key})
        return _remote(await self._move(provider_id, f"pay {provider_id}", request, "paid"))

    async def void_invoice(self, provider_id: str) -> RemoteInvoice:
        invoice = await self._retrieve(provider_id)
        if invoice["status"] == "void":
            return _remote(invoice)
        request = self.client.v1.invoices.void_invoice_async(provider_id)
        return _remote(await self._move(provider_id, f"void {provider_id}", request, "void"))

    # --- corrections ----------------------------------------------------------------------------

    async def credit_note(self, provider_id: str, amount: Decimal, reason: str, *, key: str) -> str:
        """A credit note of ``amount`` on the invoice, ``reason`` as its memo.

        On an unpaid invoice it lowers what is due. On a paid one it is recorded as settled
        outside Stripe (``out_of_band_amount``), not as customer balance or a refund: HoodRun
        moves that money itself, with ``refund`` or a credit on a later invoice, and a Stripe
        balance would silently lower the next invoice below HoodRun's total.
        """
        if amount <= 0:
            raise ProviderRejected(f"credit note of {amount}: the amount must be positive")
        notes = await self._all(
            f"list credit notes of {provider_id}",
            self.client.v1.credit_notes.list_async(params={"invoice": provider_id, "limit": _PAGE}),
        )
        for note in notes:
            if _tag(note, "hoodrun_key") == key:
                return note.id
        invoice = await self._retrieve(provider_id)
        minor = to_minor(amount, str(invoice["currency"]).upper())
        params: CreditNoteCreateParams = {
            "invoice": provider_id,
            "amount": minor,
            "memo": reason,
            "metadata": {"hoodrun_key": key},
        }
        if invoice["status"] == "paid":
            params["out_of_band_amount"] = minor
        note = await self._call(
            f"credit note on {provider_id}",
            self.client.v1.credit_notes.create_async(
                params=params, options={"idempotency_key": f"credit-note-{key}"}
            ),
        )
        return note.id

    async def refund(self, provider_id: str, amount: Decimal, reason: str, *, key: str) -> str:
        """Refund ``amount`` of the invoice's payment (its PaymentIntent, or its charge)."""
        if amount <= 0:
            raise ProviderRejected(f"refund of {amount}: the amount must be positive")
        payments = await self._call(
            f"list payments of {provider_id}",
            self.client.v1.invoice_payments.list_async(
                params={"invoice": provider_id, "status": "paid", "limit": _PAGE}
            ),
        )
        paid = [
            p
            for p in payments.data
            if _opt(p.payment, "payment_intent") or _opt(p.payment, "charge")
        ]
        if not paid:
            raise ProviderRejected(f"invoice {provider_id} has no payment to refund")
        intent, charge = _opt(paid[0].payment, "payment_intent"), _opt(paid[0].payment, "charge")
        currency = paid[0].currency.upper()
        listing: RefundListParams = {"limit": _PAGE}
        target: RefundCreateParams = {}
        if intent is not None:
            listing["payment_intent"] = target["payment_intent"] = _id(intent)
        else:
            listing["charge"] = target["charge"] = _id(charge)
        refunds = await self._all(
            f"list refunds of {provider_id}", self.client.v1.refunds.list_async(params=listing)
        )
        for existing in refunds:
            if _tag(existing, "hoodrun_key") == key:
                return existing.id
        params: RefundCreateParams = {
            **target,
            "amount": to_minor(amount, currency),
            "metadata": {"hoodrun_key": key, "hoodrun_invoice": provider_id, "reason": reason},
        }
        refund = await self._call(
            f"refund {provider_id}",
            self.client.v1.refunds.create_async(
                params=params, options={"idempotency_key": f"refund-{key}"}
            ),
        )
        return refund.id

"""Paraşüt (API v4): invoices of customers in Turkey, in TL, issued as e-Fatura or e-Arşiv.

``send_invoice`` runs these steps, each safe to run again after a crash:

1. Look for the sales invoice already made for ``draft.number``. Paraşüt numbers an invoice with a
   series (text) and a sequence (``invoice_id``, an integer), so ``HR-2026-000123`` is sent as
   series ``HR-2026`` and sequence ``123`` and looked up by both.
2. Otherwise create it: one detail per line, VAT per detail (``vat_rate`` 20 for KDV), in ``TRL``
   (Paraşüt's code for TRY). Details cannot be negative, so credits become one invoice discount
   of type ``amount``.
3. Refuse to issue (``ProviderRejected``) when Paraşüt's total (``net_total``, "Genel Toplam")
   differs from ``draft.total``: the e-document is a legal document and must carry HoodRun's total.
4. Issue an e-Fatura when the customer's tax number has an e-invoice inbox, else an e-Arşiv, and
   poll the trackable job; then read the invoice's ``active_e_document``.

Credits: how much that one invoice discount is comes from ``_totals``, whose docstring says why.

Not done here, on purpose: refunds of money (made in Paraşüt by the operator) and charging cards
(Paraşüt only records payments). Turkey's local date (UTC+3, no daylight saving since 2016) dates
credit notes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from types import TracebackType
from typing import Literal, Self

import httpx

from hoodrun.billing.config import ParasutConfig
from hoodrun.billing.providers import (
    CustomerInfo,
    InvoiceDraft,
    ProviderRejected,
    ProviderUnavailable,
    RemoteInvoice,
)
from hoodrun.billing.providers.parasut._session import (
    Clock,
    Doc,
    ParasutRejected,
    Sleep,
    _attrs,
    _data,
    _included,
    _items,
    _related,
    _Session,
)
from hoodrun.billing.providers.parasut._totals import (
    _as_detail,
    _Detail,
    _discount_for,
    _money,
    _net_of,
    _remote,
)

__all__ = ["ParasutProvider", "ParasutRejected"]

log = logging.getLogger(__name__)

_TURKEY = timezone(timedelta(hours=3))
_JOB_TTL = 15 * 60.0  # Paraşüt forgets a trackable job id after 15 minutes.
_MAX_SEQUENCE = 2**31 - 1
_PRODUCT_CODE = "HOODRUN-RPC"
_PRODUCT_NAME = "RPC usage"
_CURRENCIES = {"TRY": "TRL", "USD": "USD", "EUR": "EUR", "GBP": "GBP"}
_NUMBER = re.compile(r"^(?P<series>.*?)[-_/ ]*(?P<sequence>\d+)$")
_PARTY_FIELDS = ("tax_number", "tax_office", "city", "district", "country")


# --- invoice numbers and currencies -----------------------------------------------------------


def _to_wire_currency(currency: str) -> str:
    wire = _CURRENCIES.get(currency.upper())
    if wire is None:
        raise ProviderRejected(f"Paraşüt invoices in TRY, USD, EUR or GBP, not {currency}")
    return wire


def _split_number(number: str) -> tuple[str, int]:
    """``HR-2026-000123`` → (``HR-2026``, 123): Paraşüt's invoice series and sequence."""
    match = _NUMBER.match(number.strip())
    if match is None or int(match["sequence"]) > _MAX_SEQUENCE:
        raise ProviderRejected(f"{number!r} does not end in a sequence number Paraşüt can take")
    return match["series"], int(match["sequence"])


def _key_number(key: str) -> tuple[str, int]:
    """The series and sequence of a credit note: its key if that reads as a number, else a stable
    sequence derived from the key (series ``CN``), so looking it up again finds it."""
    try:
        return _split_number(key)
    except ProviderRejected:
        return "CN", int(hashlib.sha256(key.encode()).hexdigest()[:7], 16)


# --- the provider -----------------------------------------------------------------------------


class ParasutProvider:
    """HoodRun's invoices issued through Paraşüt. One instance per process: it holds the OAuth
    tokens and the rate limit, which Paraşüt counts per user."""

    name = "parasut"

    def __init__(
        self,
        config: ParasutConfig,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        e_invoice_scenario: Literal["basic", "commercial"] = "basic",
    ) -> None:
        missing = [
            key
            for key, value in (
                ("company_id", config.company_id),
                ("client_id", config.client_id),
                ("client_secret", config.secret()),
                ("username", config.username),
                ("password", config.user_password()),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"billing.parasut: set {', '.join(missing)}")
        self._config = config
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout)
        self._session = _Session(config, self._client, clock, sleep)
        self._clock, self._sleep = clock, sleep
        self._scenario = e_invoice_scenario
        self._product = config.product_id
        self._product_lock = asyncio.Lock()
        self._jobs: dict[str, tuple[str, float]] = {}  # sales invoice id → (job id, started)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._own_client:
                await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Doc | None = None,
    ) -> Doc | None:
        if self._closed:
            raise RuntimeError("the Paraşüt provider is closed")
        return await self._session.request(method, path, params=params, body=body)

    # Customers.

    async def ensure_customer(self, customer: CustomerInfo, existing_id: str | None) -> str:
        if existing_id:
            try:
                await self._call("GET", f"contacts/{existing_id}")
                return existing_id
            except ParasutRejected as exc:
                if exc.status != 404:
                    raise
                log.warning(
                    "Paraşüt contact %s of %s is gone; finding it again",
                    existing_id,
                    customer.org_id,
                )
        found = await self._find_contact(customer)
        if found is not None:
            return found
        abroad = customer.country not in (None, "", "TR")
        attributes: Doc = {
            "name": customer.name,
            "account_type": "customer",
            "contact_type": "company" if customer.business else "person",
            "is_abroad": abroad,
        }
        optional = {
            "email": customer.email,
            "tax_number": customer.tax_id or "",
            "tax_office": customer.tax_office,
            "city": customer.city,
            "district": customer.district,
            "address": customer.address,
            "country": "Türkiye" if not abroad else customer.country or "",
        }
        attributes |= {key: value for key, value in optional.items() if value}
        doc = await self._call(
            "POST", "contacts", body={"data": {"type": "contacts", "attributes": attributes}}
        )
        contact_id = str(_data(doc)["id"])
        log.info("Paraşüt contact %s made for %s", contact_id, customer.org_id)
        return contact_id

    async def _find_contact(self, customer: CustomerInfo) -> str | None:
        params = {"filter[account_type]": "customer"}
        if customer.tax_id:
            params["filter[tax_number]"] = customer.tax_id
        else:
            params["filter[name]"] = customer.name
        contacts = _items(await self._call("GET", "contacts", params=params))
        if customer.tax_id:
            same = [c for c in contacts if _attrs(c).get("tax_number") == customer.tax_id]
            named = [c for c in same if _attrs(c).get("name") == customer.name]
            chosen = (named or same)[:1]
        else:
            # Without a tax number only the same name and email say it is the same customer.
            chosen = [
                c
                for c in contacts
                if _attrs(c).get("name") == customer.name
                and (_attrs(c).get("email") or "") == customer.email
            ][:1]
        return str(chosen[0]["id"]) if chosen else None

    # Invoices.

    async def send_invoice(self, customer_id: str, draft: InvoiceDraft) -> RemoteInvoice:
        currency = _to_wire_currency(draft.currency)
        series, sequence = _split_number(draft.number)
        invoice = await self._find_invoice(series, sequence, "invoice")
        if invoice is None:
            invoice = await self._create_invoice(customer_id, draft, currency, series, sequence)
        elif _attrs(invoice).get("item_type") == "cancelled":
            raise ProviderRejected(f"invoice {draft.number} was cancelled in Paraşüt")
        if _related(invoice, "active_e_document") is None:
            attrs = _attrs(invoice)
            total = _money(attrs.get("net_total") or 0)
            if total != draft.total or attrs.get("currency") != currency:
                raise ProviderRejected(
                    f"Paraşüt computed {total} {attrs.get('currency')} for {draft.number}, HoodRun "
                    f"{draft.total} {draft.currency}: not issued (see the sales invoice "
                    f"{invoice['id']} in Paraşüt)"
                )
            await self._issue(invoice, draft)
            invoice = _data(await self._get_invoice(str(invoice["id"])))
        remote = _remote(invoice)
        if remote.document_id is None:
            raise ProviderUnavailable(f"the e-document of {draft.number} is not visible yet")
        return remote

    async def _get_invoice(self, invoice_id: str, include: str = "active_e_document") -> Doc | None:
        return await self._call("GET", f"sales_invoices/{invoice_id}", params={"include": include})

    async def _find_invoice(self, series: str, sequence: int, item_type: str) -> Doc | None:
        params = {
            "filter[invoice_series]": series,
            "filter[invoice_id]": str(sequence),
            "include": "active_e_document",
        }
        for invoice in _items(await self._call("GET", "sales_invoices", params=params)):
            attrs = _attrs(invoice)
            kinds = (item_type, "cancelled") if item_type == "invoice" else (item_type,)
            if (
                str(attrs.get("invoice_id")) == str(sequence)
                and (attrs.get("invoice_series") or "") == series
                and attrs.get("item_type") in kinds
            ):
                return invoice
        return None

    async def _party(self, contact_id: str, overrides: dict[str, str]) -> Doc:
        """The buyer's fields an invoice repeats: the contact's, or the draft's metadata."""
        contact = _attrs(_data(await self._call("GET", f"contacts/{contact_id}")))
        party: Doc = {key: contact.get(key) for key in _PARTY_FIELDS if contact.get(key)}
        if contact.get("address"):
            party["billing_address"] = contact["address"]
        for key in (*_PARTY_FIELDS, "address"):
            if overrides.get(key):
                party["billing_address" if key == "address" else key] = overrides[key]
        party["is_abroad"] = bool(contact.get("is_abroad", False))
        return party

    async def _product_id(self) -> str:
        if self._product is not None:
            return self._product
        async with self._product_lock:
            if self._product is None:
                params = {"filter[code]": _PRODUCT_CODE}
                found = [
                    p
                    for p in _items(await self._call("GET", "products", params=params))
                    if _attrs(p).get("code") == _PRODUCT_CODE
                ]
                if found:
                    self._product = str(found[0]["id"])
                else:
                    attributes = {"name": _PRODUCT_NAME, "code": _PRODUCT_CODE, "vat_rate": 20}
                    doc = await self._call(
                        "POST",
                        "products",
                        body={"data": {"type": "products", "attributes": attributes}},
                    )
                    self._product = str(_data(doc)["id"])
                    log.info("Paraşüt product %s made for invoice details", self._product)
            return self._product

    async def _create_invoice(
        self, customer_id: str, draft: InvoiceDraft, currency: str, series: str, sequence: int
    ) -> Doc:
        details = [_as_detail(line) for line in draft.lines if line.amount >= 0]
        credits = -sum((line.amount for line in draft.lines if line.amount < 0), Decimal(0))
        if not details:
            raise ProviderRejected(f"invoice {draft.number} has no line Paraşüt can show")
        product = await self._product_id()
        attributes: Doc = {
            "item_type": "invoice",
            "issue_date": draft.issue_date.isoformat(),
            "due_date": draft.due_date.isoformat(),
            "currency": currency,
            "description": draft.description,
            "invoice_series": series,
            "invoice_id": sequence,
            **await self._party(customer_id, draft.metadata),
        }
        if currency != "TRL" and draft.exchange_rate is not None:
            # For a TL invoice the rate only says how HoodRun converted: Paraşüt's field is the
            # TL value of a foreign-currency invoice's unit.
            attributes["exchange_rate"] = draft.exchange_rate
        discount = _discount_for(details, credits, draft.total)
        if discount:
            attributes |= {"invoice_discount_type": "amount", "invoice_discount": discount}
        body = {
            "data": {
                "type": "sales_invoices",
                "attributes": attributes,
                "relationships": {
                    "contact": {"data": {"type": "contacts", "id": customer_id}},
                    "details": {"data": [_detail_resource(d, product) for d in details]},
                },
            }
        }
        invoice = _data(await self._call("POST", "sales_invoices", body=body))
        log.info("Paraşüt sales invoice %s made for %s", invoice["id"], draft.number)
        return invoice

    # e-Fatura / e-Arşiv.

    async def _issue(self, invoice: Doc, draft: InvoiceDraft) -> None:
        invoice_id = str(invoice["id"])
        job = self._jobs.get(invoice_id)
        if job is None or self._clock() - job[1] >= _JOB_TTL:
            job_id = await self._start_e_document(invoice, draft)
            if job_id is None:
                return
            job = self._jobs[invoice_id] = (job_id, self._clock())
        try:
            await self._wait(job[0], draft.number)
        except ProviderRejected:
            self._jobs.pop(invoice_id, None)
            raise
        # On ProviderUnavailable the job is kept: it may still finish, and the retry polls it.
        self._jobs.pop(invoice_id, None)

    async def _start_e_document(self, invoice: Doc, draft: InvoiceDraft) -> str | None:
        invoice_id, attrs = str(invoice["id"]), _attrs(invoice)
        vkn = str(attrs.get("tax_number") or "")
        inboxes = []
        if vkn:
            doc = await self._call("GET", "e_invoice_inboxes", params={"filter[vkn]": vkn})
            inboxes = [i for i in _items(doc) if _attrs(i).get("e_invoice_address")]
        common = {
            k: draft.metadata[k]
            for k in ("vat_exemption_reason_code", "vat_exemption_reason", "note")
            if draft.metadata.get(k)
        }
        target = {"type": "sales_invoices", "id": invoice_id}
        if inboxes:
            kind = "e_invoices"
            attributes = common | {
                "scenario": self._scenario,
                "to": _attrs(inboxes[0])["e_invoice_address"],
            }
            relationships = {"invoice": {"data": target}}
        else:
            kind = "e_archives"
            attributes = dict(common)
            if self._config.internet_sale_url:
                sale = {
                    "url": self._config.internet_sale_url,
                    "payment_type": draft.metadata.get("payment_type", "EFT/HAVALE"),
                    "payment_platform": draft.metadata.get("payment_platform", ""),
                    "payment_date": draft.metadata.get(
                        "payment_date", draft.issue_date.isoformat()
                    ),
                }
                attributes["internet_sale"] = {k: v for k, v in sale.items() if v}
            relationships = {"sales_invoice": {"data": target}}
        body = {"data": {"type": kind, "attributes": attributes, "relationships": relationships}}
        try:
            job = _data(await self._call("POST", kind, body=body))
        except ParasutRejected as exc:
            # Refused because an earlier attempt already issued it? Then carry on from there.
            if exc.status == 422 and _related(
                _data(await self._get_invoice(invoice_id)), "active_e_document"
            ):
                return None
            # An earlier attempt's job still running (its process died before it could poll
            # it): Paraşüt finishes it on its own; the retry finds the e-document issued.
            if exc.status == 422 and "formalis" in str(exc).lower():
                raise ProviderUnavailable(
                    f"an earlier e-document job of {draft.number} is still running at Paraşüt"
                ) from exc
            raise
        log.info("Paraşüt %s job %s started for %s", kind, job["id"], draft.number)
        return str(job["id"])

    async def _wait(self, job_id: str, number: str) -> None:
        deadline = self._clock() + self._config.job_timeout
        while True:
            try:
                job = _data(await self._call("GET", f"trackable_jobs/{job_id}"))
            except ParasutRejected as exc:
                if exc.status == 404:
                    raise ProviderUnavailable(f"the e-document job of {number} expired") from exc
                raise
            attrs = _attrs(job)
            status = attrs.get("status")
            if status == "done":
                return
            if status == "error":
                errors = attrs.get("errors") or []
                reasons = "; ".join(e if isinstance(e, str) else json.dumps(e) for e in errors)
                raise ProviderRejected(
                    f"Paraşüt could not issue the e-document of {number}: {reasons}"
                )
            if self._clock() >= deadline:
                raise ProviderUnavailable(
                    f"the e-document of {number} is still {status} at Paraşüt"
                )
            await self._sleep(self._config.poll_interval)

    async def document_pdf(self, provider_id: str) -> bytes | None:
        """The e-document's PDF, waiting up to ``job_timeout`` for Paraşüt to render it; None if
        the invoice has no e-document or the PDF is still not ready."""
        document = _related(_data(await self._get_invoice(provider_id)), "active_e_document")
        if document is None or document[0] not in ("e_archives", "e_invoices"):
            return None
        kind, document_id = document
        deadline = self._clock() + self._config.job_timeout
        while True:
            pdf = await self._call("GET", f"{kind}/{document_id}/pdf")
            url = _attrs(_data(pdf)).get("url") if pdf is not None else None
            if url:
                return await self._session.download(str(url))
            if self._clock() >= deadline:
                return None
            await self._sleep(self._config.poll_interval)

    # Status, payments, credits.

    async def fetch_invoice(self, provider_id: str) -> RemoteInvoice:
        return _remote(_data(await self._get_invoice(provider_id)))

    async def collect_payment(self, provider_id: str) -> RemoteInvoice:
        """Paraşüt charges no card: customers in Turkey pay by transfer, which the operator (or
        ``record_payment``) books in Paraşüt. This reads what has been paid."""
        return await self.fetch_invoice(provider_id)

    async def record_payment(
        self,
        provider_id: str,
        amount: Decimal,
        *,
        paid_on: date,
        account_id: int,
        description: str = "",
    ) -> str:
        """Book a payment received into the Paraşüt cash or bank account ``account_id``; the
        payment's id. Not idempotent: Paraşüt has no key for it, so call it once per payment."""
        attributes: Doc = {"account_id": account_id, "date": paid_on.isoformat(), "amount": amount}
        if description:
            attributes["description"] = description
        doc = await self._call(
            "POST",
            f"sales_invoices/{provider_id}/payments",
            body={"data": {"type": "payments", "attributes": attributes}},
        )
        return str(_data(doc)["id"])

    async def credit_note(self, provider_id: str, amount: Decimal, reason: str, *, key: str) -> str:
        """A refund invoice (iade faturası) of ``amount`` VAT included, at the original invoice's
        VAT rate, numbered from ``key``. It is recorded, not issued as an e-document: that, like
        the choice between a refund invoice and cancelling, is the operator's call in Paraşüt."""
        if amount <= 0:
            raise ProviderRejected(f"a credit note needs a positive amount, not {amount}")
        series, sequence = _key_number(key)
        existing = await self._find_invoice(series, sequence, "refund")
        if existing is not None:
            return str(existing["id"])
        doc = await self._get_invoice(provider_id, include="details,contact")
        original = _data(doc)
        attrs, contact = _attrs(original), _related(original, "contact")
        rates = {
            _money(_attrs(d).get("vat_rate", 0))
            for d in _included(doc or {}, "sales_invoice_details")
        }
        if contact is None or len(rates) != 1:
            raise ProviderRejected(
                f"credit notes of Paraşüt invoice {provider_id} (several VAT rates or no contact) "
                "are made in Paraşüt by the operator"
            )
        rate = rates.pop()
        net = _net_of(amount, rate)
        if net is None:
            raise ProviderRejected(f"no net amount at {rate}% VAT comes to {amount}")
        number = (
            attrs.get("invoice_no")
            or f"{attrs.get('invoice_series', '')}{attrs.get('invoice_id', '')}"
        )
        attributes: Doc = {
            "item_type": "refund",
            "issue_date": datetime.now(_TURKEY).date().isoformat(),
            "currency": attrs.get("currency", "TRL"),
            "description": f"Refund for invoice {number}: {reason}",
            "invoice_series": series,
            "invoice_id": sequence,
            **{k: attrs[k] for k in (*_PARTY_FIELDS, "billing_address", "is_abroad") if k in attrs},
        }
        if attrs.get("exchange_rate") is not None and attrs.get("currency") != "TRL":
            attributes["exchange_rate"] = _money(attrs["exchange_rate"])
        detail = _Detail(Decimal(1), net, rate, reason)
        body = {
            "data": {
                "type": "sales_invoices",
                "attributes": attributes,
                "relationships": {
                    "contact": {"data": {"type": "contacts", "id": contact[1]}},
                    "details": {"data": [_detail_resource(detail, await self._product_id())]},
                },
            }
        }
        refund = _data(await self._call("POST", "sales_invoices", body=body))
        log.info("Paraşüt refund invoice %s made against %s", refund["id"], provider_id)
        return str(refund["id"])

    async def refund(self, provider_id: str, amount: Decimal, reason: str, *, key: str) -> str:
        """Paraşüt records money but does not move it, and has no documented way to book money
        paid back against a sales invoice: the operator pays it back and books it in Paraşüt."""
        raise ProviderRejected("refunds of Turkish invoices are made in Paraşüt by the operator")

    async def void_invoice(self, provider_id: str) -> RemoteInvoice:
        current = await self.fetch_invoice(provider_id)
        if current.status == "void":
            return current
        await self._call("DELETE", f"sales_invoices/{provider_id}/cancel")
        log.info("Paraşüt sales invoice %s cancelled", provider_id)
        return await self.fetch_invoice(provider_id)


def _detail_resource(detail: _Detail, product_id: str) -> Doc:
    return {
        "type": "sales_invoice_details",
        "attributes": {
            "quantity": detail.quantity,
            "unit_price": detail.unit_price,
            "vat_rate": detail.vat_rate,
            "description": detail.description,
        },
        "relationships": {"product": {"data": {"type": "products", "id": product_id}}},
    }

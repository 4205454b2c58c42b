"""A fake of the part of Stripe's v1 API that HoodRun's billing uses, where localstripe falls short
(one-off invoices for a customer without a subscription, finalize, credit notes, invoice payments,
idempotency keys).

It follows Stripe's documented API: form-encoded bodies with bracketed keys
(``metadata[hoodrun_number]=...``), ``Authorization: Bearer sk_test_...`` (401 otherwise), errors as
``{"error": {"type", "message", "param", "code"}}``, unknown parameters refused, lists as
``{"object": "list", "data", "has_more", "url"}`` paged with ``limit``/``starting_after``, and
objects with ``object``, ``id``, ``status``, ``total``, ``amount_due``, ``amount_paid``, ``lines``,
``metadata``. ``Idempotency-Key`` is honoured: the same key and request replay the first answer
(``Idempotent-Replayed: true``); the same key with other parameters is a 400
``idempotency_error``. As at Stripe, only answers of requests that ran are kept (2xx, and 402
card declines), not validation errors. There is no tax, discount or customer balance: an
invoice's total is the sum of its lines.

Test hooks, as methods and as unauthenticated ``/_test/...`` routes for tests that drive the
fake from another process:

- ``fail(times, method=, path=, status=, after=)``: answer 503 (or ``status``) to matching
  requests; ``after=True`` does the work first and loses the answer, like a dropped response.
  ``down()``/``up()`` fail every request until told otherwise (``POST /_test/down``, ``/_test/up``).
- ``invoices_for(number)``: the invoices tagged ``metadata.hoodrun_number`` (``GET
  /_test/invoices?number=``).
- ``adjust(invoice_id, amount)``: add a line to any invoice, finalized or not, so its totals move
  behind the caller's back (``POST /_test/invoices/{id}/adjust`` with ``amount``).
- ``expire_keys()``: forget the idempotency keys, as Stripe does after 24 hours.
- ``decline(customer_id)``: that customer's card is declined (402 ``card_error``) on pay (``POST
  /_test/customers/{id}/decline``).

``running_fake_stripe()`` serves a fake on 127.0.0.1 (a free port) from a thread, so it works from
synchronous and asynchronous tests alike; ``sign_webhook`` and ``FakeStripe.event`` make webhook
bodies signed the way Stripe signs them.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

API_KEY = "sk_test_hoodrun_fake"
_LINES_SHOWN = 10  # an invoice embeds its first lines; the rest are at /v1/invoices/{id}/lines

Params = dict[str, Any]


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: Params = {"type": type, "message": message, **extra}
        if param is not None:
            self.body["param"] = param
        if code is not None:
            self.body["code"] = code


def _missing(kind: str, id: str, param: str = "id", status: int = 404) -> StripeError:
    return StripeError(status, f"No such {kind}: '{id}'", param=param, code="resource_missing")


def _unflatten(pairs: Iterator[tuple[str, str]]) -> Params:
    """``a[b][0][c]=v`` form pairs as nested dicts, dicts keyed 0..n-1 turned into lists."""
    root: Params = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node and all(k.isdigit() for k in node):
            return [lists(node[k]) for k in sorted(node, key=int)]
        return {k: lists(v) for k, v in node.items()}

    result: Params = lists(root)
    return result


def _int(params: Params, name: str, default: int | None = None) -> int | None:
    if name not in params:
        return default
    try:
        return int(params[name])
    except (TypeError, ValueError):
        raise StripeError(400, f"Invalid integer: {params[name]}", param=name) from None


def _bool(params: Params, name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise StripeError(400, f"Invalid boolean: {value}", param=name)
    return bool(value == "true")


def _allow(params: Params, *names: str) -> None:
    for name in params:
        if name not in names and name != "expand":
            raise StripeError(400, f"Received unknown parameter: {name}", param=name)


def _require(params: Params, name: str) -> Any:
    if params.get(name) in (None, ""):
        raise StripeError(400, f"Missing required param: {name}.", param=name)
    return params[name]


def _one_of(params: Params, name: str, *values: str, default: str | None = None) -> str | None:
    value = params.get(name, default)
    if value is not None and value not in values:
        raise StripeError(400, f"Invalid {name}: must be one of {', '.join(values)}", param=name)
    return value


@dataclass
class _Failure:
    times: int | None  # None: until up() or reset()
    method: str | None
    path: re.Pattern[str]
    status: int
    after: bool

    def matches(self, method: str, path: str) -> bool:
        return (self.method in (None, method)) and bool(self.path.fullmatch(path))


class FakeStripe:
    """The fake's state and its aiohttp application (``app``). ``url`` is set once served."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.url = ""
        self.reset()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def reset(self) -> None:
        """Forget every object, key, failure and request."""
        with self.lock:
            self._clear()

    def _clear(self) -> None:
        self.customers: dict[str, Params] = {}
        self.tax_ids: dict[str, list[Params]] = {}
        self.invoices: dict[str, Params] = {}
        self.lines: dict[str, list[Params]] = {}
        self.invoice_items: dict[str, Params] = {}
        self.payment_intents: dict[str, Params] = {}
        self.invoice_payments: dict[str, Params] = {}
        self.credit_notes: dict[str, Params] = {}
        self.refunds: dict[str, Params] = {}
        self.declining: set[str] = set()
        self.failures: list[_Failure] = []
        self.requests: list[tuple[str, str]] = []
        """Every authenticated API request, as (method, path)."""
        self._saved: dict[str, tuple[tuple[str, str, Params], int, Params]] = {}
        self._order = itertools.count()
        self._numbers = itertools.count(1)

    # --- test hooks ------------------------------------------------------------------------------

    def fail(
        self,
        times: int | None = 1,
        *,
        method: str | None = None,
        path: str = ".*",
        status: int = 503,
        after: bool = False,
    ) -> None:
        """Answer ``status`` to the next ``times`` requests matching ``method`` and the ``path``
        regex (None: every one until ``up``); ``after``: do the work, then lose the answer."""
        with self.lock:
            self.failures.append(_Failure(times, method, re.compile(path), status, after))

    def down(self) -> None:
        """Answer 503 to every request until ``up``."""
        self.fail(None)

    def up(self) -> None:
        with self.lock:
            self.failures.clear()

    def expire_keys(self) -> None:
        """Forget every idempotency key, as Stripe does after 24 hours."""
        with self.lock:
            self._saved.clear()

    def decline(self, customer_id: str) -> None:
        with self.lock:
            self.declining.add(customer_id)

    def invoices_for(self, number: str) -> list[Params]:
        """Every invoice whose ``metadata.hoodrun_number`` is ``number``, rendered."""
        with self.lock:
            return [
                self._render_invoice(invoice)
                for invoice in self.invoices.values()
                if invoice["metadata"].get("hoodrun_number") == number
            ]

    def invoice(self, invoice_id: str) -> Params:
        with self.lock:
            return self._render_invoice(self.invoices[invoice_id])

    def adjust(self, invoice_id: str, amount: int, description: str = "Adjustment") -> Params:
        """Add a line of ``amount`` (minor units) to the invoice whatever its status."""
        with self.lock:
            invoice = self.invoices[invoice_id]
            self._add_line(invoice, amount, description, {}, None, None)
            return self._render_invoice(invoice)

    def event(self, type: str, invoice_id: str) -> bytes:
        """A webhook body of event ``type`` carrying the invoice as it is now."""
        body = {
            "id": self._id("evt"),
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": type,
            "data": {"object": self.invoice(invoice_id)},
        }
        return json.dumps(body).encode()

    # --- HTTP ----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method, path = request.method, request.path
        if method == "POST":
            params = _unflatten(iter((await request.post()).items()))
        else:
            params = _unflatten(iter(request.query.items()))
        with self.lock:
            status, body, replayed = self._answer(request, method, path, params)
        headers = {"Request-Id": self._id("req")}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return web.json_response(body, status=status, headers=headers)

    def _answer(
        self, request: web.Request, method: str, path: str, params: Params
    ) -> tuple[int, Params, bool]:
        if path.startswith("/_test/"):
            try:
                return *self._test_route(method, path, params), False
            except StripeError as exc:
                return exc.status, {"error": exc.body}, False
        auth = request.headers.get("Authorization", "")
        if not (auth.startswith("Bearer sk_test_") and len(auth) > len("Bearer sk_test_")):
            error = {"type": "invalid_request_error", "message": "Invalid API Key provided."}
            return 401, {"error": error}, False
        self.requests.append((method, path))
        failure = next((f for f in self.failures if f.matches(method, path)), None)
        if failure is not None:
            if failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self.failures.remove(failure)
            if not failure.after:
                return failure.status, self._unavailable(), False
        key = request.headers.get("Idempotency-Key") if method == "POST" else None
        request_id = (method, path, params)
        if key is not None and key in self._saved:
            first, status, body = self._saved[key]
            if first != request_id:
                message = (
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request."
                )
                return 400, {"error": {"type": "idempotency_error", "message": message}}, False
            return status, copy.deepcopy(body), True
        try:
            status, body = 200, self._route(method, path, params)
        except StripeError as exc:
            status, body = exc.status, {"error": exc.body}
        if key is not None and (status < 400 or status == 402):
            self._saved[key] = (request_id, status, copy.deepcopy(body))
        if failure is not None:  # the work is done, the answer is lost
            return failure.status, self._unavailable(), False
        return status, body, False

    @staticmethod
    def _unavailable() -> Params:
        message = "The server is temporarily unavailable. Please try again."
        return {"error": {"type": "api_error", "message": message}}

    def _test_route(self, method: str, path: str, params: Params) -> tuple[int, Params]:
        if (method, path) == ("POST", "/_test/down"):
            self.failures.append(
                _Failure(_int(params, "times"), None, re.compile(".*"), 503, False)
            )
        elif (method, path) == ("POST", "/_test/up"):
            self.failures.clear()
        elif (method, path) == ("GET", "/_test/invoices"):
            number = params.get("number")
            found = [
                self._render_invoice(i)
                for i in self.invoices.values()
                if i["metadata"].get("hoodrun_number") == number
            ]
            return 200, {"object": "list", "data": found}
        elif match := re.fullmatch(r"/_test/invoices/([^/]+)/adjust", path):
            invoice = self._get(self.invoices, "invoice", match[1])
            amount = _int(params, "amount")
            if amount is None:
                raise StripeError(400, "Missing required param: amount.", param="amount")
            self._add_line(invoice, amount, params.get("description", "Adjustment"), {}, None, None)
            return 200, self._render_invoice(invoice)
        elif match := re.fullmatch(r"/_test/customers/([^/]+)/decline", path):
            self.declining.add(match[1])
        else:
            return 404, {"error": {"type": "invalid_request_error", "message": "no such hook"}}
        return 200, {}

    _ROUTES: ClassVar[list[tuple[str, str, str]]] = [
        ("POST", r"/v1/customers", "_create_customer"),
        ("GET", r"/v1/customers/([^/]+)", "_retrieve_customer"),
        ("POST", r"/v1/customers/([^/]+)", "_update_customer"),
        ("DELETE", r"/v1/customers/([^/]+)", "_delete_customer"),
        ("POST", r"/v1/invoices", "_create_invoice"),
        ("GET", r"/v1/invoices", "_list_invoices"),
        ("GET", r"/v1/invoices/([^/]+)", "_retrieve_invoice"),
        ("GET", r"/v1/invoices/([^/]+)/lines", "_list_lines"),
        ("POST", r"/v1/invoices/([^/]+)/finalize", "_finalize"),
        ("POST", r"/v1/invoices/([^/]+)/pay", "_pay"),
        ("POST", r"/v1/invoices/([^/]+)/void", "_void"),
        ("POST", r"/v1/invoices/([^/]+)/mark_uncollectible", "_mark_uncollectible"),
        ("POST", r"/v1/invoiceitems", "_create_invoice_item"),
        ("GET", r"/v1/invoice_payments", "_list_invoice_payments"),
        ("POST", r"/v1/credit_notes", "_create_credit_note"),
        ("GET", r"/v1/credit_notes", "_list_credit_notes"),
        ("GET", r"/v1/credit_notes/([^/]+)", "_retrieve_credit_note"),
        ("POST", r"/v1/refunds", "_create_refund"),
        ("GET", r"/v1/refunds", "_list_refunds"),
        ("GET", r"/v1/refunds/([^/]+)", "_retrieve_refund"),
    ]

    def _route(self, method: str, path: str, params: Params) -> Params:
        for route_method, pattern, name in self._ROUTES:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                handler: Callable[..., Params] = getattr(self, name)
                return handler(params, *match.groups())
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}).")

    # --- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _id(prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(10)}"

    @staticmethod
    def _get(table: dict[str, Params], kind: str, id: str, param: str = "id") -> Params:
        found = table.get(id)
        if found is None:
            raise _missing(kind, id, param, 404 if param == "id" else 400)
        return found

    def _new(self, table: dict[str, Params], prefix: str, **fields: Any) -> Params:
        obj = {"id": self._id(prefix), "created": int(time.time()), "livemode": False, **fields}
        obj["_order"] = next(self._order)
        table[obj["id"]] = obj
        return obj

    @staticmethod
    def _public(obj: Params) -> Params:
        return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}

    def _page(self, objects: list[Params], params: Params, url: str) -> Params:
        limit = _int(params, "limit", 10)
        assert limit is not None
        if not 1 <= limit <= 100:
            raise StripeError(
                400, "Invalid integer: limit must be between 1 and 100", param="limit"
            )
        after = params.get("starting_after")
        if after is not None:
            ids = [o["id"] for o in objects]
            if after not in ids:
                raise _missing("object", after, "starting_after", 400)
            objects = objects[ids.index(after) + 1 :]
        data = [self._render(o) for o in objects[:limit]]
        return {"object": "list", "data": data, "has_more": len(objects) > limit, "url": url}

    def _render(self, obj: Params) -> Params:
        return self._render_invoice(obj) if obj["object"] == "invoice" else self._public(obj)

    # --- customers -----------------------------------------------------------------------------

    _CUSTOMER_FIELDS = (
        "name",
        "email",
        "address",
        "metadata",
        "preferred_locales",
        "description",
        "phone",
        "invoice_settings",
    )

    def _create_customer(self, params: Params) -> Params:
        _allow(params, *self._CUSTOMER_FIELDS, "tax_id_data")
        tax_ids = params.get("tax_id_data") or []
        for datum in tax_ids:
            if set(datum) != {"type", "value"}:
                raise StripeError(400, "Invalid tax_id_data", param="tax_id_data")
        customer = self._new(
            self.customers,
            "cus",
            object="customer",
            balance=0,
            currency=None,
            delinquent=False,
            name=None,
            email=None,
            address=None,
            description=None,
            phone=None,
            preferred_locales=[],
            metadata={},
            invoice_settings={"default_payment_method": None, "footer": None},
        )
        self._set_customer(customer, params)
        self.tax_ids[customer["id"]] = [{"object": "tax_id", **datum} for datum in tax_ids]
        return self._public(customer)

    def _set_customer(self, customer: Params, params: Params) -> None:
        for name in self._CUSTOMER_FIELDS:
            if name not in params:
                continue
            value = params[name]
            if name == "metadata":
                merged = {**customer["metadata"], **value}  # "" unsets a key
                customer["metadata"] = {k: v for k, v in merged.items() if v != ""}
            elif name == "address":
                customer["address"] = (
                    None
                    if value == ""
                    else {
                        "city": None,
                        "country": None,
                        "line1": None,
                        "line2": None,
                        "postal_code": None,
                        "state": None,
                        **value,
                    }
                )
            elif name == "invoice_settings":
                customer["invoice_settings"].update(value)
            else:
                customer[name] = None if value == "" else value

    def _live_customer(self, id: str, param: str = "id") -> Params:
        customer = self._get(self.customers, "customer", id, param)
        if customer.get("deleted"):
            raise _missing("customer", id, param, 404 if param == "id" else 400)
        return customer

    def _retrieve_customer(self, params: Params, id: str) -> Params:
        _allow(params)
        customer = self._get(self.customers, "customer", id)
        if customer.get("deleted"):
            return {"id": id, "object": "customer", "deleted": True}
        return self._public(customer)

    def _update_customer(self, params: Params, id: str) -> Params:
        _allow(params, *self._CUSTOMER_FIELDS)
        customer = self._live_customer(id)
        self._set_customer(customer, params)
        return self._public(customer)

    def _delete_customer(self, params: Params, id: str) -> Params:
        _allow(params)
        self._live_customer(id)["deleted"] = True
        return {"id": id, "object": "customer", "deleted": True}

    # --- invoices ------------------------------------------------------------------------------

    def _create_invoice(self, params: Params) -> Params:
        _allow(
            params,
            "customer",
            "currency",
            "collection_method",
            "days_until_due",
            "due_date",
            "auto_advance",
            "pending_invoice_items_behavior",
            "description",
            "metadata",
            "footer",
            "number",
            "effective_at",
        )
        customer = self._live_customer(_require(params, "customer"), "customer")
        method = _one_of(
            params,
            "collection_method",
            "charge_automatically",
            "send_invoice",
            default="charge_automatically",
        )
        days = _int(params, "days_until_due")
        if method == "charge_automatically" and (days is not None or "due_date" in params):
            raise StripeError(
                400,
                "Invoices with collection_method=charge_automatically cannot have a due date.",
                param="days_until_due",
            )
        if days is not None and days < 0:
            raise StripeError(400, "days_until_due must be 0 or more.", param="days_until_due")
        behavior = _one_of(
            params, "pending_invoice_items_behavior", "exclude", "include", default="exclude"
        )
        number = params.get("number")
        if number is not None and any(i["number"] == number for i in self.invoices.values()):
            raise StripeError(
                400,
                f"Invoice number {number} is already in use.",
                param="number",
                code="invoice_number_already_exists",
            )
        currency = str(params.get("currency") or customer["currency"] or "usd").lower()
        invoice = self._new(
            self.invoices,
            "in",
            object="invoice",
            customer=customer["id"],
            customer_email=customer["email"],
            customer_name=customer["name"],
            currency=currency,
            status="draft",
            collection_method=method,
            days_until_due=(days if days is not None else 30) if method == "send_invoice" else None,
            due_date=None,
            auto_advance=_bool(params, "auto_advance", False),
            description=params.get("description"),
            footer=params.get("footer"),
            metadata=dict(params.get("metadata") or {}),
            number=number,
            effective_at=_int(params, "effective_at"),
            attempt_count=0,
            attempted=False,
            hosted_invoice_url=None,
            invoice_pdf=None,
            starting_balance=0,
            ending_balance=None,
            pre_payment_credit_notes_amount=0,
            post_payment_credit_notes_amount=0,
            amount_paid=0,
            status_transitions={
                "finalized_at": None,
                "paid_at": None,
                "voided_at": None,
                "marked_uncollectible_at": None,
            },
        )
        self.lines[invoice["id"]] = []
        if behavior == "include":
            for item in sorted(self.invoice_items.values(), key=lambda i: i["_order"]):
                if item["customer"] == customer["id"] and item["invoice"] is None:
                    if item["currency"] == currency:
                        item["invoice"] = invoice["id"]
                        self._line_for(invoice, item)
        self._recompute(invoice)
        return self._render_invoice(invoice)

    def _recompute(self, invoice: Params) -> None:
        total = sum(line["amount"] for line in self.lines[invoice["id"]])
        invoice["subtotal"] = invoice["subtotal_excluding_tax"] = total
        invoice["total"] = invoice["total_excluding_tax"] = total
        invoice["amount_due"] = max(total - invoice["pre_payment_credit_notes_amount"], 0)
        invoice["amount_remaining"] = max(invoice["amount_due"] - invoice["amount_paid"], 0)

    def _render_invoice(self, invoice: Params) -> Params:
        body = self._public(invoice)
        lines = self.lines[invoice["id"]]
        body["lines"] = {
            "object": "list",
            "data": [self._public(line) for line in lines[:_LINES_SHOWN]],
            "has_more": len(lines) > _LINES_SHOWN,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice['id']}/lines",
        }
        return body

    def _invoice(self, id: str, param: str = "id") -> Params:
        return self._get(self.invoices, "invoice", id, param)

    def _list_invoices(self, params: Params) -> Params:
        _allow(params, "customer", "status", "limit", "starting_after", "collection_method")
        found = [
            i
            for i in self.invoices.values()
            if params.get("customer") in (None, i["customer"])
            and params.get("status") in (None, i["status"])
            and params.get("collection_method") in (None, i["collection_method"])
        ]
        found.sort(key=lambda i: i["_order"], reverse=True)  # newest first, as Stripe lists
        return self._page(found, params, "/v1/invoices")

    def _retrieve_invoice(self, params: Params, id: str) -> Params:
        _allow(params)
        return self._render_invoice(self._invoice(id))

    def _list_lines(self, params: Params, id: str) -> Params:
        _allow(params, "limit", "starting_after")
        return self._page(self.lines[self._invoice(id)["id"]], params, f"/v1/invoices/{id}/lines")

    def _create_invoice_item(self, params: Params) -> Params:
        _allow(
            params,
            "customer",
            "invoice",
            "amount",
            "currency",
            "description",
            "metadata",
            "period",
        )
        customer = self._live_customer(_require(params, "customer"), "customer")
        amount = _int(params, "amount")
        if amount is None:
            raise StripeError(400, "Missing required param: amount.", param="amount")
        invoice = self._invoice(params["invoice"], "invoice") if params.get("invoice") else None
        currency = str(
            params.get("currency")
            or (invoice or {}).get("currency")
            or customer["currency"]
            or "usd"
        ).lower()
        period = params.get("period")
        if period is not None:
            start, end = _int(period, "start"), _int(period, "end")
            if start is None or end is None or end < start:
                raise StripeError(
                    400, "Invalid period: end must not be before start.", param="period"
                )
            period = {"start": start, "end": end}
        if invoice is not None:
            if invoice["customer"] != customer["id"]:
                raise StripeError(400, "The invoice belongs to another customer.", param="invoice")
            if invoice["status"] != "draft":
                raise StripeError(
                    400,
                    f"Invoice {invoice['id']} is no longer a draft: items can only be added "
                    "to draft invoices.",
                    param="invoice",
                    code="invoice_not_editable",
                )
            if invoice["currency"] != currency:
                raise StripeError(
                    400,
                    f"The currency of the invoice item ({currency}) must match the currency "
                    f"of the invoice ({invoice['currency']}).",
                    param="currency",
                )
        item = self._new(
            self.invoice_items,
            "ii",
            object="invoiceitem",
            customer=customer["id"],
            amount=amount,
            currency=currency,
            description=params.get("description"),
            metadata=dict(params.get("metadata") or {}),
            period=period,
            invoice=invoice["id"] if invoice else None,
            quantity=1,
            proration=False,
            date=int(time.time()),
            discountable=True,
        )
        if invoice is not None:
            self._line_for(invoice, item)
            self._recompute(invoice)
        return self._public(item)

    def _line_for(self, invoice: Params, item: Params) -> None:
        self._add_line(
            invoice,
            item["amount"],
            item["description"],
            item["metadata"],
            item["period"],
            item["id"],
        )

    def _add_line(
        self,
        invoice: Params,
        amount: int,
        description: str | None,
        metadata: Params,
        period: Params | None,
        item_id: str | None,
    ) -> None:
        now = int(time.time())
        self.lines[invoice["id"]].append(
            {
                "id": self._id("il"),
                "object": "line_item",
                "invoice": invoice["id"],
                "amount": amount,
                "currency": invoice["currency"],
                "description": description,
                "metadata": dict(metadata),
                "period": period or {"start": now, "end": now},
                "quantity": 1,
                "livemode": False,
                "parent": {
                    "type": "invoice_item_details",
                    "invoice_item_details": {"invoice_item": item_id, "proration": False},
                },
            }
        )
        self._recompute(invoice)

    def _finalize(self, params: Params, id: str) -> Params:
        _allow(params, "auto_advance")
        invoice = self._invoice(id)
        if invoice["status"] != "draft":
            raise StripeError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
        self._do_finalize(invoice, params)
        return self._render_invoice(invoice)

    def _do_finalize(self, invoice: Params, params: Params) -> None:
        now = int(time.time())
        invoice["auto_advance"] = _bool(params, "auto_advance", invoice["auto_advance"])
        invoice["number"] = invoice["number"] or f"FAKE-{next(self._numbers):04d}"
        invoice["status"] = "open"
        invoice["status_transitions"]["finalized_at"] = now
        invoice["hosted_invoice_url"] = f"{self.url}/i/{invoice['id']}"
        if invoice["collection_method"] == "send_invoice":
            invoice["due_date"] = now + 86400 * invoice["days_until_due"]
        self._recompute(invoice)
        if invoice["amount_due"] == 0:  # nothing to collect: Stripe marks it paid at once
            invoice["status"] = "paid"
            invoice["status_transitions"]["paid_at"] = now

    def _pay(self, params: Params, id: str) -> Params:
        _allow(params, "paid_out_of_band", "payment_method", "off_session", "forgive")
        invoice = self._invoice(id)
        if invoice["status"] == "paid":
            raise StripeError(400, "Invoice is already paid.", code="invoice_already_paid")
        if invoice["status"] == "void":
            raise StripeError(
                400,
                "This invoice has been voided and can no longer be paid.",
                code="invoice_not_editable",
            )
        if invoice["status"] == "draft":
            self._do_finalize(invoice, {})
            if invoice["status"] == "paid":
                return self._render_invoice(invoice)
        now = int(time.time())
        invoice["attempt_count"] += 1
        invoice["attempted"] = True
        amount = invoice["amount_remaining"]
        if not _bool(params, "paid_out_of_band", False):
            if invoice["customer"] in self.declining:
                raise StripeError(
                    402,
                    "Your card was declined.",
                    type="card_error",
                    code="card_declined",
                    decline_code="generic_decline",
                )
            intent = self._new(
                self.payment_intents,
                "pi",
                object="payment_intent",
                amount=amount,
                amount_received=amount,
                amount_refunded=0,
                currency=invoice["currency"],
                customer=invoice["customer"],
                status="succeeded",
                latest_charge=self._id("ch"),
            )
            self._new(
                self.invoice_payments,
                "inpay",
                object="invoice_payment",
                invoice=id,
                amount_paid=amount,
                amount_requested=amount,
                currency=invoice["currency"],
                is_default=True,
                status="paid",
                payment={"type": "payment_intent", "payment_intent": intent["id"]},
                status_transitions={"paid_at": now, "canceled_at": None},
            )
        invoice["amount_paid"] += amount
        invoice["status"] = "paid"
        invoice["status_transitions"]["paid_at"] = now
        self._recompute(invoice)
        return self._render_invoice(invoice)

    def _void(self, params: Params, id: str) -> Params:
        _allow(params)
        invoice = self._invoice(id)
        if invoice["status"] not in ("open", "uncollectible"):
            raise StripeError(
                400,
                f"You can only void open or uncollectible invoices; this one is "
                f"{invoice['status']}.",
                code="invoice_not_editable",
            )
        invoice["status"] = "void"
        invoice["status_transitions"]["voided_at"] = int(time.time())
        return self._render_invoice(invoice)

    def _mark_uncollectible(self, params: Params, id: str) -> Params:
        _allow(params)
        invoice = self._invoice(id)
        if invoice["status"] != "open":
            raise StripeError(400, "Only open invoices can be marked uncollectible.")
        invoice["status"] = "uncollectible"
        invoice["status_transitions"]["marked_uncollectible_at"] = int(time.time())
        return self._render_invoice(invoice)

    def _list_invoice_payments(self, params: Params) -> Params:
        _allow(params, "invoice", "status", "limit", "starting_after")
        found = [
            p
            for p in self.invoice_payments.values()
            if params.get("invoice") in (None, p["invoice"])
            and params.get("status") in (None, p["status"])
        ]
        return self._page(found, params, "/v1/invoice_payments")

    # --- credit notes and refunds --------------------------------------------------------------

    def _create_credit_note(self, params: Params) -> Params:
        _allow(
            params,
            "invoice",
            "amount",
            "lines",
            "credit_amount",
            "refund_amount",
            "out_of_band_amount",
            "memo",
            "reason",
            "metadata",
            "email_type",
            "effective_at",
        )
        invoice = self._invoice(_require(params, "invoice"), "invoice")
        _one_of(
            params, "reason", "duplicate", "fraudulent", "order_change", "product_unsatisfactory"
        )
        if invoice["status"] not in ("open", "paid", "uncollectible"):
            raise StripeError(
                400,
                f"Credit notes can only be issued on finalized invoices; {invoice['id']} is "
                f"{invoice['status']}.",
                param="invoice",
            )
        amount = _int(params, "amount")
        if amount is None:
            amount = 0
            for line in params.get("lines") or []:
                if line.get("type") == "custom_line_item":
                    amount += (_int(line, "unit_amount") or 0) * (_int(line, "quantity") or 1)
                else:
                    amount += _int(line, "amount") or 0
        if amount <= 0:
            raise StripeError(400, "The credit note amount must be greater than 0.", param="amount")
        post = invoice["status"] == "paid"
        if post:
            parts = sum(
                _int(params, name) or 0
                for name in ("credit_amount", "refund_amount", "out_of_band_amount")
            )
            if parts != amount:
                raise StripeError(
                    400,
                    "The sum of credit_amount, refund_amount and out_of_band_amount must "
                    "equal the credit note amount.",
                    param="amount",
                )
            limit = invoice["amount_paid"] - invoice["post_payment_credit_notes_amount"]
        else:
            limit = invoice["amount_remaining"]
        if amount > limit:
            raise StripeError(
                400,
                f"The credit note amount ({amount}) exceeds what can be credited on this "
                f"invoice ({limit}).",
                param="amount",
            )
        count = sum(1 for n in self.credit_notes.values() if n["invoice"] == invoice["id"])
        note = self._new(
            self.credit_notes,
            "cn",
            object="credit_note",
            invoice=invoice["id"],
            customer=invoice["customer"],
            currency=invoice["currency"],
            amount=amount,
            subtotal=amount,
            total=amount,
            memo=params.get("memo"),
            reason=params.get("reason"),
            metadata=dict(params.get("metadata") or {}),
            status="issued",
            type="post_payment" if post else "pre_payment",
            out_of_band_amount=_int(params, "out_of_band_amount"),
            number=f"{invoice['number']}-CN-{count + 1:02d}",
        )
        if post:
            invoice["post_payment_credit_notes_amount"] += amount
        else:
            invoice["pre_payment_credit_notes_amount"] += amount
            self._recompute(invoice)
            if invoice["amount_remaining"] == 0 and invoice["status"] == "open":
                invoice["status"] = "paid"
                invoice["status_transitions"]["paid_at"] = int(time.time())
        return self._public(note)

    def _list_credit_notes(self, params: Params) -> Params:
        _allow(params, "invoice", "customer", "limit", "starting_after")
        found = [
            n
            for n in self.credit_notes.values()
            if params.get("invoice") in (None, n["invoice"])
            and params.get("customer") in (None, n["customer"])
        ]
        found.sort(key=lambda n: n["_order"], reverse=True)
        return self._page(found, params, "/v1/credit_notes")

    def _retrieve_credit_note(self, params: Params, id: str) -> Params:
        _allow(params)
        return self._public(self._get(self.credit_notes, "credit_note", id))

    def _create_refund(self, params: Params) -> Params:
        _allow(params, "payment_intent", "charge", "amount", "reason", "metadata")
        _one_of(params, "reason", "duplicate", "fraudulent", "requested_by_customer")
        intent_id, charge_id = params.get("payment_intent"), params.get("charge")
        if bool(intent_id) == bool(charge_id):
            raise StripeError(400, "You must pass exactly one of payment_intent or charge.")
        if intent_id:
            intent = self._get(self.payment_intents, "payment_intent", intent_id, "payment_intent")
        else:
            found = [i for i in self.payment_intents.values() if i["latest_charge"] == charge_id]
            if not found:
                raise _missing("charge", str(charge_id), "charge", 400)
            intent = found[0]
        left = intent["amount_received"] - intent["amount_refunded"]
        amount = _int(params, "amount", left)
        assert amount is not None
        if amount <= 0 or amount > left:
            raise StripeError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                param="amount",
                code="amount_too_large",
            )
        intent["amount_refunded"] += amount
        refund = self._new(
            self.refunds,
            "re",
            object="refund",
            amount=amount,
            currency=intent["currency"],
            payment_intent=intent["id"],
            charge=intent["latest_charge"],
            status="succeeded",
            reason=params.get("reason"),
            metadata=dict(params.get("metadata") or {}),
        )
        return self._public(refund)

    def _list_refunds(self, params: Params) -> Params:
        _allow(params, "payment_intent", "charge", "limit", "starting_after")
        found = [
            r
            for r in self.refunds.values()
            if params.get("payment_intent") in (None, r["payment_intent"])
            and params.get("charge") in (None, r["charge"])
        ]
        found.sort(key=lambda r: r["_order"], reverse=True)
        return self._page(found, params, "/v1/refunds")

    def _retrieve_refund(self, params: Params, id: str) -> Params:
        _allow(params)
        return self._public(self._get(self.refunds, "refund", id))


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``: ``t=...,v1=HMAC-SHA256(secret, t.payload)``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@contextmanager
def running_fake_stripe(fake: FakeStripe | None = None) -> Iterator[FakeStripe]:
    """Serve ``fake`` (a new one by default) on 127.0.0.1 from a thread; ``fake.url`` is its
    address while the block runs."""
    fake = fake or FakeStripe()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(fake.app, access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        host, port = runner.addresses[0][:2]
        fake.url = f"http://{host}:{port}"
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-stripe", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the fake Stripe did not start")
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
